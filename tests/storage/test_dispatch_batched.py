"""Dispatching a producer's batch at once (one IndexFile write and one ConsumeQueue write
per stretch of one queue) must build byte-for-byte what dispatching its messages one by
one builds, including when a full disk interrupts it part way and it is retried."""

from __future__ import annotations

import random
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.dispatcher import Dispatched
from storage.entry_log import EntryLog, StoredEntry, inner_frames
from storage.errors import DiskFullError
from storage.files import SimFileSystem
from storage.index_file import IndexService, index_key, key_hash
from storage.message_store import MessageStore, StoreConfig
from storage.record import (
    MAGIC_MESSAGE,
    MessageRecord,
    decode_message_header,
    encode_messages,
    tag_hash,
)

MAGIC_RECORD = 0x5C0A7D81
CONFIG = StoreConfig(
    segment_bytes=1 << 16, cq_units_per_segment=4, index_slots=16, index_entries_max=12
)

_message = st.tuples(
    st.sampled_from(["t", "orders"]),
    st.integers(0, 2),
    st.sampled_from(["", "TagA", "a b"]),
    st.lists(st.sampled_from(["k1", "k2", "ключ", "k3"]), max_size=3),
    st.sampled_from(["", "ID1", "ID2"]),
    st.integers(0, 5),
)
# An entry is frames in order: a record (True = "skip the messages after me") or a message.
_entry = st.lists(st.one_of(st.booleans(), _message), min_size=1, max_size=10)


def _record(skip: bool) -> bytes:
    payload = b"skip" if skip else b"keep"
    return struct.pack("<III", 12 + len(payload), MAGIC_RECORD, zlib.crc32(payload)) + payload


def _entry_data(frames: list[bool | tuple[str, int, str, list[str], str, int]]) -> bytes:
    out = bytearray()
    for frame in frames:
        if isinstance(frame, bool):
            out += _record(frame)
        else:
            topic, queue, tags, keys, msg_id, store_ms = frame
            record = MessageRecord(
                topic,
                b"body",
                queue_id=queue,
                tags=tags,
                keys=" ".join(keys),
                msg_id=msg_id,
                store_timestamp_ms=store_ms,
            )
            out += encode_messages([record])[0]
    return bytes(out)


def _hook(magic: int, offset: int, frame: memoryview) -> bool | None:
    return False if bytes(frame[12:]) == b"skip" else None


def _store(fs: SimFileSystem, entries: list[bytes]) -> tuple[MessageStore, int]:
    store = MessageStore(fs, "/s", CONFIG, on_record=_hook)
    log = EntryLog(fs, store.commit_log, "/s/meta")
    log.append([StoredEntry(1, i + 1, 0, data) for i, data in enumerate(entries)])
    return store, log.end_of(len(entries))


def _one_by_one(store: MessageStore, upto: int) -> list[Dispatched]:
    """The reference, written apart from the dispatcher: each message indexed alone
    (`ensure_room` for its unique id and keys, then one `put_hash` each, under
    "topic#key") and queued alone (`ConsumeQueue.put`), as dispatch once did."""
    out: list[Dispatched] = []
    for offset, entry in store.commit_log.iter_frames(0, upto):
        skipping = False
        for pos, magic, frame in inner_frames(entry):
            if magic != MAGIC_MESSAGE:
                skipping = _hook(magic, offset + pos, frame) is False
                continue
            if skipping:
                continue
            at, h = offset + pos, decode_message_header(frame)
            keys = ([h.msg_id] if h.msg_id else []) + [k for k in h.keys.split(" ") if k]
            if keys:
                store.index.ensure_room(len(keys), at, h.store_timestamp_ms)
            for key in keys:
                store.index.put_hash(key_hash(index_key(h.topic, key)), at, h.store_timestamp_ms)
            queue = store.queues.get_or_create(h.topic, h.queue_id)
            queue_offset = queue.max_offset
            queue.put(queue_offset, at, len(frame), tag_hash(h.tags))
            out.append(Dispatched(at, len(frame), h.topic, h.queue_id, queue_offset, h.msg_id))
    return out


def _derived_files(fs: SimFileSystem) -> dict[str, bytes]:
    """Every ConsumeQueue and IndexFile byte, by path."""
    out: dict[str, bytes] = {}

    def walk(path: str) -> None:
        for name in fs.listdir(path):
            child = f"{path}/{name}"
            if fs.listdir(child):
                walk(child)
            elif fs.exists(child) and fs.read_bytes(child) is None:
                size = fs.file_size(child)
                out[child] = bytes(fs.open_segment(child, size).read(0, size))

    walk("/s/consumequeue")
    walk("/s/index")
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(_entry, min_size=1, max_size=6), st.integers(0, 2**32))
def test_batched_dispatch_builds_what_one_by_one_builds_even_across_full_disks(
    entries: list[list[bool | tuple[str, int, str, list[str], str, int]]], seed: int
) -> None:
    datas = [_entry_data(frames) for frames in entries]

    one_by_one_fs = SimFileSystem(random.Random(0))
    one_by_one, upto = _store(one_by_one_fs, datas)
    expected = _one_by_one(one_by_one, upto)

    rng = random.Random(seed)
    fs = SimFileSystem(random.Random(0))
    store, _ = _store(fs, datas)
    fs.capacity_bytes = fs.used_bytes() + rng.randrange(0, 4000)
    out: list = []
    failures = 0
    while True:
        try:
            store.dispatcher.dispatch(upto, out=out)
            break
        except DiskFullError:
            failures += 1
            assert failures < 1000
            fs.capacity_bytes += rng.randrange(1, 600)

    assert out == expected
    assert _derived_files(fs) == _derived_files(one_by_one_fs)
    assert fs.listdir("/s/index") == one_by_one_fs.listdir("/s/index")


def _index_bytes(fs: SimFileSystem) -> dict[str, bytes]:
    return {
        name: bytes(fs.open_segment(f"/s/index/{name}", size).read(0, size))
        for name in fs.listdir("/s/index")
        for size in [fs.file_size(f"/s/index/{name}")]
    }


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), max_size=14), max_size=6),
    st.integers(1, 6),
)
def test_put_messages_writes_what_indexing_one_message_at_a_time_writes(
    batches: list[list[tuple[int, int]]], time_step: int
) -> None:
    """Each batch is messages of (key count, hash seed). The reference indexes a message
    as the dispatcher used to: ensure_room for its entries, then one put_hash each; a
    message with more keys than a file holds spans files. Store times jump by 2**32 ms
    between batches now and then, so some messages need a roll for their time."""
    one_fs, many_fs = SimFileSystem(random.Random(0)), SimFileSystem(random.Random(0))
    one = IndexService(one_fs, "/s", slot_count=3, entry_count_max=5)
    many = IndexService(many_fs, "/s", slot_count=3, entry_count_max=5)
    offset = 0
    for b, batch in enumerate(batches):
        store_ms = b * time_step * 2**31
        entries: list[tuple[int, int, int]] = []
        ends: list[int] = []
        for keys, seed in batch:
            offset += 10
            mine = [(seed * 7 + k, offset, store_ms) for k in range(keys)]
            if mine:
                one.ensure_room(len(mine), offset, store_ms)
            for entry in mine:
                one.put_hash(*entry)
            entries += mine
            ends.append(len(entries))
        many.put_messages(entries, ends)
    assert _index_bytes(many_fs) == _index_bytes(one_fs)
    assert many.last_commit_offset == one.last_commit_offset


def _query(index: IndexService, hash_: int) -> list[int]:
    out: list[int] = []
    for f in reversed(index.files()):
        f.query(hash_, 0, 2**62, 64, out)
    return out


def test_put_messages_chains_as_single_puts_and_rolls_before_a_message_not_in_it() -> None:
    """put_messages chains slots exactly as single puts do, lands each message's entries
    in one file (rolling before a message the newest file cannot take), and a full disk
    on that roll indexes nothing of that message."""
    entries = [(zlib.crc32(bytes([i % 5])), 100 + i, 7) for i in range(9)]
    singles = IndexService(SimFileSystem(random.Random(0)), "/s", slot_count=4, entry_count_max=12)
    many_fs = SimFileSystem(random.Random(0))
    many = IndexService(many_fs, "/s", slot_count=4, entry_count_max=12)
    for e in entries[:5]:
        singles.put_hash(*e)
    many.put_messages(entries[:5], [2, 3, 5])
    for e in entries[5:]:
        singles.put_hash(*e)
    many.put_messages(entries[5:], [1, 4])
    assert len(many.files()) == 1
    assert [_query(many, h) for h, _, _ in entries] == [_query(singles, h) for h, _, _ in entries]

    later = [(zlib.crc32(b"x"), 200 + i, 9) for i in range(4)]  # 9 + 4 > 12: rolls first
    many_fs.capacity_bytes = many_fs.used_bytes()
    try:
        many.put_messages(later, [4])
        raise AssertionError("the roll needs room")
    except DiskFullError:
        pass
    assert len(many.files()) == 1 and many.last_commit_offset == 108
    many_fs.capacity_bytes = None
    many.put_messages(later, [4])
    assert [f.entry_count for f in many.files()] == [9, 4]
    assert _query(many, zlib.crc32(b"x")) == [203, 202, 201, 200]
