"""The dispatcher's record hook: it sees every non-message record of an entry, in order,
can drop the messages that follow a record, and never sees segment-tail fillers."""

from __future__ import annotations

import random
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.entry_log import EntryLog, StoredEntry
from storage.files import SimFileSystem
from storage.message_store import MessageStore, StoreConfig
from storage.record import MAGIC_BLANK, MessageRecord, encode_messages, tag_hash

MAGIC_RECORD = 0x5C0A7D81


def record_frame(payload: bytes) -> bytes:
    return struct.pack("<III", 12 + len(payload), MAGIC_RECORD, zlib.crc32(payload)) + payload


def entry_data(skip: bytes, entry: int, bodies: list[bytes]) -> bytes:
    records = [MessageRecord("t", b, msg_id=f"id{entry}-{n}") for n, b in enumerate(bodies)]
    buf, _ = encode_messages(records)
    return record_frame(skip) + bytes(buf)


def test_a_hook_returning_false_drops_the_messages_after_its_record() -> None:
    fs = SimFileSystem(random.Random(1))
    seen: list[tuple[int, bytes]] = []

    def hook(magic: int, offset: int, frame: memoryview) -> bool | None:
        seen.append((magic, bytes(frame[12:])))
        return False if bytes(frame[12:]) == b"skip" else None

    config = StoreConfig(
        segment_bytes=4096, cq_units_per_segment=64, index_slots=64, index_entries_max=256
    )
    store = MessageStore(fs, "/s", config, on_record=hook)
    entries = EntryLog(fs, store.commit_log, "/s/meta")
    datas = [
        entry_data(b"keep" if i % 2 else b"skip", i, [bytes([i]) * 300] * 2) for i in range(12)
    ]
    entries.append([StoredEntry(1, i + 1, 0, d) for i, d in enumerate(datas)])
    assert len(store.commit_log.segments()) > 1, "entries span segments: blank fillers exist"
    dispatched = store.dispatch(entries.end_of(12))
    assert [m for m, _ in seen] == [MAGIC_RECORD] * 12, "fillers are not records"
    assert MAGIC_BLANK not in [m for m, _ in seen]
    assert [d.msg_id for d in dispatched] == [
        f"id{i}-{n}" for i in range(1, 12, 2) for n in range(2)
    ]
    assert store.max_offset("t", 0) == 12


_words = st.text(st.characters(codec="utf-8", exclude_characters=" \x00"), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["t", "orders", "a-b_c"]),
            st.integers(0, 3),
            st.sampled_from(["", "TagA", "Ünïcode tag", "a b"]),
            st.lists(_words, max_size=3),
            st.text("0123456789ABCDEF", max_size=24),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_dispatch_indexes_every_key_and_id_and_stores_each_tag_hash(
    messages: list[tuple[str, int, str, list[str], str]],
) -> None:
    """The dispatcher reads a frame's fields as bytes; what it indexes and stores must be
    what the decoded strings say: index keys "topic#key" (and "topic#msg_id"), and
    tag_hash(tags) in the ConsumeQueue unit."""
    fs = SimFileSystem(random.Random(1))
    config = StoreConfig(
        segment_bytes=1 << 16, cq_units_per_segment=64, index_slots=64, index_entries_max=512
    )
    store = MessageStore(fs, "/s", config)
    records = [
        MessageRecord(topic, b"x", queue_id=q, tags=tags, keys=" ".join(keys), msg_id=msg_id)
        for topic, q, tags, keys, msg_id in messages
    ]
    offsets = store.put_messages(records)
    dispatched = store.dispatch()
    assert [d.commit_offset for d in dispatched] == offsets
    for record, offset, d in zip(records, offsets, dispatched, strict=True):
        assert (d.topic, d.queue_id, d.msg_id) == (record.topic, record.queue_id, record.msg_id)
        queue = store.queues.get(record.topic, record.queue_id)
        assert queue is not None
        unit = queue.get(d.queue_offset)
        assert unit is not None and unit.commit_offset == offset
        assert unit.tag_hash == tag_hash(record.tags)
        for key in record.keys.split(" "):
            if key:
                assert offset in store.index.query(f"{record.topic}#{key}", 0, 2**63 - 1, 64)
        if record.msg_id:
            assert offset in store.index.query(f"{record.topic}#{record.msg_id}", 0, 2**63 - 1, 64)
