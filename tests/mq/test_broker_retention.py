"""Retention on a broker group: old CommitLog segments go, the Raft log is compacted
with them, and a follower that needs what was deleted installs the snapshot taken
where the kept log begins, then catches up with the same messages at the same offsets.

Each node runs on its own SimFileSystem; time is the cluster's virtual `now_ms`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mq.broker.commands import MAGIC_COMMAND
from mq.broker.core import BrokerCore, ReplicatedMessageStore
from mq.broker.raft_codec import decode_envelope
from mq.broker.segment_snapshot import SegmentSnapshot, SnapshotFiles
from mq.protocol import RequestCode, decode_frame, request
from raft.messages import SnapshotRequest
from storage.entry_log import inner_frames
from storage.files import SIM_PAGE_BYTES, SimFileSystem
from tests.mq.broker_cluster import CoreCluster, send_request
from tests.mq.test_broker_core import bodies_of

SEGMENT = 256 << 10
BIG = 60_000
"""Four sends of this size fill a test segment."""
RETENTION_MS = 2_000


def retention_cluster(**overrides: Any) -> CoreCluster:
    settings: dict[str, Any] = {
        "retention_ms": RETENTION_MS,
        "retention_check_interval_ms": 100,
        "checkpoint_interval_ms": 50,
    }
    settings.update(overrides)
    return CoreCluster(**settings)


def send_big(cluster: CoreCluster, leader: int, count: int, prefix: str) -> list[int]:
    """`count` sends of one BIG message each, every one acknowledged; their queue offsets."""
    offsets = []
    for i in range(count):
        body = f"{prefix}{i:06d}".encode() + bytes(BIG)
        response = cluster.request(leader, send_request("orders", [body], prefix=f"{prefix}{i}"))
        assert response.ok, response.remark
        offsets.append(response.fields["queue_offset"])
    return offsets


def readable(cluster: CoreCluster, node: int, topic: str = "orders") -> dict[int, bytes]:
    """Queue offset -> body prefix of every message `node` serves from queue 0."""
    out: dict[int, bytes] = {}
    core = cluster.cores[node]
    offset = core.store.min_offset(topic, 0)
    while True:
        response = cluster.pull(node, topic, 0, offset, max_count=64)
        if response.fields["status"] != "FOUND":
            return out
        first = response.fields["next_offset"] - len(bodies_of(response))
        for i, body in enumerate(bodies_of(response)):
            out[first + i] = body[:16]
        offset = response.fields["next_offset"]


def snapshots(cluster: CoreCluster, node: int) -> dict[int, SegmentSnapshot]:
    files = SnapshotFiles(cluster.fss[node], f"/n{node}/snapshots")
    out = {}
    for offset in files.offsets():
        snapshot = files.load(offset)
        assert snapshot is not None
        out[offset] = snapshot
    return out


def test_a_snapshot_is_taken_where_each_segment_begins() -> None:
    cluster = CoreCluster()
    leader = cluster.elect()
    send_big(cluster, leader, 10, "a")
    cluster.settle()
    for node in cluster.ids:
        taken = snapshots(cluster, node)
        assert sorted(taken) == [SEGMENT, 2 * SEGMENT], node
        core = cluster.cores[node]
        for offset, snapshot in taken.items():
            # The queue offset of the first message at or past the boundary, the Raft
            # entry just before it, and the state there.
            before = [q for q in range(10) if _commit_offset(core, q) < offset]
            assert snapshot.queues == {("orders", 0): len(before)}
            assert core.entry_log.end_of(snapshot.index) <= offset
            assert core.entry_log.end_of(snapshot.index + 1) > offset
            assert snapshot.term == core.entry_log.term_at(snapshot.index)
        assert taken[SEGMENT].state  # the topic table at least


def _commit_offset(core: BrokerCore, queue_offset: int) -> int:
    queue = core.store.queues.get("orders", 0)
    assert queue is not None
    unit = queue.get(queue_offset)
    assert unit is not None
    return unit.commit_offset


def test_retention_deletes_old_segments_everywhere_and_keeps_the_rest() -> None:
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 10, "old")
    cluster.tick(RETENTION_MS // 10 + 30)  # the first segments expire
    fresh = send_big(cluster, leader, 2, "new")
    cluster.settle(20)
    views = {node: readable(cluster, node) for node in cluster.ids}
    for node, core in cluster.cores.items():
        assert core.stats()["segments_deleted"] == 2, node
        assert core.commit_log.min_offset == 2 * SEGMENT
        assert core.raft.status()["first_index"] > 1
        assert views[node] == views[leader], "replicas serve the same messages"
    assert min(views[leader]) > 0, "the oldest messages are gone"
    assert set(fresh) <= set(views[leader])
    assert views[leader][fresh[-1]].startswith(b"new000001")
    # A pull below what is kept says so, with where the queue now begins.
    response = cluster.pull(leader, "orders", 0, 0)
    assert response.fields["status"] == "OFFSET_ILLEGAL"
    assert response.fields["next_offset"] == min(views[leader])


def test_nothing_is_deleted_before_it_expires() -> None:
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 10, "a")
    cluster.tick(RETENTION_MS // 20)
    for core in cluster.cores.values():
        assert core.stats()["segments_deleted"] == 0
        assert core.commit_log.min_offset == 0


def test_a_segment_ending_in_an_entry_without_messages_waits_for_its_messages_to_expire() -> None:
    # Found by `mq sim broker` (the retention checker): a segment's age was the store
    # time of the messages in its last frame, 0 for an entry that holds none (an offset
    # commit, a Raft no-op), so such a segment went as soon as a checkpoint covered it,
    # with messages stored a moment before.
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 4, "a")
    commit = request(
        RequestCode.UPDATE_CONSUMER_OFFSET,
        {"group": "readers", "offsets": [["orders", 0, 1, 0]]},
    )
    assert cluster.request(leader, commit).ok
    send_big(cluster, leader, 1, "b")  # does not fit after it: the next segment
    cluster.tick(RETENTION_MS // 20)
    for node, core in cluster.cores.items():
        log = core.commit_log
        assert len(log.segments()) == 2, node
        last = list(log.iter_frames(0, SEGMENT))[-1][1]
        magics = [magic for _pos, magic, _inner in inner_frames(last)]
        assert magics == [MAGIC_COMMAND], "the first segment ends in the offset commit"
        assert log.min_offset == 0 and core.stats()["segments_deleted"] == 0, node
    cluster.tick(RETENTION_MS // 10)
    for core in cluster.cores.values():
        assert core.commit_log.min_offset == SEGMENT, "deleted once its messages expired"


def test_a_full_disk_holds_retention_back_until_there_is_room() -> None:
    # Deleting a segment first writes where the Raft log now begins; on a full disk
    # that write fails, and the tick used to raise DiskFullError out of the core.
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 10, "a")
    cluster.settle()
    full = cluster.followers()[0]
    fs = cluster.fss[full]
    fs.capacity_bytes = fs.used_bytes()
    cluster.tick(RETENTION_MS // 10 + 30)
    core = cluster.cores[full]
    assert core.commit_log.min_offset == 0 and core.log.first_index() == 1
    assert "retention" in core.status()["disk_full"]
    assert cluster.cores[leader].commit_log.min_offset > 0, "the others went on"
    fs.capacity_bytes = None
    cluster.tick(30)
    assert core.commit_log.min_offset == cluster.cores[leader].commit_log.min_offset
    assert "retention" not in core.status()["disk_full"]
    cluster.crash(full)
    cluster.start(full)
    cluster.settle(10)
    assert readable(cluster, full) == readable(cluster, leader)


def lag_behind_retention(cluster: CoreCluster) -> tuple[int, int]:
    """A follower cut off while the others write and delete what it would need next."""
    leader = cluster.elect()
    send_big(cluster, leader, 2, "a")
    commit = request(
        RequestCode.UPDATE_CONSUMER_OFFSET,
        {"group": "readers", "offsets": [["orders", 0, 1, 0]]},
    )
    assert cluster.request(leader, commit).ok
    cluster.settle()
    behind = cluster.followers()[0]
    cluster.isolate(behind)
    send_big(cluster, leader, 12, "b")
    cluster.tick(RETENTION_MS // 10 + 30)
    assert cluster.cores[leader].commit_log.min_offset > 0, "the leader deleted nothing"
    # More segments the leader keeps: the snapshot to send is the one where its log
    # begins, not the newest.
    send_big(cluster, leader, 6, "k")
    assert len(cluster.cores[leader].commit_log.segments()) >= 2
    return leader, behind


def test_a_follower_behind_deleted_segments_installs_the_snapshot_and_catches_up() -> None:
    cluster = retention_cluster()
    leader, behind = lag_behind_retention(cluster)
    cluster.heal()
    cluster.settle(30)
    core = cluster.cores[behind]
    assert core.stats()["snapshots_installed"] == 1
    assert core.commit_log.min_offset == cluster.cores[leader].commit_log.min_offset
    after = send_big(cluster, leader, 3, "c")
    cluster.settle(20)
    views = {node: readable(cluster, node) for node in cluster.ids}
    assert views[behind] == views[leader], "the same messages at the same queue offsets"
    assert set(after) <= set(views[behind])
    # The replicated state came with the snapshot: topics and consumer offsets.
    assert "orders" in core.topics
    query = request(
        RequestCode.QUERY_CONSUMER_OFFSET, {"group": "readers", "topic": "orders", "queue_id": 0}
    )
    assert cluster.request(behind, query).fields["offsets"] == [[0, 1]]
    # Its log matches the leader's byte for byte from where both begin.
    lead = cluster.cores[leader].commit_log
    log = core.commit_log
    assert log.segments() == lead.segments()
    for start, end in log.segments():
        assert bytes(log.read(start, end - start)) == bytes(lead.read(start, end - start))


def test_an_installed_follower_survives_a_crash_and_can_lead() -> None:
    cluster = retention_cluster()
    leader, behind = lag_behind_retention(cluster)
    cluster.heal()
    cluster.settle(30)
    assert cluster.cores[behind].stats()["snapshots_installed"] == 1
    cluster.crash(behind)
    cluster.start(behind)
    cluster.settle(10)
    expected = readable(cluster, leader)
    assert readable(cluster, behind) == expected
    cluster.stop(leader)
    new_leader = cluster.elect()
    after = send_big(cluster, new_leader, 1, "d")
    assert after == [max(expected) + 1], "queue offsets go on where they were"


class Interrupted(Exception):
    pass


def test_a_crash_in_the_middle_of_an_install_redoes_it_on_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = retention_cluster()
    leader, behind = lag_behind_retention(cluster)
    real_write = SnapshotFiles.write
    victim = cluster.fss[behind]

    def write(self: SnapshotFiles, offset: int, data: bytes) -> None:
        if self._fs is victim and victim.exists(f"/n{behind}/installing"):
            raise Interrupted  # the store and the log are reset, the rest is not
        real_write(self, offset, data)

    monkeypatch.setattr(SnapshotFiles, "write", write)
    cluster.heal()
    with pytest.raises(Interrupted):
        cluster.settle(30)
    monkeypatch.setattr(SnapshotFiles, "write", real_write)
    cluster.crash(behind)
    core = cluster.start(behind)
    assert not victim.exists(f"/n{behind}/installing")
    assert core.commit_log.min_offset == cluster.cores[leader].commit_log.min_offset
    cluster.settle(30)
    send_big(cluster, leader, 1, "e")
    cluster.settle(10)
    assert readable(cluster, behind) == readable(cluster, leader)


def test_a_node_whose_disk_was_replaced_rejoins_from_the_snapshot_under_the_same_leader() -> None:
    # Its rejections say its log ends below what it acknowledged: the leader probes it
    # from scratch and sends the snapshot where its own log begins.
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 12, "a")
    cluster.tick(RETENTION_MS // 10 + 30)
    assert cluster.cores[leader].log.first_index() > 1, "the leader compacted its log"
    wiped = cluster.followers()[0]
    term = cluster.cores[leader].raft.term
    cluster.crash(wiped)
    cluster.fss[wiped] = SimFileSystem(cluster.fss[wiped]._rng)
    cluster.start(wiped)
    # It may have voted in this term before its disk went: it holds its vote for twice
    # the election timeout (a restarted node that kept its disk does not).
    config = cluster.configs[wiped].raft_config()
    assert cluster.cores[wiped].raft.status()["vote_hold"] == 2 * config.election_ticks
    assert cluster.cores[leader].raft.status()["vote_hold"] == 0
    cluster.settle(30)
    assert cluster.leader() == leader and cluster.cores[leader].raft.term == term
    assert cluster.cores[wiped].stats()["snapshots_installed"] == 1
    send_big(cluster, leader, 1, "b")
    cluster.tick(RETENTION_MS // 10 + 30)  # each node deletes by its own clock: let all
    assert readable(cluster, wiped) == readable(cluster, leader)
    dispatched = {n: cluster.cores[n].store.dispatcher.dispatched_offset for n in (wiped, leader)}
    assert dispatched[wiped] == dispatched[leader]


def test_a_replaced_disk_waits_for_the_old_leader_if_it_died_then_rejoins_from_the_snapshot() -> (
    None
):
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 12, "a")
    cluster.tick(RETENTION_MS // 10 + 30)
    wiped = cluster.followers()[0]
    cluster.crash(wiped)
    cluster.fss[wiped] = SimFileSystem(cluster.fss[wiped]._rng)
    cluster.start(wiped)
    cluster.stop(leader)
    # The node on the new disk cannot tell whether the other follower holds every
    # committed entry, so it votes for no one with a log until a leader caught it up.
    cluster.tick(200)
    assert cluster.leader() is None
    cluster.start(leader)
    new_leader = cluster.elect()
    assert new_leader != wiped, "an empty log cannot win an election"
    send_big(cluster, new_leader, 1, "b")
    cluster.settle(30)
    assert cluster.cores[wiped].stats()["snapshots_installed"] == 1
    assert readable(cluster, wiped) == readable(cluster, new_leader)


def test_a_replaced_disk_started_with_join_says_so_until_a_leader_caught_it_up() -> None:
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 12, "a")
    cluster.tick(RETENTION_MS // 10 + 30)
    wiped, other = cluster.followers()
    cluster.crash(wiped)
    cluster.fss[wiped] = SimFileSystem(cluster.fss[wiped]._rng)
    cluster.configs[wiped] = dataclasses.replace(cluster.configs[wiped], join=True)
    cluster.start(wiped)
    status = cluster.cores[wiped].status()
    assert status["joining"] and not status["synced"]
    assert cluster.cores[other].status()["synced"] and not cluster.cores[other].status()["joining"]
    cluster.settle(30)
    status = cluster.cores[wiped].status()
    assert status["synced"] and not status["joining"]
    assert status["commit_index"] == cluster.cores[leader].status()["commit_index"]
    assert readable(cluster, wiped) == readable(cluster, leader)
    # Its data_dir now holds a term: on a restart the flag changes nothing.
    cluster.crash(wiped)
    cluster.start(wiped)
    assert not cluster.cores[wiped].status()["joining"]


def test_a_restart_rebuilds_the_state_from_the_segment_snapshot() -> None:
    # Without its state file, a node whose log was compacted rebuilds its topics and
    # offsets from the snapshot where its log begins, not from an empty state.
    cluster = retention_cluster(state_snapshot_interval_ms=3_600_000)
    leader, _behind = lag_behind_retention(cluster)
    node = leader
    cluster.stop(node)
    cluster.fss[node].remove(f"/n{node}/state")
    core = cluster.start(node)
    assert "orders" in core.topics
    assert core._state.committed_offsets("readers", "orders") == {0: 1}


def test_a_segments_age_survives_a_restart_before_its_end() -> None:
    # Dispatch notes the newest store time of a segment as it goes; a node restarted
    # before it reached the segment's end must still know it (read back on open), or
    # the segment would look as old as the messages after the restart, or older.
    cluster = CoreCluster(checkpoint_interval_ms=10)  # nothing is dispatched again
    leader = cluster.elect()
    send_big(cluster, leader, 2, "a")
    cluster.tick(100)
    send_big(cluster, leader, 2, "b")  # the segment's last and newest messages
    cluster.settle()
    restarted = cluster.followers()[0]
    cluster.crash(restarted)
    cluster.start(restarted)
    cluster.tick(100)
    send_big(cluster, leader, 1, "c")  # the next segment's first
    cluster.settle()
    assert len(cluster.cores[leader].commit_log.segments()) == 2
    expected = snapshots(cluster, leader)[SEGMENT].newest_ms
    assert expected > 1_000
    for node in cluster.ids:
        assert snapshots(cluster, node)[SEGMENT].newest_ms == expected, node


def test_a_crash_between_compaction_and_deletion_is_finished_on_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Retention makes the log's new start durable, then deletes the segment. A node
    # restarted in between must not serve a snapshot that does not match its log (it
    # would fail on every election it wins, long before its next retention check).
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 2, "a")
    cluster.settle()
    behind, other = cluster.followers()
    cluster.isolate(behind)
    send_big(cluster, leader, 12, "b")
    victim = cluster.cores[leader].store
    real = ReplicatedMessageStore.delete_first_segment

    def power_cut(self: ReplicatedMessageStore) -> None:
        if self is victim:
            raise Interrupted
        real(self)

    monkeypatch.setattr(ReplicatedMessageStore, "delete_first_segment", power_cut)
    with pytest.raises(Interrupted):
        cluster.tick(RETENTION_MS // 10 + 30)
    monkeypatch.setattr(ReplicatedMessageStore, "delete_first_segment", real)
    cluster.crash(leader)
    cluster.configs[leader] = dataclasses.replace(
        cluster.configs[leader],
        retention_check_interval_ms=10_000,  # the default
    )
    core = cluster.start(leader)
    assert core.log.first_index() > 1
    assert core.commit_log.min_offset > 0, "the deletion was finished on open"
    cluster.stop(other)  # the two left: the restarted node and the lagging one
    cluster.heal()
    cluster.settle(60)
    send_big(cluster, leader, 1, "z")
    cluster.settle(10)
    assert cluster.cores[behind].stats()["snapshots_installed"] == 1


def hold_dispatch(cluster: CoreCluster, leader: int, node: int) -> None:
    """Leave `node` room for small files only, then send to a new topic: its dispatch
    waits for the first page of a ConsumeQueue file (sparse: 4 KiB) that does not fit."""
    fs = cluster.fss[node]
    fs.capacity_bytes = fs.used_bytes() + SIM_PAGE_BYTES - 1
    assert cluster.request(leader, send_request("other", [b"x"])).ok


def test_a_tick_before_the_install_does_not_dispatch_the_forgotten_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Raft forgets the log when the last chunk arrives; `ready()` installs later. The
    # trio server ticks in another task, so a tick can come in between, here with a
    # dispatch held back by a full disk that would retry on the forgotten log.
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 2, "a")
    cluster.settle()
    behind = cluster.followers()[0]
    hold_dispatch(cluster, leader, behind)
    cluster.settle()
    core = cluster.cores[behind]
    assert core._applied < core._committed
    cluster.isolate(behind)
    send_big(cluster, leader, 12, "b")
    cluster.tick(RETENTION_MS // 10 + 30)
    send_big(cluster, leader, 2, "k")
    real_deliver = CoreCluster.deliver

    def deliver(self: CoreCluster, src: int, dst: int, data: bytes) -> None:
        real_deliver(self, src, dst, data)
        if dst != behind or (src, dst) in self.blocked:
            return
        frame = decode_frame(data)
        if frame.code != RequestCode.RAFT_MESSAGE:
            return
        _group, env = decode_envelope(frame)
        if isinstance(env.msg, SnapshotRequest) and env.msg.done:
            self.cores[behind].tick(self.now_ms + 1_000)  # the server's tick task

    monkeypatch.setattr(CoreCluster, "deliver", deliver)
    cluster.heal()
    cluster.settle(30)
    assert cluster.cores[behind].stats()["snapshots_installed"] == 1


def test_retention_runs_while_dispatch_waits_for_room() -> None:
    # A full disk stops dispatch; deleting expired segments is what frees the room.
    cluster = retention_cluster()
    leader = cluster.elect()
    send_big(cluster, leader, 10, "a")
    cluster.settle()
    node = cluster.followers()[0]
    hold_dispatch(cluster, leader, node)
    cluster.tick(RETENTION_MS // 10 + 100)
    core = cluster.cores[node]
    assert cluster.cores[leader].stats()["segments_deleted"] == 2
    assert core.stats()["disk_full_errors"] >= 1, "dispatch did wait for room"
    # Two expired 256 KiB segments went; dispatch needed 20 KiB.
    assert core.stats()["segments_deleted"] > 0
    cluster.settle(30)
    assert "dispatch" not in core.status()["disk_full"]
    assert readable(cluster, node, "other") == readable(cluster, leader, "other")
