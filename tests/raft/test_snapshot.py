"""Snapshots: a follower behind the leader's compacted log gets the state in chunks."""

from __future__ import annotations

from raft.config import Config
from raft.local_cluster import LocalCluster, SplitMix64
from raft.log_store import MemoryLogStore
from raft.messages import (
    AppendResponse,
    Entry,
    Envelope,
    HardState,
    SnapshotRequest,
    SnapshotResponse,
)
from raft.node import RaftNode


def lagging_cluster(chunk_bytes: int = 64) -> tuple[LocalCluster, int, int]:
    """A leader that compacted past everything a cut-off follower holds."""
    config = Config(snapshot_chunk_bytes=chunk_bytes)
    cluster = LocalCluster(3, config, compact_threshold=8)
    leader = cluster.elect()
    lagging = next(i for i in cluster.ids if i != leader)
    cluster.isolate(lagging)
    for k in range(5):
        cluster.node(leader).propose_batch([b"s%d-%d" % (k, j) for j in range(10)])
        cluster.run()
    assert cluster.members[leader].log.first_index() > cluster.members[lagging].log.last_index() + 1
    return cluster, leader, lagging


def count_messages(cluster: LocalCluster, kind: type) -> list[Envelope]:
    seen: list[Envelope] = []

    def observe(env: Envelope) -> bool:
        if isinstance(env.msg, kind):
            seen.append(env)
        return False

    cluster.drop_filter = observe
    return seen


def test_a_lagging_follower_installs_the_leaders_snapshot_in_chunks() -> None:
    cluster, leader, lagging = lagging_cluster(chunk_bytes=64)
    chunks = count_messages(cluster, SnapshotRequest)
    cluster.heal()
    cluster.tick(times=3)
    assert len(chunks) > 3
    offsets = [env.msg.offset for env in chunks]  # type: ignore[union-attr]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert [env.msg.done for env in chunks].count(True) == 1  # type: ignore[union-attr]
    assert all(len(env.msg.data) <= 64 for env in chunks)  # type: ignore[union-attr]
    assert cluster.members[lagging].sm.entries == cluster.members[leader].sm.entries
    assert cluster.members[lagging].log.first_index() > 1
    # Replication continues normally after the snapshot.
    cluster.node(leader).propose(b"after")
    cluster.run()
    assert cluster.members[lagging].sm.entries[-1].data == b"after"


def test_a_lost_chunk_is_sent_again() -> None:
    cluster, leader, lagging = lagging_cluster(chunk_bytes=64)
    lost: list[int] = []

    def lose_second_chunk_once(env: Envelope) -> bool:
        if isinstance(env.msg, SnapshotRequest) and env.msg.offset == 64 and not lost:
            lost.append(env.msg.offset)
            return True
        return False

    cluster.drop_filter = lose_second_chunk_once
    cluster.heal()
    cluster.tick(times=3 * cluster.config.election_ticks)
    assert lost
    assert cluster.members[lagging].sm.entries == cluster.members[leader].sm.entries


def test_a_follower_restarted_mid_transfer_gets_the_snapshot_from_the_start() -> None:
    cluster, leader, lagging = lagging_cluster(chunk_bytes=64)
    chunks = count_messages(cluster, SnapshotRequest)
    cluster.heal()
    for _ in range(200):
        if len(chunks) >= 3:
            break
        if not cluster.pump():
            cluster.node(leader).tick()
    assert len(chunks) == 3
    cluster.crash(lagging)
    cluster.restart(lagging)
    cluster.tick(times=3 * cluster.config.election_ticks)
    assert cluster.members[lagging].sm.entries == cluster.members[leader].sm.entries
    offsets = [env.msg.offset for env in chunks]  # type: ignore[union-attr]
    assert offsets.count(0) >= 2, "the transfer restarted"


def follower_with(terms: list[int], commit: int = 0) -> tuple[RaftNode, MemoryLogStore]:
    log = MemoryLogStore()
    log.append([Entry(t, i, b"") for i, t in enumerate(terms, start=1)])
    log.sync()
    node = RaftNode(1, (1, 2, 3), log, HardState(2, None, commit), Config(), SplitMix64(1))
    return node, log


def test_a_follower_that_already_holds_the_snapshots_entries_fast_forwards() -> None:
    node, log = follower_with([1] * 10)
    node.step(Envelope(2, 1, SnapshotRequest(2, 8, 1, 0, b"state", False)))
    ready = node.ready()
    assert ready is not None
    assert ready.snapshot is None
    assert log.first_index() == 1 and log.last_index() == 10
    assert node.commit_index == 8
    assert [e.msg for e in ready.persisted_messages] == [AppendResponse(2, True, 8)]


def test_an_out_of_order_chunk_is_refused_with_the_expected_offset() -> None:
    node, log = follower_with([1] * 3)
    node.step(Envelope(2, 1, SnapshotRequest(2, 20, 2, 0, b"abcd", False)))
    node.step(Envelope(2, 1, SnapshotRequest(2, 20, 2, 8, b"ijkl", False)))
    node.step(Envelope(2, 1, SnapshotRequest(2, 20, 2, 4, b"efgh", True)))
    ready = node.ready()
    assert ready is not None
    assert [e.msg for e in ready.persisted_messages] == [
        SnapshotResponse(2, 20, 4, True),
        SnapshotResponse(2, 20, 4, False),
        SnapshotResponse(2, 20, 8, True),
    ]
    assert ready.snapshot is not None and ready.snapshot.data == b"abcdefgh"
    assert ready.sync_log
    assert log.first_index() == 21 and log.term_at(20) == 2
    assert node.commit_index == 20
    node.advance(ready)
    assert node.applied_index == 20
