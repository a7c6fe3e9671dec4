"""The MessageStore facade: statuses, queries, recovery, retention, bad input, faults."""

from __future__ import annotations

import errno
import os
import random
from dataclasses import replace

import pytest

from storage.errors import DiskFullError, InvalidTopicError, MessageTooLargeError
from storage.files import RealFileSystem, SimFileSystem
from storage.message_store import GetStatus, MessageStore, StoreConfig
from storage.record import MessageRecord, tag_hash

SMALL = StoreConfig(
    segment_bytes=4096,
    cq_units_per_segment=8,
    index_slots=16,
    index_entries_max=64,
    retention_ms=1000,
)


def rec(
    i: int, *, topic: str = "t", queue_id: int = 0, tags: str = "a", body: bytes = b"x" * 100
) -> MessageRecord:
    return MessageRecord(
        topic=topic,
        queue_id=queue_id,
        body=body,
        tags=tags,
        keys=f"key{i} shared",
        msg_id=f"id{i:04d}",
        store_timestamp_ms=1_000 + i * 10,
        born_timestamp_ms=1_000 + i * 10,
    )


def sim_store(
    config: StoreConfig = SMALL, seed: int = 1, capacity: int | None = None
) -> tuple[SimFileSystem, MessageStore]:
    fs = SimFileSystem(random.Random(seed), capacity_bytes=capacity)
    return fs, MessageStore(fs, "/s", config)


def test_messages_are_invisible_until_dispatched_then_get_queue_offsets_in_order():
    _, store = sim_store()
    store.put_messages([rec(i) for i in range(5)])
    assert store.get_messages("t", 0, 0).status is GetStatus.NO_MATCHED_LOGIC_QUEUE
    dispatched = store.dispatch()
    assert [d.queue_offset for d in dispatched] == [0, 1, 2, 3, 4]
    got = store.get_messages("t", 0, 1, max_count=2)
    assert got.status is GetStatus.FOUND and got.next_offset == 3
    assert [MessageRecord.decode(f).msg_id for _, f in got.messages] == ["id0001", "id0002"]


def test_get_statuses_follow_rocketmq():
    _, store = sim_store()
    store.put_messages([rec(i) for i in range(3)])
    store.dispatch()
    assert store.get_messages("t", 0, 3).status is GetStatus.OFFSET_OVERFLOW_ONE
    bad = store.get_messages("t", 0, 9)
    # As RocketMQ: with the queue starting at 0, a reader past the end starts over at 0.
    assert (bad.status, bad.next_offset) == (GetStatus.OFFSET_OVERFLOW_BADLY, 0)
    assert store.get_messages("nope", 0, 0).status is GetStatus.NO_MATCHED_LOGIC_QUEUE


def test_tag_filter_skips_units_without_reading_the_log():
    _, store = sim_store()
    store.put_messages([rec(i, tags="a" if i % 2 else "b") for i in range(6)])
    store.dispatch()
    got = store.get_messages("t", 0, 0, max_count=10, tag_hashes=frozenset({tag_hash("a")}))
    assert [q for q, _ in got.messages] == [1, 3, 5]
    none = store.get_messages("t", 0, 0, max_count=10, tag_hashes=frozenset({tag_hash("zzz")}))
    assert none.status is GetStatus.NO_MATCHED_MESSAGE and none.next_offset == 6


def test_max_bytes_bounds_a_read_but_returns_at_least_one_message():
    _, store = sim_store()
    store.put_messages([rec(i) for i in range(5)])
    store.dispatch()
    got = store.get_messages("t", 0, 0, max_count=5, max_bytes=10)
    assert len(got.messages) == 1 and got.next_offset == 1


def test_query_by_key_id_and_timestamp():
    _, store = sim_store()
    store.put_messages([rec(i) for i in range(20)])
    store.dispatch()
    assert [r.msg_id for r in store.query_by_key("t", "key7")] == ["id0007"]
    assert len(store.query_by_key("t", "shared", max_count=5)) == 5
    assert len(store.query_by_key("t", "shared", begin_ms=1_100, end_ms=1_140)) == 5
    found = store.query_by_id("t", "id0013")
    assert found is not None and found.keys == "key13 shared"
    assert store.query_by_id("other", "id0013") is None
    assert store.offset_for_timestamp("t", 0, 1_095) == 10


def test_bad_input_gets_a_clear_error_and_nothing_is_stored():
    _, store = sim_store()
    with pytest.raises(InvalidTopicError):
        store.put_messages([rec(1), rec(2, topic="bad topic!")])
    with pytest.raises(MessageTooLargeError):
        store.put_messages([MessageRecord(topic="t", body=b"x" * (4 << 20 | 1))])
    assert store.commit_log.max_offset == 0


def test_disk_full_fails_the_append_keeps_reads_and_recovers_after_space_is_freed():
    fs, store = sim_store(capacity=9_000)
    store.put_messages([rec(i) for i in range(10)])
    store.dispatch()
    appended = 10
    with pytest.raises(DiskFullError):
        for i in range(10, 400):
            store.put_messages([rec(i)])
            appended += 1
            store.dispatch()  # rolling a ConsumeQueue or index file can hit the full disk too
    assert store.get_messages("t", 0, 0).status is GetStatus.FOUND
    fs.capacity_bytes = None  # space freed
    store.put_messages([rec(500)])
    store.dispatch()
    got = store.get_messages("t", 0, 0, max_count=1000, max_bytes=1 << 30)
    ids = [MessageRecord.decode(f).msg_id for _, f in got.messages]
    assert ids == [f"id{i:04d}" for i in range(appended)] + ["id0500"], "each message exactly once"
    assert [r.msg_id for r in store.query_by_key("t", f"key{appended - 1}")] == [
        f"id{appended - 1:04d}"
    ]


def test_crash_recovery_truncates_the_torn_tail_and_rebuilds_queues_and_index():
    fs, store = sim_store(seed=3)
    store.put_messages([rec(i) for i in range(10)])
    store.dispatch()
    store.flush(now_ms=5)
    store.put_messages([rec(i) for i in range(10, 30)])
    store.dispatch()
    fs.crash()
    again = MessageStore(fs, "/s", SMALL)
    assert not again.recovery.clean
    n = again.max_offset("t", 0)
    assert 10 <= n <= 30
    got = again.get_messages("t", 0, 0, max_count=100, max_bytes=1 << 20)
    assert [MessageRecord.decode(f).msg_id for _, f in got.messages] == [
        f"id{i:04d}" for i in range(n)
    ]
    assert [r.msg_id for r in again.query_by_key("t", "key9")] == ["id0009"]


def test_clean_close_reopens_without_recovery_work():
    fs, store = sim_store()
    store.put_messages([rec(i) for i in range(10)])
    store.dispatch()
    store.close(now_ms=1)
    again = MessageStore(fs, "/s", SMALL)
    assert (
        again.recovery.clean
        and again.recovery.truncated_bytes == 0
        and again.recovery.redispatched == 0
    )
    assert again.max_offset("t", 0) == 10


def test_retention_deletes_expired_segments_never_the_active_one_and_min_offsets_follow():
    _, store = sim_store()
    for i in range(120):
        store.put_messages([rec(i)])
    store.dispatch()
    store.flush(now_ms=1_000)  # retention never deletes what no checkpoint covers
    assert len(store.commit_log.segments()) > 3
    assert store.delete_expired(now_ms=1_500) == 0, "nothing is a second old yet"
    segments = len(store.commit_log.segments())
    assert store.delete_expired(now_ms=10**6) == segments - 1
    assert len(store.commit_log.segments()) == 1
    low = store.min_offset("t", 0)
    assert low > 0
    assert store.get_messages("t", 0, 0).status is GetStatus.OFFSET_TOO_SMALL
    assert store.get_messages("t", 0, low).status is GetStatus.FOUND


def test_retention_ages_a_segment_by_its_newest_message_not_its_last():
    # Store times need not grow along the log: each is the clock of the leader that
    # stored the message, and a new leader's clock may be behind. A segment goes once
    # its newest message expires, so no message goes before it is retention_ms old.
    _, store = sim_store()
    for i in range(60):
        store.put_messages([replace(rec(i), store_timestamp_ms=10_000 - i * 10)])
    store.dispatch()
    store.flush(now_ms=0)
    assert len(store.commit_log.segments()) > 1
    # The first segment's newest message was stored at 10_000, its last one earlier.
    assert store.delete_expired(now_ms=10_000 + SMALL.retention_ms - 1) == 0
    assert store.delete_expired(now_ms=10_000 + SMALL.retention_ms) > 0


def test_retention_waits_for_a_checkpoint_past_the_segment():
    # Units not yet synced could be lost in a crash, and once their segment is deleted
    # re-dispatch cannot rebuild them: the queue's offsets would go backwards.
    fs, store = sim_store()
    store.put_messages([rec(i, topic="t") for i in range(10)])
    store.put_messages([rec(i, topic="u") for i in range(10, 90)])
    store.dispatch()
    store.commit_log.flush()
    assert store.delete_expired(now_ms=10**6) == 0
    store.flush(now_ms=0)
    assert store.delete_expired(now_ms=10**6) > 0
    fs.crash()
    again = MessageStore(fs, "/s", SMALL)
    assert again.max_offset("t", 0) == 10


def test_retention_under_disk_pressure_deletes_oldest_first():
    _, store = sim_store(capacity=200_000)
    for i in range(120):
        store.put_messages([rec(i)])
    store.dispatch()
    store.flush(now_ms=0)
    segments = len(store.commit_log.segments())
    store.config = replace(SMALL, retention_ms=10**12, disk_ratio_max=0.0)
    assert store.delete_expired(now_ms=0) == segments - 1
    assert store.get_messages("t", 0, store.min_offset("t", 0)).status is GetStatus.FOUND


def test_a_flipped_byte_on_real_files_is_never_served(tmp_path):
    config = StoreConfig(
        segment_bytes=1 << 16, cq_units_per_segment=64, index_slots=64, index_entries_max=256
    )
    fs = RealFileSystem()
    store = MessageStore(fs, str(tmp_path), config)
    store.put_messages([rec(i, body=os.urandom(200)) for i in range(20)])
    store.dispatch()
    store.flush(now_ms=1)
    victim = store.get_messages("t", 0, 7, max_count=1).messages[0][1]
    position = store.queues.get("t", 0).get(7).commit_offset + 60
    del victim
    store.commit_log.close()
    store.queues.close()
    store.index.close()
    with open(tmp_path / "commitlog" / f"{0:020d}", "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))
    again = MessageStore(fs, str(tmp_path), config)  # abort marker still there: crash recovery
    got = again.get_messages("t", 0, 0, max_count=100, max_bytes=1 << 20)
    ids = [MessageRecord.decode(f).msg_id for _, f in got.messages]
    assert "id0007" not in ids
    assert ids == [f"id{i:04d}" for i in range(len(ids))], "nothing past the corrupt record"


def test_a_truncation_the_full_disk_refuses_leaves_the_log_as_it_was():
    # The lowered checkpoint is written before the log is cut: when it does not fit,
    # nothing has changed (the other order cut the log and then failed, and the broker's
    # Raft log and CommitLog disagreed).
    fs, store = sim_store()
    offsets = store.put_messages([rec(i) for i in range(6)])
    store.flush(1_000)  # the checkpoint now covers all six
    end = store.commit_log.max_offset
    fs.capacity_bytes = fs.used_bytes()  # not a byte more
    with pytest.raises(DiskFullError):
        store.truncate(offsets[3])
    assert store.commit_log.max_offset == end
    fs.capacity_bytes = None
    store.truncate(offsets[3])
    assert store.commit_log.max_offset == offsets[3]
    store.dispatch()
    got = store.get_messages("t", 0, 0, max_count=100)
    assert [MessageRecord.decode(f).msg_id for _, f in got.messages] == [
        rec(i).msg_id for i in range(3)
    ]


def _retained_past_queue_t() -> tuple[SimFileSystem, MessageStore]:
    """Queue t/0 got ten messages, then u/0 enough to fill several more segments; retention
    then deleted every segment but the active one, so all of t/0's units point below the
    CommitLog's min offset (its newest ones in a CQ segment that is still on disk)."""
    fs, store = sim_store()
    store.put_messages([rec(i, topic="t") for i in range(10)])
    store.put_messages([rec(i, topic="u") for i in range(10, 90)])
    store.dispatch()
    store.flush(now_ms=0)  # retention never deletes what no checkpoint covers
    assert store.delete_expired(now_ms=10**6) > 0
    assert store.queues.get("t", 0).last_unit().commit_offset < store.commit_log.min_offset
    assert (store.min_offset("t", 0), store.max_offset("t", 0)) == (10, 10)
    return fs, store


@pytest.mark.parametrize("how", ["close", "crash"])
def test_reopening_after_retention_keeps_the_max_offset_of_a_queue_whose_log_is_gone(how):
    # Found reading the code: recovery took units pointing into deleted segments for torn
    # ones and cut them, so the queue's max offset went back and offsets 8 and 9 were
    # handed out a second time.
    fs, store = _retained_past_queue_t()
    if how == "close":
        store.close(now_ms=10**6)
    else:
        store.flush(now_ms=10**6)
        fs.crash()
    again = MessageStore(fs, "/s", SMALL)
    assert (again.min_offset("t", 0), again.max_offset("t", 0)) == (10, 10)
    assert again.get_messages("t", 0, 9).status is GetStatus.OFFSET_TOO_SMALL
    again.put_messages([rec(100, topic="t")])
    assert [d.queue_offset for d in again.dispatch()] == [10]


def test_a_checkpoint_that_cannot_sync_new_names_keeps_them_for_the_next_one(tmp_path, monkeypatch):
    """Out of file descriptors, a checkpoint cannot open a directory to sync it: it
    writes no record, and the next checkpoint syncs the names first (a record covering
    units whose file names a crash could lose would hide those messages for good)."""
    from storage import files

    store = MessageStore(RealFileSystem(), str(tmp_path), SMALL)
    store.put_messages([rec(i, topic=f"t{i % 2}") for i in range(4)])
    store.dispatch()
    before = store.fs.read_bytes(f"{tmp_path}/checkpoint")

    def no_fd(path: str) -> None:
        raise files.OutOfFilesError(path, errno.EMFILE)

    monkeypatch.setattr(files, "_fsync_dir", no_fd)
    plan = store.prepare_checkpoint(store.commit_log.flush(), now_ms=5_000)
    plan.run()
    store.complete_checkpoint(plan)
    assert not plan.written and isinstance(plan.disk_full, files.OutOfFilesError)
    assert store.fs.read_bytes(f"{tmp_path}/checkpoint") == before
    synced: list[str] = []
    monkeypatch.setattr(files, "_fsync_dir", synced.append)
    plan = store.prepare_checkpoint(store.commit_log.flush(), now_ms=6_000)
    plan.run()
    assert plan.written
    root = f"{tmp_path}/consumequeue"
    assert {root, f"{root}/t0", f"{root}/t0/0", f"{root}/t1", f"{root}/t1/0"} <= set(synced)
    store.close(now_ms=7_000)


def test_a_checkpoint_syncs_the_names_of_new_queues_once_per_directory(tmp_path, monkeypatch):
    """Dispatch creates ConsumeQueue files without syncing directories (event loop);
    the checkpoint syncs each directory once, however many new queues share it, and
    before it writes the record that covers their units."""
    from storage import files

    store = MessageStore(RealFileSystem(), str(tmp_path), SMALL)
    synced: list[str] = []
    monkeypatch.setattr(files, "_fsync_dir", lambda path: synced.append(path))
    store.put_messages([rec(i, topic=f"t{i % 3}", queue_id=i % 2) for i in range(12)])
    store.dispatch()
    assert not [p for p in synced if "consumequeue" in p], "dispatch synced no directory"
    store.checkpoint(now_ms=5_000)
    names = [p for p in synced if "consumequeue" in p]
    assert len(names) == len(set(names)), "each directory once"
    root = f"{tmp_path}/consumequeue"
    expected = {root} | {f"{root}/t{t}" for t in range(3)}
    expected |= {f"{root}/t{t}/{q}" for t in range(3) for q in range(2)}
    assert set(names) == expected
    store.close(now_ms=6_000)
