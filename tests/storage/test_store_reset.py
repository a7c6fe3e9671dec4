"""MessageStore.reset: the empty store a replica is left with after installing a snapshot.

It must hold no message, append where the leader does (`commit_offset`), number each
queue's next message as the leader does, come back the same after a reopen, and,
after a crash part way through, end in exactly the same state when called again.
"""

from __future__ import annotations

import random

import pytest

from storage.checkpoint import Checkpoint
from storage.files import Buffer, RealFileSystem, Segment, SimFileSystem
from storage.message_store import GetStatus, MessageStore, StoreConfig
from storage.record import MessageRecord

ROOT = "/s"
CONFIG = StoreConfig(
    segment_bytes=4096,
    cq_units_per_segment=8,
    index_slots=16,
    index_entries_max=64,
    retention_ms=1000,
)
SEGMENT = CONFIG.segment_bytes
QUEUE_NEXT = {("t", 0): 13, ("t", 1): 16, ("new", 3): 5, ("u", 0): 0}
"""t/0 starts after 5 blanks in segment 8, t/1 at the start of an empty segment 16,
new/3 is a queue the store never had (5 blanks in segment 0), u/0 starts over at 0."""


def rec(i: int, topic: str = "t", queue_id: int = 0) -> MessageRecord:
    return MessageRecord(
        topic=topic,
        queue_id=queue_id,
        body=b"x" * 100,
        tags=f"tag{i % 3}",
        keys=f"key{i}",
        msg_id=f"id{i:04d}",
        store_timestamp_ms=1_000 + i * 10,
        born_timestamp_ms=1_000 + i * 10,
    )


class PowerCut(Exception):
    """The simulated power went off before a file operation."""


class BudgetSegment:
    """A segment whose writes and syncs spend the file system's operation budget."""

    def __init__(self, inner: Segment, fs: CrashingFileSystem) -> None:
        self._inner = inner
        self._fs = fs

    @property
    def path(self) -> str:
        return self._inner.path

    @property
    def capacity(self) -> int:
        return self._inner.capacity

    def write(self, pos: int, data: Buffer) -> None:
        self._fs.spend()
        self._inner.write(pos, data)

    def pack_into(self, layout, pos: int, *values: int) -> None:
        self._fs.spend()
        self._inner.pack_into(layout, pos, *values)

    def read(self, pos: int, size: int) -> memoryview:
        return self._inner.read(pos, size)

    def sync(self) -> None:
        self._fs.spend()
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()


class CrashingFileSystem(SimFileSystem):
    """A SimFileSystem that raises PowerCut instead of its next operation once `budget`
    operations (segment opens, writes and syncs, removes, atomic writes) were spent."""

    def __init__(self, seed: int) -> None:
        super().__init__(random.Random(seed))
        self.budget: int | None = None

    def spend(self) -> None:
        if self.budget is None:
            return
        if self.budget == 0:
            raise PowerCut
        self.budget -= 1

    def open_segment(
        self, path: str, capacity: int, *, sparse: bool = False, durable: bool = True
    ) -> Segment:
        self.spend()
        return BudgetSegment(
            super().open_segment(path, capacity, sparse=sparse, durable=durable), self
        )

    def remove(self, path: str) -> None:
        self.spend()
        super().remove(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        self.spend()
        super().write_atomic(path, data)


def store_with_history(fs: SimFileSystem) -> MessageStore:
    """Three queues over several segments; the oldest segment deleted by retention; some
    units and index entries not yet synced, and a tail appended but not dispatched."""
    store = MessageStore(fs, ROOT, CONFIG)
    store.put_messages([rec(i, "t", i % 2) for i in range(30)])
    store.dispatch()
    store.flush(now_ms=2_000)
    store.put_messages([rec(i, "u") for i in range(30, 60)])
    store.dispatch()
    assert store.delete_expired(now_ms=10**6) > 0
    store.put_messages([rec(i, "t") for i in range(60, 64)])
    assert store.commit_log.min_offset > 0
    return store


def files(fs: SimFileSystem, path: str = ROOT) -> dict[str, bytes | None]:
    """Every directory (None) holding a file, and every file (its bytes), under `path`.
    Empty directories are left out: a ConsumeQueue created since the last checkpoint
    may or may not have its (empty) directory after a crash, which reads the same."""
    out: dict[str, bytes | None] = {}
    for name in fs.listdir(path):
        child = f"{path}/{name}"
        small = fs.read_bytes(child)
        if small is not None:
            out[child] = small
            continue
        try:
            size = fs.file_size(child)
        except FileNotFoundError:
            inside = files(fs, child)
            if inside:
                out[child] = None
                out.update(inside)
            continue
        out[child] = bytes(SimFileSystem.open_segment(fs, child, size).read(0, size))
    return out


def bounds(store: MessageStore) -> tuple[object, ...]:
    """What a reader sees: an empty queue that starts at 0 reads as no queue at all."""
    cl = store.commit_log
    queues = {
        (q.topic, q.queue_id): (q.min_offset, q.max_offset)
        for q in store.queues
        if (q.min_offset, q.max_offset) != (0, 0)
    }
    return (
        (cl.min_offset, cl.max_offset, cl.flushed_offset),
        store.dispatcher.dispatched_offset,
        queues,
        len(store.index.files()),
    )


def expected_bounds(commit_offset: int) -> tuple[object, ...]:
    return (
        (commit_offset,) * 3,
        commit_offset,
        {("t", 0): (13, 13), ("t", 1): (16, 16), ("new", 3): (5, 5)},  # u/0: empty at 0
        0,
    )


def reset_reference(commit_offset: int) -> tuple[SimFileSystem, MessageStore]:
    fs = SimFileSystem(random.Random(0))
    store = store_with_history(fs)
    store.reset(commit_offset, QUEUE_NEXT, now_ms=7_000)
    return fs, store


def check_appends_continue_where_the_leader_would(store: MessageStore, commit_offset: int):
    offsets = store.put_messages(
        [rec(100, "t", 0), rec(101, "u", 0), rec(102, "new", 3), rec(103, "t", 1), rec(104)]
    )
    assert offsets[0] == commit_offset
    dispatched = store.dispatch()
    assert [(d.topic, d.queue_id, d.queue_offset) for d in dispatched] == [
        ("t", 0, 13),
        ("u", 0, 0),
        ("new", 3, 5),
        ("t", 1, 16),
        ("t", 0, 14),
    ]
    got = store.get_messages("t", 0, 13)
    assert got.status is GetStatus.FOUND
    assert [(q, MessageRecord.decode(f).msg_id) for q, f in got.messages] == [
        (13, "id0100"),
        (14, "id0104"),
    ]
    assert [r.msg_id for r in store.query_by_key("t", "key104")] == ["id0104"]


COMMIT_OFFSETS = [16 * SEGMENT, SEGMENT, 0]
"""Past the old log, inside it, and 0 (where a blank's commit offset is a real one too)."""


@pytest.mark.parametrize("commit_offset", COMMIT_OFFSETS)
def test_reset_leaves_no_message_and_continues_at_the_leaders_offsets(commit_offset):
    fs, store = reset_reference(commit_offset)
    assert bounds(store) == expected_bounds(commit_offset)
    assert [name for name in fs.listdir(f"{ROOT}/commitlog") if name.isdigit()] == [
        f"{commit_offset:020d}"
    ]
    assert [n for n in fs.listdir(f"{ROOT}/index") if n.isdigit()] == []
    assert Checkpoint.decode(fs.read_bytes(f"{ROOT}/checkpoint")) == Checkpoint(
        commit_offset, commit_offset, 7_000
    )
    for queue_offset in (0, 12):
        got = store.get_messages("t", 0, queue_offset)
        assert (got.status, got.next_offset, got.min_offset, got.max_offset) == (
            GetStatus.OFFSET_TOO_SMALL,
            13,
            13,
            13,
        )
    assert store.get_messages("t", 0, 13).status is GetStatus.OFFSET_OVERFLOW_ONE
    assert store.get_messages("u", 0, 0).status is GetStatus.NO_MESSAGE_IN_QUEUE
    assert store.get_messages("new", 3, 4).status is GetStatus.OFFSET_TOO_SMALL
    assert store.offset_for_timestamp("t", 0, 0) == 13
    assert store.query_by_key("t", "key3") == [] and store.query_by_id("t", "id0003") is None
    assert store.delete_expired(now_ms=10**9) == 0
    check_appends_continue_where_the_leader_would(store, commit_offset)


@pytest.mark.parametrize("commit_offset", COMMIT_OFFSETS)
@pytest.mark.parametrize("how", ["close", "crash"])
def test_reset_is_durable_when_it_returns(commit_offset, how):
    for seed in range(4):
        fs = SimFileSystem(random.Random(seed))
        store = store_with_history(fs)
        store.reset(commit_offset, QUEUE_NEXT, now_ms=7_000)
        if how == "close":
            store.close(now_ms=8_000)
        else:
            fs.crash()  # tears whatever is unsynced: reset must have left nothing so
        again = MessageStore(fs, ROOT, CONFIG)
        assert bounds(again) == expected_bounds(commit_offset)
        assert again.recovery.redispatched == 0
        check_appends_continue_where_the_leader_would(again, commit_offset)


def test_reset_on_real_files_reopens_at_the_same_offsets(tmp_path):
    fs = RealFileSystem()
    store = MessageStore(fs, str(tmp_path), CONFIG)
    store.put_messages([rec(i, "t", i % 2) for i in range(30)])
    store.put_messages([rec(i, "u") for i in range(30, 40)])
    store.dispatch()
    store.reset(4 * SEGMENT, QUEUE_NEXT, now_ms=7_000)
    store.close(now_ms=8_000)
    again = MessageStore(fs, str(tmp_path), CONFIG)
    assert bounds(again) == expected_bounds(4 * SEGMENT)
    check_appends_continue_where_the_leader_would(again, 4 * SEGMENT)
    again.close(now_ms=9_000)


def test_a_crash_after_appends_that_follow_a_reset_keeps_the_queue_offsets():
    # The re-dispatch on open runs in resuming mode, which skips a message whose queue's
    # last unit is at or past it: a blank (at commit offset 0) must not count as one.
    fs = SimFileSystem(random.Random(5))
    store = store_with_history(fs)
    store.reset(0, {("t", 0): 3}, now_ms=7_000)
    store.put_messages([rec(200), rec(201, "u")])
    store.commit_log.flush()  # the frames survive; the units and the checkpoint do not
    store.dispatch()
    fs.crash(tear=False)
    again = MessageStore(fs, ROOT, CONFIG)
    assert (again.min_offset("t", 0), again.max_offset("t", 0)) == (3, 4)
    assert (again.min_offset("u", 0), again.max_offset("u", 0)) == (0, 1)
    got = again.get_messages("t", 0, 3)
    assert [(q, MessageRecord.decode(f).msg_id) for q, f in got.messages] == [(3, "id0200")]


def test_retention_after_a_reset_and_a_reopen_keeps_the_queue_offsets():
    fs, store = reset_reference(16 * SEGMENT)
    store.put_messages([rec(300 + i, "t", 0) for i in range(3)])
    store.put_messages([rec(400 + i, "u", 0) for i in range(60)])
    store.dispatch()
    store.flush(now_ms=0)
    assert store.delete_expired(now_ms=10**9) > 0
    assert (store.min_offset("t", 0), store.max_offset("t", 0)) == (16, 16)
    store.close(now_ms=10**9)
    again = MessageStore(fs, ROOT, CONFIG)
    assert (again.min_offset("t", 0), again.max_offset("t", 0)) == (16, 16)
    assert (again.min_offset("t", 1), again.max_offset("t", 1)) == (16, 16)
    again.put_messages([rec(500, "t", 0)])
    assert [d.queue_offset for d in again.dispatch()] == [16]


@pytest.mark.parametrize(
    "commit_offset, queue_next",
    [
        (SEGMENT + 8, {("t", 0): 1}),
        (-SEGMENT, {("t", 0): 1}),
        (SEGMENT, {("t", 0): -1}),
        (SEGMENT, {("a/b", 0): 1}),
        (SEGMENT, {("t", 70_000): 1}),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_deleted(commit_offset, queue_next):
    fs = SimFileSystem(random.Random(0))
    store = store_with_history(fs)
    before = files(fs)
    with pytest.raises(ValueError):
        store.reset(commit_offset, queue_next, now_ms=7_000)
    assert files(fs) == before
    assert store.get_messages("u", 0, 29).status is GetStatus.FOUND


@pytest.mark.parametrize("commit_offset", COMMIT_OFFSETS)
def test_a_crash_anywhere_in_reset_then_reset_again_ends_in_the_same_state(commit_offset):
    want_fs, want = reset_reference(commit_offset)
    want_files = files(want_fs)
    ops = 0  # the power goes off before the reset's operation number `ops`
    while True:
        for seed in range(3):  # which unsynced writes land, and where one is torn
            fs = CrashingFileSystem(seed)
            store = store_with_history(fs)
            fs.budget = ops
            try:
                store.reset(commit_offset, QUEUE_NEXT, now_ms=7_000)
            except PowerCut:
                pass
            else:
                assert ops > 10, "reset takes more operations than that"
                return  # a crash before each of them was tried
            fs.budget = None
            fs.crash()
            again = MessageStore(fs, ROOT, CONFIG)  # whatever was left must open
            again.reset(commit_offset, QUEUE_NEXT, now_ms=7_000)
            assert files(fs) == want_files, f"after a crash before operation {ops}"
            assert bounds(again) == bounds(want)
            fs.crash()
            assert files(fs) == want_files, "durable when reset returned"
            reopened = MessageStore(fs, ROOT, CONFIG)
            assert bounds(reopened) == expected_bounds(commit_offset)
            if seed == 0:
                check_appends_continue_where_the_leader_would(reopened, commit_offset)
        ops += 1


def test_an_error_anywhere_in_reset_then_reset_again_on_the_same_store_ends_the_same():
    # As after a full disk: no crash, the caller retries on the objects it has.
    want_fs, want = reset_reference(SEGMENT)
    ops = 0
    while True:
        fs = CrashingFileSystem(0)
        store = store_with_history(fs)
        fs.budget = ops
        try:
            store.reset(SEGMENT, QUEUE_NEXT, now_ms=7_000)
        except PowerCut:
            pass
        else:
            return
        fs.budget = None
        store.reset(SEGMENT, QUEUE_NEXT, now_ms=7_000)
        assert files(fs) == files(want_fs), f"after an error in operation {ops}"
        assert bounds(store) == bounds(want)
        check_appends_continue_where_the_leader_would(store, SEGMENT)
        ops += 1
