"""A Raft conflict that cuts the log where a blank filler precedes the first removed
entry: the store's checkpoint must come down to the cut, not to where that entry began,
or a torn rewrite of the bytes between is trusted on the next start (sim seed 11103 of
`mq sim broker`: the node could not open its log again)."""

from __future__ import annotations

import random
import struct
import zlib

from mq.broker.core import ReplicatedMessageStore
from mq.broker.raft_log import CommitLogStore
from raft.messages import Entry, EntryKind
from storage.entry_log import EntryLog
from storage.files import SimFileSystem
from storage.message_store import StoreConfig

SEGMENT_BYTES = 4096
CONFIG = StoreConfig(
    segment_bytes=SEGMENT_BYTES, cq_units_per_segment=64, index_slots=64, index_entries_max=256
)


def _data(fill: bytes) -> bytes:
    """Entry data as the broker writes it: whole frames (one record, not a message)."""
    return struct.pack("<III", 12 + len(fill), 0x5C0A7D81, zlib.crc32(fill)) + fill


def _open(fs: SimFileSystem) -> tuple[ReplicatedMessageStore, CommitLogStore]:
    store = ReplicatedMessageStore(fs, "/s", CONFIG)
    entries = EntryLog(fs, store.commit_log, "/s/raft-meta")
    return store, CommitLogStore(entries, before_truncate=store.truncate)


def test_a_torn_rewrite_after_a_conflict_at_a_blank_filler_is_cut_on_the_next_start() -> None:
    for seed in range(40):
        fs = SimFileSystem(random.Random(seed))
        store, log = _open(fs)
        # Entries 1-3 fill most of the first segment; 4 does not fit and starts the
        # second one, behind a blank filler.
        log.append([Entry(1, i, _data(b"x" * 1000), EntryKind.NORMAL) for i in range(1, 6)])
        entry_log = log.entry_log
        assert entry_log.offset_of(4) == SEGMENT_BYTES > entry_log.end_of(3)
        log.sync()
        store.dispatch(entry_log.end_of(3))
        store.flush(0)  # the checkpoint says everything up to entry 5 is on disk
        # A new leader's entries from index 4 replace ours: the first fills the gap the
        # filler left, the next one starts the second segment again.
        log.truncate_suffix(4)
        assert entry_log.last_index() == 3 and store.commit_log.max_offset == entry_log.end_of(3)
        log.append(
            [
                Entry(2, 4, _data(b"y" * 900), EntryKind.NORMAL),
                Entry(2, 5, _data(b"z" * 1000), EntryKind.NORMAL),
            ]
        )
        assert log.entry_log.offset_of(5) == SEGMENT_BYTES
        fs.crash()  # the rewrite was never synced: it may land torn
        store, log = _open(fs)
        assert log.last_index() in (3, 4, 5), f"seed {seed}"
        kept = log.entries(4, log.last_index() + 1, 1 << 20)
        assert [e.data for e in kept] == [_data(b"y" * 900), _data(b"z" * 1000)][: len(kept)]
