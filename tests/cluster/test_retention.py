"""Retention on real processes: a node killed while the others write, and delete what it
would need next, comes back, installs the leader's snapshot and serves the same
messages as the rest of the group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from mq.client import Message
from mq.client.blocking import BlockingProducer
from mq.commands import cluster_cmd
from tests.cluster.harness import (
    BROKER_ARGS,
    LocalCluster,
    check_replicas_identical,
    create_topic,
    send_sequentially,
    wait_until,
)

SEGMENT_BYTES = 256 * 1024
RETENTION_ARGS = [
    *BROKER_ARGS,
    f"--segment-bytes={SEGMENT_BYTES}",  # the last one given wins
    "--retention-ms=500",
    "--retention-check-interval-ms=100",
    "--raft-index-chunk-entries=16",  # seal often: compaction and installs meet chunks
]


def test_a_node_down_while_the_leader_deletes_segments_catches_up_from_a_snapshot(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(broker_args=RETENTION_ARGS)
    leader = cluster.leader()
    down = next(name for name in cluster.brokers() if name != leader)
    create_topic(cluster.namesrv, "kept", 2)
    send_sequentially(cluster.namesrv, "kept", 20)
    cluster.kill(down)
    # Bodies of about 1 KiB: a few segments' worth, so the first ones can go.
    payload = "x" * 1000
    create_topic(cluster.namesrv, "bulk", 2)
    with BlockingProducer(cluster.namesrv) as producer:
        for n in range(1200):
            producer.send(Message("bulk", f"{n}{payload}".encode()))

    def deleted() -> bool:
        status = cluster.status(cluster.leader())
        return status is not None and status["min_offset"] > 0

    wait_until(deleted, "the leader to delete its oldest segments")
    cluster.start(down)

    def caught_up() -> bool:
        leader_status = cluster.status(cluster.leader())
        status = cluster.status(down)
        return (
            status is not None
            and leader_status is not None
            and status["min_offset"] > 0
            and status["commit_offset"] == leader_status["commit_offset"]
        )

    wait_until(caught_up, f"{down} to install the snapshot and catch up")
    log = Path(cluster.proc(down).log).read_text()
    assert "snapshot_installed" in log, "it caught up from the log, not from a snapshot"
    send_sequentially(cluster.namesrv, "kept", 5)

    def agree() -> bool:
        # Each node deletes by its own clock: wait until all have let the same go.
        statuses = list(cluster.statuses().values())
        return all(s is not None for s in statuses) and (
            len({(s["min_offset"], s["commit_offset"]) for s in statuses if s}) == 1
        )

    wait_until(agree, "every node to hold the last sends and delete the same segments")

    def sealed() -> bool:
        # Checkpoints seal the committed entries: memory keeps less than a chunk.
        statuses = [trio.run(cluster_cmd.node_status, cluster.proc(n)) for n in cluster.brokers()]
        return all(
            s["entries_in_memory"] is not None and s["entries_in_memory"] < 16 for s in statuses
        )

    wait_until(sealed, "every node to seal its committed entries into raft-index/")
    check_replicas_identical(cluster, "bulk", 2)
    check_replicas_identical(cluster, "kept", 2)
    # What an operator sees: `mq cluster status --json` shows the same range per node.
    for name, status in cluster.statuses().items():
        assert status is not None
        shown = trio.run(cluster_cmd.node_status, cluster.proc(name))
        assert shown["min_offset"] == status["min_offset"] > 0
        assert shown["first_index"] == status["first_index"] > 1
        assert shown["sealed_index"] >= shown["first_index"] - 1
        assert shown["max_offset"] >= status["commit_offset"]

    def trash_emptied() -> bool:
        # Deleted files went to trash/ and its thread unlinked them: the space is back.
        return all(
            not any((Path(cluster.proc(name).data) / "trash").glob("*"))
            for name in cluster.brokers()
        )

    wait_until(trash_emptied, "every node to unlink the files it deleted")
    for name in cluster.brokers():
        assert (Path(cluster.proc(name).data) / "trash").is_dir(), "retention went by the trash"
        status = cluster.status(name)
        assert status is not None
        segments = sorted((Path(cluster.proc(name).data) / "store" / "commitlog").glob("0*"))
        assert int(segments[0].name) == status["min_offset"], "a deleted segment is still there"
