"""The dispatcher's record hook: it sees every non-message record of an entry, in order,
can drop the messages that follow a record, and never sees segment-tail fillers."""

from __future__ import annotations

import random
import struct
import zlib

from storage.entry_log import EntryLog, StoredEntry
from storage.files import SimFileSystem
from storage.message_store import MessageStore, StoreConfig
from storage.record import MAGIC_BLANK, MessageRecord, encode_messages

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
