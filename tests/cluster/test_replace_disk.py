"""A node whose disk was replaced, on real processes: started on an empty data
directory, it catches up under the leader that runs, with no leader change."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from tests.cluster.harness import (
    LocalCluster,
    create_topic,
    send_sequentially,
    wait_until,
)


def test_a_node_started_on_an_empty_disk_catches_up_under_the_same_leader(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    leader = cluster.leader()
    status = cluster.status(leader)
    assert status is not None
    term = status["term"]
    create_topic(cluster.namesrv, "kept", 2)
    send_sequentially(cluster.namesrv, "kept", 30)
    replaced = next(name for name in cluster.brokers() if name != leader)
    cluster.kill(replaced)
    shutil.rmtree(cluster.proc(replaced).data)
    # No election is open (the leader is stable), so its lost vote cannot matter here;
    # docs/broker.md, "Replacing a node's disk", says how long to wait otherwise.
    cluster.start(replaced)

    def caught_up() -> bool:
        ours, theirs = cluster.status(replaced), cluster.status(leader)
        return (
            ours is not None
            and theirs is not None
            and ours["commit_offset"] == theirs["commit_offset"] > 0
        )

    wait_until(caught_up, f"{replaced} to catch up from an empty disk")
    now = cluster.status(leader)
    assert now is not None and now["role"] == "leader" and now["term"] == term
    cluster.wait_caught_up(replaced, "kept", 2)
