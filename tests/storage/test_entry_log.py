"""The Raft log kept in the CommitLog: indexing, truncation, durability, reopen."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.commit_log import CommitLog
from storage.entry_index import decode_chunk, encode_chunk
from storage.entry_log import EntryLog, EntryLogError, StoredEntry
from storage.errors import CorruptRecordError, DiskFullError, LogLayoutError
from storage.files import SimFileSystem


def open_log(fs: SimFileSystem, **index: Any) -> EntryLog:
    """The log on `fs`, recovered as a start does; `index`: EntryLog's index options."""
    log = CommitLog(fs, "/n/commitlog", 4096)
    if not log.recovered:
        log.recover(log.min_offset)
    return EntryLog(fs, log, "/n/raft-meta", **index)


def entries(first: int, count: int, term: int) -> list[StoredEntry]:
    return [
        StoredEntry(term, i, 0, f"entry-{i}".encode() * 20) for i in range(first, first + count)
    ]


def test_append_read_back_across_segments_and_bound_by_bytes():
    log = open_log(SimFileSystem(random.Random(1)))
    log.append(entries(1, 60, term=1))
    assert (log.first_index(), log.last_index()) == (1, 60)
    assert [e.index for e in log.entries(1, 61, 1 << 20)] == list(range(1, 61))
    assert log.entries(5, 6, 1 << 20)[0] == entries(5, 1, term=1)[0]
    few = log.entries(1, 61, 600)
    assert 1 <= len(few) < 60 and log.span_end(1, 61, 600) == 1 + len(few)
    assert log.entries(7, 8, 0)[0].index == 7, "at least one entry, whatever the bound"
    assert log.term_at(0) == 0 and log.term_at(60) == 1 and log.term_at(61) is None


def test_append_must_be_contiguous():
    log = open_log(SimFileSystem(random.Random(1)))
    log.append(entries(1, 3, term=1))
    with pytest.raises(EntryLogError):
        log.append(entries(5, 1, term=1))


def test_only_synced_entries_survive_a_crash_and_reopen_rebuilds_the_index():
    fs = SimFileSystem(random.Random(3))
    log = open_log(fs)
    log.append(entries(1, 10, term=1))
    log.sync()
    assert log.durable_index() == 10
    log.append(entries(11, 10, term=2))
    assert log.durable_index() == 10
    fs.crash()
    again = open_log(fs)
    assert 10 <= again.last_index() <= 20
    assert [e.index for e in again.entries(1, 11, 1 << 20)] == list(range(1, 11))


def test_truncated_suffix_never_comes_back():
    fs = SimFileSystem(random.Random(4))
    log = open_log(fs)
    log.append(entries(1, 20, term=1))
    log.sync()
    log.truncate_suffix(8)
    log.append(entries(8, 2, term=3))
    log.sync()
    fs.crash()
    again = open_log(fs)
    assert again.last_index() == 9
    assert [again.term_at(i) for i in (7, 8, 9)] == [1, 3, 3]


def test_compaction_and_reset_persist_the_snapshot_boundary():
    fs = SimFileSystem(random.Random(5))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    log.compact(12, 2)
    assert (log.first_index(), log.term_at(12), log.term_at(11)) == (13, 2, None)
    again = open_log(fs)
    assert (again.first_index(), again.last_index()) == (13, 30)
    again.reset(100, 7)
    assert (again.first_index(), again.last_index(), again.term_at(100)) == (101, 100, 7)
    again.append(entries(101, 2, term=7))
    again.sync()
    third = open_log(fs)
    assert (third.first_index(), third.last_index()) == (101, 102)


def test_a_compaction_the_disk_has_no_room_for_changes_nothing():
    # Retention compacts the log before it deletes a segment; on a full disk the new
    # start cannot be written, and the log must stay as it was (it used to forget the
    # entries in memory first, while the file still named the old start).
    fs = SimFileSystem(random.Random(6))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    fs.capacity_bytes = fs.used_bytes()
    with pytest.raises(DiskFullError):
        log.compact(12, 2)
    assert (log.first_index(), log.last_index(), log.term_at(12)) == (1, 30, 2)
    assert [e.index for e in log.entries(1, 31, 1 << 20)] == list(range(1, 31))
    fs.capacity_bytes = None
    log.compact(12, 2)
    assert open_log(fs).first_index() == 13


def test_a_damaged_start_is_refused_not_read_as_an_uncompacted_log():
    # Read as "no compaction", a compacted log's first entry would be out of sequence
    # and the scan would cut every entry.
    fs = SimFileSystem(random.Random(9))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    log.compact(12, 2)
    meta = fs.read_bytes("/n/raft-meta")
    assert meta is not None
    fs.flip_byte("/n/raft-meta", 3)
    with pytest.raises(LogLayoutError, match="damaged"):
        open_log(fs)
    fs.write_atomic("/n/raft-meta", meta[:24])  # the format before the CRC still reads
    assert open_log(fs).first_index() == 13


def open_indexed(fs: SimFileSystem, chunk_entries: int = 4, cache: int = 1) -> EntryLog:
    return open_log(fs, index_dir="/n/raft-index", chunk_entries=chunk_entries, chunk_cache=cache)


def scanned(log: EntryLog, fs: SimFileSystem) -> EntryLog:
    """An index of the same CommitLog built by scanning it all (no chunks)."""
    return EntryLog(fs, log._log, "/n/raft-meta")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "truncate", "compact", "seal", "reopen", "crash", "damage"]),
            st.integers(1, 9),  # how many to append, or where to cut / compact / seal
            st.integers(0, 2),  # how much the term grows before an append
        ),
        max_size=30,
    ),
    st.integers(0, 1000),
)
def test_a_log_opened_from_sealed_chunks_is_the_log_a_full_scan_finds(
    ops: list[tuple[str, int, int]], seed: int
) -> None:
    """Appends, truncations above what was sealed (Raft never removes a committed
    entry), compactions, seals, clean reopens and crashes, against a model holding
    every entry's term: term_at (kept as runs of equal terms), the entries read back
    and where each one ends; and after every open, the log that loaded the chunks
    holds the entries a scan of the whole CommitLog finds, at the same offsets."""
    fs = SimFileSystem(random.Random(seed))
    log = open_indexed(fs)
    model: dict[int, int] = {}
    base, base_term, term, sealed = 0, 0, 1, 0
    damaged = False
    for op, n, grow in ops:
        last = base + len(model)
        if op == "append":
            term += grow
            log.append(entries(last + 1, n, term))
            model.update((i, term) for i in range(last + 1, last + 1 + n))
        elif op == "truncate" and model:
            cut = max(sealed + 1, base + 1 + (n * len(model)) // 10)
            if cut <= last:
                log.truncate_suffix(cut)
                model = {i: t for i, t in model.items() if i < cut}
        elif op == "compact" and model:
            upto = min(base + (n * len(model)) // 9, log.durable_index())
            if upto > base:
                base_term = model[upto]
                log.compact(upto, base_term)
                model = {i: t for i, t in model.items() if i > upto}
                base = upto
        elif op == "seal":
            log.sync()
            upto = base + (n * len(model)) // 9
            log.seal(upto)
            sealed = max(sealed, upto)
        elif op == "damage":
            # A chunk file damaged while the log runs: a read through it walks its
            # entries again (and rewrites it); an open deletes it and the ones after.
            names = fs.listdir("/n/raft-index")
            if names:
                fs.write_atomic(f"/n/raft-index/{names[n % len(names)]}", b"damaged")
                log._cache.clear()
                damaged = True
        elif op in ("reopen", "crash"):
            if op == "reopen":
                log.sync()
            durable = log.durable_index()
            if op == "crash":
                fs.crash()
            chunks = fs.listdir("/n/raft-index")
            log = open_indexed(fs)
            if not damaged:
                assert fs.listdir("/n/raft-index") == chunks, "every chunk checked out"
            damaged = False
            assert durable <= log.last_index() <= last
            model = {i: t for i, t in model.items() if i <= log.last_index()}
            full = scanned(log, fs)
            assert (full.first_index(), full.last_index()) == (base + 1, base + len(model))
            for i in range(base + 1, base + len(model) + 1):
                assert log.offset_of(i) == full.offset_of(i), (i, ops)
                assert log.end_of(i) == full.end_of(i), (i, ops)
                assert log.term_at(i) == full.term_at(i), (i, ops)
        assert (log.first_index(), log.last_index()) == (base + 1, base + len(model))
        assert log.term_at(base) == (base_term if base else 0)
        for i in range(base + 1, base + len(model) + 2):
            assert log.term_at(i) == model.get(i), (i, ops)
        last = base + len(model)
        got = log.entries(base + 1, last + 1, 1 << 30) if model else []
        assert [(e.index, e.term) for e in got] == sorted(model.items())
        assert all(e.data == entries(e.index, 1, e.term)[0].data for e in got)
        for i in range(base + 1, last):  # an entry ends where the next begins, or a filler
            assert log.end_of(i) <= log.offset_of(i + 1) < log.end_of(i) + 4096
        if model:
            assert log.span_end(base + 1, last + 1, 1) == base + 2, "at least one entry"
        # Memory holds only what no chunk holds.
        assert log._chunks is not None
        assert log._mem_first - 1 == max(base, log._chunks.sealed_through()), ops


def _sealed_log(fs: SimFileSystem) -> EntryLog:
    log = open_indexed(fs)
    log.append(entries(1, 10, term=1))
    log.append(entries(11, 10, term=2))
    log.sync()
    assert log.seal(20) == 5
    return log


def test_an_open_reads_only_the_entries_after_the_last_chunk() -> None:
    """Entries inside a sealed chunk are not walked (their CRC is not even read): a
    byte flipped in the middle of one does not stop the open, where a full scan
    refuses the log."""
    fs = SimFileSystem(random.Random(5))
    log = _sealed_log(fs)
    log.append(entries(21, 2, term=2))
    log.sync()
    middle = log.offset_of(6) + 40
    segment = fs.open_segment(f"/n/commitlog/{(middle // 4096) * 4096:020d}", 4096)
    segment.write(middle % 4096, b"\xff")
    segment.sync()
    commit_log = CommitLog(fs, "/n/commitlog", 4096)
    commit_log.recover(log.end_of(20))  # the store's checkpoint: frames before it trusted
    again = EntryLog(fs, commit_log, "/n/raft-meta", index_dir="/n/raft-index", chunk_entries=4)
    assert again.last_index() == 22 and again.term_at(22) == 2
    assert [e.index for e in again.entries(21, 23, 1 << 20)] == [21, 22]
    with pytest.raises(CorruptRecordError):
        scanned(again, fs)  # a full scan checks every entry's CRC, and meets the damage


def test_a_chunk_that_does_not_match_the_log_is_deleted_and_its_entries_scanned() -> None:
    fs = SimFileSystem(random.Random(6))
    log = _sealed_log(fs)
    offsets = [log.offset_of(i) for i in range(1, 21)]
    names = fs.listdir("/n/raft-index")
    assert names == [f"{first:020d}" for first in (1, 5, 9, 13, 17)]
    fs.write_atomic(f"/n/raft-index/{9:020d}", b"not a chunk")
    # A chunk whose entries are not in the log (entries 21..24, which it never had).
    chunk = decode_chunk(fs.read_bytes(f"/n/raft-index/{17:020d}") or b"")
    assert chunk is not None
    chunk.first = 21
    chunk.run_starts[0] = 21
    fs.write_atomic(f"/n/raft-index/{21:020d}", encode_chunk(chunk))
    again = open_indexed(fs)
    assert (again.last_index(), again.term_at(20), again.term_at(21)) == (20, 2, None)
    assert [again.offset_of(i) for i in range(1, 21)] == offsets
    # The damaged chunk goes, and every one after it: their entries are in memory again
    # until the next seal writes them.
    assert fs.listdir("/n/raft-index") == [f"{first:020d}" for first in (1, 5)]
    assert again.seal(20) == 3
    assert fs.listdir("/n/raft-index") == [f"{first:020d}" for first in (1, 5, 9, 13, 17)]


def test_compaction_and_a_reset_delete_the_chunks_they_make_stale() -> None:
    fs = SimFileSystem(random.Random(7))
    log = _sealed_log(fs)
    log.compact(10, 1)
    assert fs.listdir("/n/raft-index") == [f"{first:020d}" for first in (9, 13, 17)]
    again = open_indexed(fs)
    assert (again.first_index(), again.last_index()) == (11, 20)
    assert again.offset_of(11) == log.offset_of(11)
    again.reset(30, 3)
    assert fs.listdir("/n/raft-index") == []
    third = open_indexed(fs)
    assert (third.first_index(), third.last_index()) == (31, 30)


def test_a_full_disk_stops_sealing_and_the_next_seal_catches_up() -> None:
    fs = SimFileSystem(random.Random(8))
    log = open_indexed(fs)
    log.append(entries(1, 12, term=1))
    log.sync()
    fs.capacity_bytes = fs.used_bytes()
    assert log.seal(12) == 0
    fs.capacity_bytes = None
    assert log.seal(12) == 3


def test_memory_holds_only_the_unsealed_entries_and_reads_go_through_the_chunks() -> None:
    fs = SimFileSystem(random.Random(9))
    log = _sealed_log(fs)
    assert len(log._offsets) == 0, "all 20 entries are sealed"
    chunk5 = fs.read_bytes(f"/n/raft-index/{5:020d}")
    fs.write_atomic(f"/n/raft-index/{5:020d}", b"damaged while the log runs")
    log._cache.clear()
    got = log.entries(1, 21, 1 << 20)
    assert [(e.index, e.term) for e in got] == [(i, 1 if i <= 10 else 2) for i in range(1, 21)]
    assert fs.read_bytes(f"/n/raft-index/{5:020d}") == chunk5, "walked again and rewritten"
    assert log.span_end(3, 21, 500) == 3 + len(log.entries(3, 21, 500))


def test_a_truncation_into_sealed_entries_brings_them_back_first() -> None:
    """Raft never truncates committed entries, so this is a caller's bug; the log
    still stays consistent: the chunks that reach the cut go, their entries before it
    come back into memory."""
    fs = SimFileSystem(random.Random(10))
    log = _sealed_log(fs)
    log.truncate_suffix(11)
    assert fs.listdir("/n/raft-index") == [f"{first:020d}" for first in (1, 5)]
    assert (log.last_index(), log.term_at(10), log.term_at(11)) == (10, 1, None)
    assert [e.index for e in log.entries(1, 11, 1 << 20)] == list(range(1, 11))
    log.append(entries(11, 3, term=3))
    log.sync()
    again = open_indexed(fs)
    assert [(e.index, e.term) for e in again.entries(1, 14, 1 << 20)] == [
        *((i, 1) for i in range(1, 11)),
        *((i, 3) for i in range(11, 14)),
    ]


def test_a_node_whose_disk_is_full_opens_without_an_index_directory() -> None:
    """The index directory is made with the first chunk: an open (a start on a full
    disk, after an upgrade) must not need to create anything."""

    class NoDirs(SimFileSystem):
        def makedirs(self, path: str, *, durable: bool = True) -> list[str]:
            if "raft-index" in path:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return super().makedirs(path, durable=durable)

    fs = NoDirs(random.Random(11))
    log = open_indexed(fs)
    log.append(entries(1, 8, term=1))
    log.sync()
    assert log.seal(8) == 0, "a full disk stops sealing quietly"
    assert len(log._offsets) == 8 and open_indexed(fs).last_index() == 8


def test_a_damaged_entry_is_refused_when_read_not_sent_or_applied():
    """Bit rot in the middle of the log (under a sealed chunk, a start does not re-read
    it) must stop the node when the entry is read, not reach a follower or be applied."""
    fs = SimFileSystem(random.Random(1))
    log = open_log(fs)
    log.append(entries(1, 10, term=1))
    log.sync()
    at = log.offset_of(4) + 40  # inside entry 4's data
    fs.flip_byte(f"/n/commitlog/{at - at % 4096:020d}", at % 4096)
    assert [e.index for e in log.entries(1, 4, 1 << 20)] == [1, 2, 3]
    with pytest.raises(CorruptRecordError, match=f"CommitLog offset {log.offset_of(4)}"):
        log.entries(1, 11, 1 << 20)
    with pytest.raises(CorruptRecordError, match="entry 4 by its header"):
        log.entries(4, 5, 1 << 20)
    assert [e.index for e in log.entries(5, 11, 1 << 20)] == list(range(5, 11))
