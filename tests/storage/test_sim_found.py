"""Storage bugs `mq sim broker` found (docs/simulations.md), each reproduced in a few lines."""

from __future__ import annotations

import random

from storage.commit_log import CommitLog
from storage.entry_log import EntryLog, StoredEntry
from storage.files import SimFileSystem
from storage.message_store import GetStatus, MessageStore, StoreConfig
from storage.record import FRAME_HEADER_BYTES, MessageRecord, tag_hash

ENTRY_FRAME_OVERHEAD = FRAME_HEADER_BYTES + 17  # + term u64, index u64, kind u8


class _TearAConsumeQueueUnit:
    """A crash that lands no unsynced write whole and cuts each 20-byte write (a
    ConsumeQueue unit) after 15 bytes: commit offset and size land, the tag hash half."""

    def random(self) -> float:
        return 0.0

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 15 if stop == 21 else 0


def test_a_torn_consume_queue_unit_is_not_kept_with_a_wrong_tag_hash() -> None:
    fs = SimFileSystem(_TearAConsumeQueueUnit())  # type: ignore[arg-type]
    cfg = StoreConfig(segment_bytes=4096, cq_units_per_segment=64, index_slots=16)
    store = MessageStore(fs, "/s", cfg)
    store.put_messages([MessageRecord("T", b"x", 0, tags="a", msg_id="m0")])
    store.commit_log.flush()
    store.dispatch()  # the unit is written, not synced
    fs.crash()
    reopened = MessageStore(fs, "/s", cfg)
    got = reopened.get_messages("T", 0, 0, tag_hashes=frozenset({tag_hash("a")}))
    assert got.status is GetStatus.FOUND
    assert [MessageRecord.decode(frame).msg_id for _, frame in got.messages] == ["m0"]


def _entry_log(entries: list[StoredEntry]) -> EntryLog:
    fs = SimFileSystem(random.Random(0))
    log = EntryLog(fs, CommitLog(fs, "/c", 1024), "/meta")
    log.append(entries)
    return log


def test_replicas_with_the_same_entries_have_the_same_commit_log_layout() -> None:
    common = [StoredEntry(1, 1, 0, bytes(900))]
    # A follower that had a big uncommitted entry 2 of term 1 (placed after a filler)...
    follower = _entry_log([*common, StoredEntry(1, 2, 0, bytes(500))])
    follower.truncate_suffix(2)
    follower.append([StoredEntry(2, 2, 0, bytes(10))])
    # ... and the leader, which only ever had entry 2 of term 2.
    leader = _entry_log([*common, StoredEntry(2, 2, 0, bytes(10))])
    assert follower.offset_of(2) == leader.offset_of(2)


def test_truncating_every_entry_restarts_where_the_first_one_would_go() -> None:
    follower = _entry_log([StoredEntry(1, 1, 0, bytes(900))])
    follower.truncate_suffix(1)
    follower.append([StoredEntry(2, 1, 0, bytes(10))])
    assert follower.offset_of(1) == 0


def test_truncating_after_an_entry_that_ends_in_a_short_segment_tail() -> None:
    # Entry 1 ends 4 bytes before the segment end: too little for any frame, so entry
    # 2 starts in the next segment; truncating entry 2 away must still work.
    first = StoredEntry(1, 1, 0, bytes(1024 - 4 - ENTRY_FRAME_OVERHEAD))
    log = _entry_log([first, StoredEntry(1, 2, 0, bytes(10))])
    assert log.offset_of(2) == 1024
    log.truncate_suffix(2)
    log.append([StoredEntry(2, 2, 0, bytes(20))])
    assert log.offset_of(2) == 1024
    assert [e.data for e in log.entries(1, 3, 1 << 20)] == [first.data, bytes(20)]


def test_recovery_drops_the_filler_of_an_entry_that_did_not_survive() -> None:
    """An entry that did not fit a segment's tail went to the next segment, behind a
    blank filler; a crash tore it. Recovery must end the log where it was before that
    append (the filler goes too), as on a replica that never had the entry; found by
    `mq sim broker` (seed 68)."""
    fs = SimFileSystem(random.Random(0))
    log = EntryLog(fs, CommitLog(fs, "/c", 1024), "/meta")
    log.append([StoredEntry(1, 1, 0, bytes(900))])
    end_of_first = log.end_of(1)
    log.append([StoredEntry(1, 2, 0, bytes(500))])
    assert log.offset_of(2) == 1024
    log.sync()
    fs.flip_byte("/c/00000000000000001024", 100)  # entry 2 is torn: its CRC fails
    fs.crash()
    commit_log = CommitLog(fs, "/c", 1024)
    commit_log.recover(0)
    assert commit_log.max_offset == end_of_first
    reopened = EntryLog(fs, commit_log, "/meta")
    assert reopened.last_index() == 1
    reopened.append([StoredEntry(2, 2, 0, bytes(10))])
    assert reopened.offset_of(2) == end_of_first  # where a replica without it puts it
