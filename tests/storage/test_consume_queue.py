"""ConsumeQueue: dense per-queue units over segments, recovery, truncation, retention."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import files
from storage.consume_queue import (
    BLANK_SIZE,
    BLANK_UNIT,
    UNIT_BYTES,
    ConsumeQueue,
    ConsumeQueueError,
    ConsumeQueueSet,
    Unit,
    segment_name,
)
from storage.files import DiskFullError, RealFileSystem, Segment, SimFileSystem

ROOT = "/store/consumequeue"
UNITS = 4  # tiny segments so every test crosses boundaries
MESSAGE_BYTES = 100


def unit_at(i: int) -> Unit:
    """The unit the tests put at queue offset i: messages 100 bytes apart."""
    return Unit(commit_offset=1_000 + i * MESSAGE_BYTES, size=MESSAGE_BYTES, tag_hash=i * 7 + 1)


def sim_fs(seed: int = 1, capacity_bytes: int | None = None) -> SimFileSystem:
    return SimFileSystem(random.Random(seed), capacity_bytes)


def open_queue(fs, units: int = UNITS) -> ConsumeQueue:
    return ConsumeQueue(fs, ROOT, "TopicA", 3, units_per_segment=units)


def fill(queue: ConsumeQueue, count: int) -> None:
    for i in range(queue.max_offset, queue.max_offset + count):
        u = unit_at(i)
        queue.put(i, u.commit_offset, u.size, u.tag_hash)


class CountingSegment:
    """Wraps a segment to count reads, so tests can prove the one-read-per-segment rule."""

    def __init__(self, inner: Segment, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    @property
    def path(self) -> str:
        return self._inner.path

    @property
    def capacity(self) -> int:
        return self._inner.capacity

    def write(self, pos, data):
        self._inner.write(pos, data)

    def pack_into(self, layout, pos, *values):
        self._inner.pack_into(layout, pos, *values)

    def read(self, pos, size):
        self._counter[0] += 1
        return self._inner.read(pos, size)

    def sync(self):
        self._inner.sync()

    def close(self):
        self._inner.close()


class CountingFileSystem(SimFileSystem):
    def __init__(self) -> None:
        super().__init__(random.Random(1))
        self.reads = [0]

    def open_segment(self, path, capacity, *, sparse=False, durable=True):
        segment = super().open_segment(path, capacity, sparse=sparse, durable=durable)
        return CountingSegment(segment, self.reads)


# ---------------------------------------------------------------- append and read


def test_units_roll_over_into_segments_named_by_first_queue_offset():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 10)
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(0), segment_name(4), segment_name(8)]
    assert segment_name(8) == "00000000000000000008"
    assert fs.file_size(f"{ROOT}/TopicA/3/{segment_name(4)}") == UNITS * UNIT_BYTES
    assert (queue.min_offset, queue.max_offset) == (0, 10)
    assert [queue.get(i) for i in range(10)] == [unit_at(i) for i in range(10)]
    assert queue.last_unit() == unit_at(9)


def test_get_outside_bounds_is_none():
    queue = open_queue(sim_fs())
    assert queue.get(0) is None
    assert queue.last_unit() is None
    fill(queue, 3)
    assert queue.get(3) is None
    assert queue.get(-1) is None


def test_get_reads_one_unit_with_one_read_whatever_the_queue_length():
    fs = CountingFileSystem()
    queue = open_queue(fs)
    fill(queue, 40)
    fs.reads[0] = 0
    assert queue.get(37) == unit_at(37)
    assert queue.get(2) == unit_at(2)
    assert fs.reads[0] == 2


def test_get_range_crosses_segment_boundaries_with_one_read_per_segment():
    fs = CountingFileSystem()
    queue = open_queue(fs)
    fill(queue, 13)
    fs.reads[0] = 0
    assert queue.get_range(3, 7) == [unit_at(i) for i in range(3, 10)]
    assert fs.reads[0] == 3  # segments 0, 4 and 8
    assert queue.get_range(11, 32) == [unit_at(11), unit_at(12)]
    assert queue.get_range(13, 32) == []
    assert queue.get_range(0, 0) == []


def test_put_must_be_contiguous_and_in_commit_order():
    queue = open_queue(sim_fs())
    fill(queue, 2)
    with pytest.raises(AssertionError):
        queue.put(5, 10_000, 10, 0)
    with pytest.raises(AssertionError):
        queue.put(2, unit_at(1).commit_offset, 10, 0)
    with pytest.raises(AssertionError):
        queue.put(2, 10_000, 0, 0)


def test_put_many_writes_the_same_bytes_as_put():
    one, many = sim_fs(), sim_fs()
    fill(open_queue(one), 11)
    batch = open_queue(many)
    batch.put_many(0, [tuple(unit_at(i)) for i in range(3)])
    batch.put_many(3, [tuple(unit_at(i)) for i in range(3, 11)])
    assert batch.max_offset == 11
    for name in one.listdir(f"{ROOT}/TopicA/3"):
        path = f"{ROOT}/TopicA/3/{name}"
        a = bytes(one.open_segment(path, UNITS * UNIT_BYTES).read(0, UNITS * UNIT_BYTES))
        b = bytes(many.open_segment(path, UNITS * UNIT_BYTES).read(0, UNITS * UNIT_BYTES))
        assert a == b


def test_disk_full_when_rolling_leaves_the_queue_unchanged():
    segment_bytes = UNITS * UNIT_BYTES
    fs = sim_fs(capacity_bytes=2 * segment_bytes)
    queue = open_queue(fs)
    fill(queue, 8)
    with pytest.raises(DiskFullError):
        queue.put(8, unit_at(8).commit_offset, MESSAGE_BYTES, 0)
    assert queue.max_offset == 8
    assert queue.get_range(0, 100) == [unit_at(i) for i in range(8)]
    fs.capacity_bytes = None
    fill(queue, 1)
    assert queue.get(8) == unit_at(8)


def test_reopen_after_flush_and_close_restores_every_unit():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 9)
    queue.flush()
    assert queue.flushed_offset == 9 and not queue.dirty
    queue.close()
    again = open_queue(fs)
    assert (again.min_offset, again.max_offset) == (0, 9)
    assert again.get_range(0, 100) == [unit_at(i) for i in range(9)]
    fill(again, 1)
    assert again.get(9) == unit_at(9)


def test_reopen_when_the_last_segment_is_exactly_full():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 8)
    queue.flush()
    again = open_queue(fs)
    assert again.max_offset == 8
    fill(again, 2)
    assert again.get_range(6, 10) == [unit_at(i) for i in range(6, 10)]


def test_real_files_round_trip(tmp_path):
    fs = RealFileSystem()
    queue = ConsumeQueue(fs, str(tmp_path), "T", 0, units_per_segment=UNITS)
    fill(queue, 6)
    queue.flush()
    queue.close()
    again = ConsumeQueue(fs, str(tmp_path), "T", 0, units_per_segment=UNITS)
    assert again.get_range(0, 10) == [unit_at(i) for i in range(6)]
    again.close()


def test_geometry_change_is_refused():
    fs = sim_fs()
    fill(open_queue(fs), 5)
    with pytest.raises(ConsumeQueueError):
        open_queue(fs, units=8)


def test_invalid_topic_names_are_rejected():
    for bad in ["", "..", "a/b"]:
        with pytest.raises(ValueError):
            ConsumeQueue(sim_fs(), ROOT, bad, 0)


# ---------------------------------------------------------------- time search


def test_offset_for_timestamp_finds_the_first_message_stored_at_or_after():
    queue = open_queue(sim_fs())
    fill(queue, 20)
    stored_ms = {unit_at(i).commit_offset: 10_000 + (i // 2) * 10 for i in range(20)}
    calls = []

    def store_time_of(commit_offset: int, size: int) -> int | None:
        assert size == MESSAGE_BYTES
        calls.append(commit_offset)
        return stored_ms[commit_offset]

    assert queue.offset_for_timestamp(10_050, store_time_of) == 10
    assert queue.offset_for_timestamp(10_045, store_time_of) == 10
    assert queue.offset_for_timestamp(0, store_time_of) == 0
    assert queue.offset_for_timestamp(99_999, store_time_of) == 20
    assert len(calls) <= 4 * 6  # O(log n) per search


def test_offset_for_timestamp_treats_unreadable_messages_as_older():
    queue = open_queue(sim_fs())
    fill(queue, 10)

    def store_time_of(commit_offset: int, size: int) -> int | None:
        i = (commit_offset - 1_000) // MESSAGE_BYTES
        return None if i < 4 else 500 + i

    assert queue.offset_for_timestamp(0, store_time_of) == 4
    assert queue.offset_for_timestamp(507, store_time_of) == 7


# ---------------------------------------------------------------- truncation and recovery


def test_truncate_to_commit_offset_drops_the_tail_and_accepts_new_units():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 11)
    queue.truncate_to_commit_offset(unit_at(6).commit_offset + 1)
    assert queue.max_offset == 7
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(0), segment_name(4)]
    assert queue.get(7) is None
    assert queue.last_unit() == unit_at(6)
    fill(queue, 3)
    assert queue.get_range(0, 100) == [unit_at(i) for i in range(10)]


def test_truncate_is_durable_without_flush():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 7)
    queue.flush()
    queue.truncate(2)
    fs.crash()
    again = open_queue(fs)
    assert again.max_offset == 2


def test_truncate_at_a_segment_boundary_and_to_the_first_unit():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 10)
    queue.truncate(8)
    assert queue.max_offset == 8
    fill(queue, 1)
    assert queue.get(8) == unit_at(8)
    queue.truncate(0)
    assert (queue.min_offset, queue.max_offset) == (0, 0)
    assert queue.last_unit() is None
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(0)]
    with pytest.raises(ValueError):
        queue.truncate(1)
    fill(queue, 5)
    assert open_queue(fs).max_offset == 5


def test_recover_drops_units_past_the_commitlog_end():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 10)
    queue.flush()
    again = open_queue(fs)
    # The CommitLog ends inside message 7: units 7.. point past it.
    again.recover(unit_at(7).commit_offset + 50)
    assert again.max_offset == 7
    assert again.last_unit() == unit_at(6)
    assert open_queue(fs).max_offset == 7


def test_recover_with_unit_matches_drops_a_torn_unit_that_looks_plausible():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 6)
    queue.flush()
    # A torn write that landed the commit offset and only part of the size field.
    segment = fs.open_segment(f"{ROOT}/TopicA/3/{segment_name(4)}", UNITS * UNIT_BYTES)
    segment.write(1 * UNIT_BYTES + 8, b"\x07\x00\x00\x00")
    torn = open_queue(fs)
    assert torn.get(5) == Unit(unit_at(5).commit_offset, 7, unit_at(5).tag_hash)
    torn.recover(10**9, lambda q, u: u == unit_at(q))
    assert torn.max_offset == 5


def test_a_gap_left_in_an_earlier_segment_cuts_the_queue_there():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 10)
    queue.flush()
    # Damage: the last unit of segment 0 is gone although segment 4 is full.
    fs.open_segment(f"{ROOT}/TopicA/3/{segment_name(0)}", UNITS * UNIT_BYTES).write(
        3 * UNIT_BYTES, bytes(UNIT_BYTES)
    )
    again = open_queue(fs)
    assert again.max_offset == 3
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(0)]


def test_crash_with_torn_writes_leaves_a_contiguous_prefix_within_the_commitlog():
    for seed in range(60):
        fs = sim_fs(seed)
        rng = random.Random(seed)
        queue = open_queue(fs)
        fill(queue, rng.randrange(0, 9))
        queue.flush()
        flushed = queue.max_offset
        fill(queue, rng.randrange(0, 9))
        fs.crash()
        commit_max = unit_at(rng.randrange(0, 20)).commit_offset
        again = open_queue(fs)
        again.recover(commit_max)
        units = again.get_range(0, 100)
        assert len(units) == again.max_offset
        assert all(u.commit_offset + u.size <= commit_max for u in units)
        # Every unit but a torn last one is exactly what was put.
        assert units[:-1] == [unit_at(i) for i in range(len(units) - 1)]
        assert again.max_offset >= min(flushed, (commit_max - 1_000) // MESSAGE_BYTES)


# ---------------------------------------------------------------- retention


def test_retention_deletes_whole_segments_and_moves_min_offset():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 11)
    deleted = queue.delete_before_commit_offset(unit_at(6).commit_offset)
    assert deleted == 1
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(4), segment_name(8)]
    assert queue.min_offset == 6
    assert queue.get(5) is None
    assert queue.get_range(0, 3) == []
    assert queue.get_range(6, 3) == [unit_at(6), unit_at(7), unit_at(8)]
    # min_offset never goes back.
    assert queue.delete_before_commit_offset(0) == 0
    assert queue.min_offset == 6


def test_retention_never_deletes_the_last_segment():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 10)
    queue.delete_before_commit_offset(10**12)
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(8)]
    assert queue.min_offset == queue.max_offset == 10
    assert queue.last_unit() == unit_at(9)
    fill(queue, 1)
    assert queue.get_range(0, 10) == [] and queue.get_range(10, 10) == [unit_at(10)]


def test_retention_is_reapplied_after_reopen():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 11)
    queue.delete_before_commit_offset(unit_at(6).commit_offset)
    queue.flush()
    again = open_queue(fs)
    assert again.min_offset == 4  # the first unit on disk
    again.delete_before_commit_offset(unit_at(6).commit_offset)
    assert again.min_offset == 6


# ---------------------------------------------------------------- reset and blank units


def unpack_units(data: bytes) -> list[Unit]:
    return [Unit._make(u) for u in struct.iter_unpack("<QIQ", data)]


def units_on_disk(fs: SimFileSystem, base: int) -> list[Unit]:
    """Every unit slot of the segment at ``base``, read from the file (blanks included)."""
    segment = fs.open_segment(f"{ROOT}/TopicA/3/{segment_name(base)}", UNITS * UNIT_BYTES)
    return unpack_units(bytes(segment.read(0, UNITS * UNIT_BYTES)))


@pytest.mark.parametrize("reopen", ["close", "crash"])
def test_reset_writes_blanks_before_the_next_offset_and_the_queue_reopens_there(reopen):
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 11)
    queue.reset(6)
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(4)]
    assert units_on_disk(fs, 4) == [BLANK_UNIT, BLANK_UNIT, (0, 0, 0), (0, 0, 0)]
    assert (queue.min_offset, queue.max_offset, queue.flushed_offset) == (6, 6, 6)
    assert queue.get(5) is None and queue.get_range(4, 10) == [] and queue.last_unit() is None
    if reopen == "close":
        queue.close()
    else:
        fs.crash()  # reset synced: nothing to tear
    again = open_queue(fs)
    assert (again.min_offset, again.max_offset) == (6, 6)
    assert again.get_range(0, 100) == [] and again.last_unit() is None
    fill(again, 3)
    assert again.get_range(6, 100) == [unit_at(i) for i in range(6, 9)]
    assert again.get_range(5, 100) == [], "below min_offset: nothing, blanks least of all"
    again.flush()
    assert open_queue(fs).get_range(6, 100) == [unit_at(i) for i in range(6, 9)]


def test_reset_to_a_segment_start_leaves_that_segment_empty_and_to_zero_no_file():
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 5)
    queue.reset(8)
    assert fs.listdir(f"{ROOT}/TopicA/3") == [segment_name(8)]
    assert units_on_disk(fs, 8) == [(0, 0, 0)] * UNITS
    assert (open_queue(fs).min_offset, open_queue(fs).max_offset) == (8, 8)
    fill(queue, 1)
    assert queue.get(8) == unit_at(8)
    queue.reset(0)
    assert fs.listdir(f"{ROOT}/TopicA/3") == []
    assert (queue.min_offset, queue.max_offset) == (0, 0)
    fill(queue, 2)
    assert open_queue(fs).get_range(0, 10) == [unit_at(0), unit_at(1)]
    with pytest.raises(ValueError):
        queue.reset(-1)


def test_blanks_are_never_dropped_by_recovery():
    # Not even when the CommitLog is empty and confirms nothing: a blank is no message.
    fs = sim_fs()
    queue = open_queue(fs)
    queue.reset(7)
    again = open_queue(fs)
    again.recover(0, lambda q, u: False)
    assert (again.min_offset, again.max_offset) == (7, 7)
    # Behind real units, recovery drops those it must and stops at the blanks.
    fill(again, 3)
    again.recover(0, lambda q, u: False)
    assert again.max_offset == 7


def test_a_blank_ends_at_commit_offset_zero_and_is_no_last_unit():
    # The commit-order check, the dispatcher's resume check and max_commit_end all read
    # last_unit; a blank's (0, 4 GiB) would refuse a message at commit offset 0..4 GiB,
    # make the dispatcher skip the message at 0, and push the resume point 4 GiB out.
    fs = sim_fs()
    queues = ConsumeQueueSet(fs, ROOT, units_per_segment=UNITS)
    queue = queues.get_or_create("TopicA", 3)
    queue.reset(6)
    assert queue.last_unit() is None and queues.max_commit_end() == 0
    queue.put(6, 0, 10, 0)
    assert queue.last_unit() == Unit(0, 10, 0) and queues.max_commit_end() == 10


def test_blanks_count_as_older_than_every_message_for_retention_truncation_and_time():
    fs = sim_fs()
    queue = open_queue(fs)
    queue.reset(6)
    for i, commit_offset in enumerate([0, 100, 200, 300]):  # a log that starts at 0 again
        queue.put(6 + i, commit_offset, 100, 0)
    queue.flush()
    again = open_queue(fs)
    assert (again.min_offset, again.max_offset) == (6, 10)

    def store_time_of(commit_offset: int, size: int) -> int | None:
        assert size != BLANK_SIZE, "a blank was taken for a message"
        return commit_offset

    assert again.offset_for_timestamp(0, store_time_of) == 6
    assert again.offset_for_timestamp(150, store_time_of) == 8
    assert again.delete_before_commit_offset(0) == 0 and again.min_offset == 6
    again.truncate_to_commit_offset(0)
    assert (again.min_offset, again.max_offset) == (6, 6), "units go, blanks stay"
    assert units_on_disk(fs, 4)[:2] == [BLANK_UNIT, BLANK_UNIT]
    assert (open_queue(fs).min_offset, open_queue(fs).max_offset) == (6, 6)
    for i, commit_offset in enumerate([0, 100, 200, 300]):
        again.put(6 + i, commit_offset, 100, 0)
    assert again.delete_before_commit_offset(150) == 1  # segment 4: blanks, then 0 and 100
    assert (again.min_offset, again.max_offset) == (8, 10)


def test_put_refuses_the_blank_size_so_no_unit_whole_or_torn_reads_as_a_blank():
    queue = open_queue(sim_fs())
    with pytest.raises(AssertionError):
        queue.put(0, 0, BLANK_SIZE, 0)
    with pytest.raises(AssertionError):
        queue.put_many(0, [(0, BLANK_SIZE, 0)])
    # A torn write keeps a prefix of the unit and the zeros it was written over: the
    # size field is either cut (then it is not all 0xFF) or whole (then it is real).
    for real in [Unit(0, BLANK_SIZE - 1, 0), Unit(2**64 - 1, 0xFFFF_FF00, 2**64 - 1)]:
        packed = b"".join(v.to_bytes(n, "little") for v, n in zip(real, (8, 4, 8), strict=True))
        for cut in range(UNIT_BYTES + 1):
            torn = unpack_units(packed[:cut] + bytes(UNIT_BYTES - cut))[0]
            assert torn.size != BLANK_SIZE


def test_set_reset_empties_queues_not_named_and_creates_the_named_ones():
    fs = sim_fs()
    queues = ConsumeQueueSet(fs, ROOT, units_per_segment=UNITS)
    for topic, queue_id in [("A", 0), ("A", 1)]:
        fill(queues.get_or_create(topic, queue_id), 6)
    with pytest.raises(ValueError):
        queues.reset({("A", 0): 3, ("B", 70_000): 1})
    with pytest.raises(ValueError):
        queues.reset({("A", 0): 3, ("B", 0): -1})
    assert queues.get("A", 0).max_offset == 6, "a bad argument deletes nothing"
    queues.reset({("A", 0): 3, ("B", 2): 9, ("C", 0): 0})
    bounds = {(q.topic, q.queue_id): (q.min_offset, q.max_offset) for q in queues}
    assert bounds == {("A", 0): (3, 3), ("A", 1): (0, 0), ("B", 2): (9, 9)}
    again = ConsumeQueueSet(fs, ROOT, units_per_segment=UNITS)
    assert {(q.topic, q.queue_id): (q.min_offset, q.max_offset) for q in again} == bounds


# ---------------------------------------------------------------- the set


def test_set_reopens_every_queue_on_disk_and_flushes_recovers_and_retains_all():
    fs = sim_fs()
    queues = ConsumeQueueSet(fs, ROOT, units_per_segment=UNITS)
    for topic, queue_id in [("A", 0), ("A", 1), ("B", 0)]:
        fill(queues.get_or_create(topic, queue_id), 6)
    assert queues.get("C", 0) is None
    queues.flush()
    assert not any(q.dirty for q in queues)
    fs.crash()
    again = ConsumeQueueSet(fs, ROOT, units_per_segment=UNITS)
    assert sorted((q.topic, q.queue_id) for q in again) == [("A", 0), ("A", 1), ("B", 0)]
    again.recover(unit_at(5).commit_offset)
    assert all(q.max_offset == 5 for q in again)
    assert again.max_commit_end() == unit_at(4).commit_offset + MESSAGE_BYTES
    assert again.delete_before_commit_offset(unit_at(4).commit_offset) == 3
    assert all(q.min_offset == 4 for q in again)
    again.truncate_to_commit_offset(unit_at(2).commit_offset)
    assert all(q.max_offset == 4 for q in again)
    again.close()


# ---------------------------------------------------------------- property


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(1, 7)),
            st.tuples(st.just("flush"), st.just(0)),
            st.tuples(st.just("crash"), st.just(0)),
        ),
        max_size=25,
    ),
)
def test_crashes_keep_a_contiguous_prefix_of_what_was_put_at_least_to_the_last_flush(seed, ops):
    fs = sim_fs(seed)
    queue = open_queue(fs, units=3)
    flushed = 0
    for op, count in ops:
        if op == "put":
            if count % 2:
                fill(queue, count)
            else:
                start = queue.max_offset
                queue.put_many(start, [tuple(unit_at(i)) for i in range(start, start + count)])
        elif op == "flush":
            queue.flush()
            flushed = queue.max_offset
        else:
            fs.crash()
            queue = open_queue(fs, units=3)
            queue.recover(10**12, lambda q, u: u == unit_at(q))
            assert queue.max_offset >= flushed
            assert queue.get_range(0, 10**6) == [unit_at(i) for i in range(queue.max_offset)]
            flushed = queue.max_offset
    assert queue.get_range(0, 10**6) == [unit_at(i) for i in range(queue.max_offset)]


def test_interrupted_truncation_is_caught_by_unit_matches():
    for seed in range(40):
        fs = sim_fs(seed)
        queue = open_queue(fs)
        fill(queue, 7)
        queue.flush()
        fs.sync_error = OSError("EIO")  # the truncation's sync fails: its zeroing stays unsynced
        with pytest.raises(OSError):
            queue.truncate(5)
        fs.sync_error = None
        fs.crash()
        again = open_queue(fs)
        again.recover(10**12, lambda q, u: u == unit_at(q))
        assert 5 <= again.max_offset <= 7
        assert again.get_range(0, 100) == [unit_at(i) for i in range(again.max_offset)]


def test_new_files_and_directories_become_durable_with_the_units_at_flush():
    """`_roll` creates names without syncing their directories (1-5 ms each on the
    event loop); `flush` syncs them with the units, before any checkpoint covers them.
    A crash before that loses the new files, and the queue reopens as a prefix."""
    fs = sim_fs()
    queue = open_queue(fs)
    fill(queue, 6)  # two segments, the topic and queue directories: none synced
    fs.crash()
    assert not fs.exists(f"{ROOT}/TopicA"), "names no directory sync covered are gone"
    assert open_queue(fs).max_offset == 0

    queue = open_queue(fs)
    fill(queue, 6)
    queue.flush()
    fill(queue, 3)  # the roll to a third segment syncs the second one's units
    fs.crash()
    again = open_queue(fs)
    assert again.max_offset == 8 and again.segment_bases() == [0, 4]
    fill(again, 4)
    assert again.get_range(0, 100) == [unit_at(i) for i in range(12)]


def test_a_real_queue_syncs_directories_at_flush_not_when_it_rolls(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(files, "_fsync_dir", synced.append)
    root = f"{tmp_path}/consumequeue"
    fs = RealFileSystem()
    fs.makedirs(root)
    synced.clear()
    queue = ConsumeQueue(fs, root, "TopicA", 3, units_per_segment=UNITS)
    fill(queue, 6)
    assert synced == []
    queue.flush()
    assert sorted(synced) == [root, f"{root}/TopicA", f"{root}/TopicA/3"]
    synced.clear()
    fill(queue, 1)
    queue.flush()
    assert synced == [], "nothing new to sync"
    queue.close()
