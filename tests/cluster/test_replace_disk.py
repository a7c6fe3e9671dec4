"""A node whose disk was replaced, on real processes: started on an empty data
directory, it catches up under the leader that runs, with no leader change; and
`mq cluster replace-disk`, the procedure of docs/broker.md as one command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable

from tests.cluster.harness import (
    DEADLINE_S,
    LocalCluster,
    check_delivery,
    consume_all,
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


def replace_disk(cluster: LocalCluster, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mq.cli", "cluster", "replace-disk", name],
        cwd=cluster.directory.parent,
        env={**os.environ, "MQ_CLUSTER_DIR": str(cluster.directory)},
        capture_output=True,
        text=True,
        timeout=4 * DEADLINE_S,
    )


def test_replace_disk_swaps_the_disk_then_the_group_survives_losing_the_leader(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """`mq cluster replace-disk`: the node comes back on an empty disk, with --join, and
    holds what the group committed, so the leader can die next and nothing is lost."""
    cluster = make_cluster()
    leader = cluster.leader()
    create_topic(cluster.namesrv, "kept", 4)
    acked = send_sequentially(cluster.namesrv, "kept", 40)
    replaced = next(name for name in cluster.brokers() if name != leader)
    old_pid, data = cluster.pid(replaced), cluster.proc(replaced).data

    done = replace_disk(cluster, replaced)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "caught up in" in done.stdout
    cluster.reload()
    assert cluster.pid(replaced) != old_pid
    moved = [p for p in os.listdir(cluster.directory) if p.startswith(f"{replaced}.replaced-")]
    assert len(moved) == 1 and os.path.isdir(data)
    status = cluster.status(replaced)
    assert status is not None and status["synced"] and not status["joining"]
    assert cluster.log_events("joining_existing_group")
    cluster.wait_caught_up(replaced, "kept", 4)
    assert "--join" not in cluster.proc(replaced).argv, "only this start joins"

    cluster.kill(leader)  # the replaced node now counts towards every majority
    acked += send_sequentially(cluster.namesrv, "kept", 10)
    check_delivery(acked, consume_all(cluster.namesrv, "kept"))


def test_replace_disk_refuses_while_another_node_is_down(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    leader = cluster.leader()
    target, other = (name for name in cluster.brokers() if name != leader)
    cluster.kill(other)
    pid, data = cluster.pid(target), cluster.proc(target).data
    done = replace_disk(cluster, target)
    assert done.returncode == 1
    assert f"refusing to replace the disk of {target}: {other} is down" in done.stdout
    assert cluster.pid(target) == pid and cluster.alive(target) and os.listdir(data)
