"""A Raft log kept in the CommitLog: every entry is one MAGIC_ENTRY frame.

This is the DLedger shape: the replicated log *is* the message log, so a message
is written once, and a follower's CommitLog is byte-identical to its leader's
(same entries, same segment size, same blank fillers), which is what lets every
replica build identical ConsumeQueues.

Entry frame payload: term u64, index u64, kind u8, then the entry's data. For the
broker the data is a sequence of whole frames (messages and state records) that
the dispatcher walks; to the log it is opaque bytes.

`EntryLog` satisfies raft's LogStore protocol in shape (the broker and the
simulator adapt `StoredEntry` to raft's `Entry`; storage does not import raft).
It keeps, in memory, the commit offset and size of every entry it holds (12 bytes
an entry; terms as runs), so term lookups and range reads never touch the disk
index-by-index. On open it loads what the sealed chunks of storage/entry_index.py
hold (committed entries, written as they pile up) and scans the CommitLog only after
them; without chunks it scans every entry.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from storage.commit_log import CommitLog
from storage.entry_index import CHUNK_ENTRIES_DEFAULT, Chunk, ChunkDir, chunk_name
from storage.errors import CorruptRecordError, DiskFullError, LogLayoutError, StorageError
from storage.files import FileSystem
from storage.record import FRAME_HEADER_BYTES, MAGIC_ENTRY, encode_frame

ENTRY_HEADER = struct.Struct("<QQB")  # term, index, kind
_SIZE_MAGIC = struct.Struct("<II")
_ENTRY_FRAME = struct.Struct("<IIIQQB")  # frame header + entry header
_ENTRY_FRAME_OVERHEAD = _ENTRY_FRAME.size
_CRC = struct.Struct("<I")
_META = struct.Struct("<QQQ")  # base index, base term, commit offset where the log begins
_META_CRC = struct.Struct("<I")  # CRC32 of the above; files written before it have none


def _encode_meta(index: int, term: int, offset: int) -> bytes:
    body = _META.pack(index, term, offset)
    return body + _META_CRC.pack(zlib.crc32(body))


def _decode_meta(path: str, data: bytes | None) -> tuple[int, int, int] | None:
    """(base index, base term, start offset), or None if there is no file. A damaged
    file is an error, not "no compaction": read as base 0, the scan would cut every
    entry of a compacted log as out of sequence."""
    if data is None:
        return None
    if len(data) == _META.size:  # the format before the CRC
        index, term, offset = _META.unpack(data)
        return int(index), int(term), int(offset)
    if len(data) == _META.size + _META_CRC.size:
        body = data[: _META.size]
        if _META_CRC.unpack_from(data, _META.size)[0] == zlib.crc32(body):
            index, term, offset = _META.unpack(body)
            return int(index), int(term), int(offset)
    raise LogLayoutError(
        f"{path} is damaged ({len(data)} bytes): it says where the Raft log begins, and "
        f"without it the log cannot be read; restore it or rebuild this node"
    )


@dataclass(frozen=True, slots=True)
class StoredEntry:
    term: int
    index: int
    kind: int
    data: bytes


def inner_frames(entry_frame: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(position in the entry frame, magic, frame) of each frame in an entry's data.

    The broker's entry data is a sequence of whole frames; a size that does not fit
    ends the walk (the entry's own CRC was checked, so that is a writer's bug)."""
    pos = FRAME_HEADER_BYTES + ENTRY_HEADER.size
    end = len(entry_frame)
    size_and_magic = _SIZE_MAGIC.unpack_from
    while pos + FRAME_HEADER_BYTES <= end:
        size, magic = size_and_magic(entry_frame, pos)
        if not FRAME_HEADER_BYTES <= size <= end - pos:
            raise CorruptRecordError(f"entry data holds a frame of {size} bytes at {pos}")
        yield pos, magic, entry_frame[pos : pos + size]
        pos += size


class EntryLogError(ValueError):
    """The entry log's files contradict each other; raised only on programmer error."""


def encode_entry(term: int, index: int, kind: int, data: bytes | bytearray | memoryview) -> bytes:
    payload = ENTRY_HEADER.pack(term, index, kind) + bytes(data)
    return encode_frame(MAGIC_ENTRY, payload)


class EntryLog:
    def __init__(
        self,
        fs: FileSystem,
        commit_log: CommitLog,
        meta_path: str,
        *,
        index_dir: str | None = None,
        chunk_entries: int = CHUNK_ENTRIES_DEFAULT,
    ) -> None:
        """Index the entries already in `commit_log` (recovered by the caller). With
        `index_dir`, committed entries are sealed there (`seal`) and loaded from there
        on the next open."""
        self._fs = fs
        self._log = commit_log
        self._meta_path = meta_path
        meta = fs.read_bytes(meta_path)
        self._base_index = self._base_term = 0
        start = commit_log.min_offset
        decoded = _decode_meta(meta_path, meta)
        if decoded is not None:
            self._base_index, self._base_term, start = decoded
        self._offsets: array[int] = array("Q")  # commit offset of entry base_index + 1 + i
        self._sizes: array[int] = array("I")  # its frame's size (under segment_bytes)
        # Terms as runs: the first index of each run and its term. Terms never decrease
        # along a log and change only with an election, so this is a few numbers where
        # one 8-byte term per entry was a third of the log's memory.
        self._run_starts: array[int] = array("Q")
        self._run_terms: array[int] = array("Q")
        self._base_end = max(start, commit_log.min_offset)
        """Where the entry after the base (the snapshot point) is placed from."""
        self._chunks = None if index_dir is None else ChunkDir(fs, index_dir, chunk_entries)
        resume = self._load_chunks(self._base_end)
        self.opened_from_index = len(self._offsets)
        """Entries the open took from sealed chunks; the rest it scanned."""
        self._scan(resume)
        self.opened_by_scan = len(self._offsets) - self.opened_from_index
        self._durable = self._durable_from_flushed()

    def _load_chunks(self, start: int) -> int:
        """Take in the sealed chunks that check out against the CommitLog, in order,
        scanning between them only where one begins after the entries known so far;
        returns the offset to scan the rest from. A chunk that does not check out is
        deleted; the next open scans its entries."""
        chunks = self._chunks
        if chunks is None:
            return start
        pos = start
        for first in chunks.names():
            chunk = chunks.read(first)
            if chunk is not None and chunk.last > self._base_index:  # else compacted away
                if chunk.first > self.last_index() + 1:
                    # A chunk is missing before this one (it failed its check at an
                    # earlier open): scan up to this one.
                    pos, reached = self._scan(pos, stop_index=chunk.first)
                    if not reached:
                        chunk = None
                if chunk is not None and self._take_chunk(chunk, pos):
                    pos = self._offsets[-1] + self._sizes[-1]
                    chunks.spans.append((chunk.first, chunk.last))
                    continue
            chunks.fs.remove(f"{chunks.path}/{chunk_name(first)}")
        return pos

    def _take_chunk(self, chunk: Chunk, pos: int) -> bool:
        """Append `chunk`'s entries from the next expected index on, if its first and
        last entries are in the CommitLog where it says (pos: where the last known
        entry ends)."""
        expected = self.last_index() + 1
        skip = expected - chunk.first
        if skip < 0 or chunk.last < expected:
            return False
        offsets, sizes = chunk.offsets[skip:], chunk.sizes[skip:]
        log = self._log
        last_term = self._run_terms[-1] if self._run_terms else self._base_term
        first_term = chunk.term_at(expected)
        if (
            offsets[0] < log.normalize(pos)
            or first_term < last_term
            or offsets[-1] + sizes[-1] > log.max_offset
            or not self._entry_at(offsets[0], sizes[0], expected, first_term)
            or not self._entry_at(offsets[-1], sizes[-1], chunk.last, chunk.term_at(chunk.last))
        ):
            return False
        self._offsets.extend(offsets)
        self._sizes.extend(sizes)
        starts, terms = chunk.run_starts, chunk.run_terms
        for i, (run_start, term) in enumerate(zip(starts, terms, strict=True)):
            if i + 1 < len(starts) and starts[i + 1] <= expected:
                continue  # the run ends before the first entry taken
            self._note_term(max(run_start, expected), term)
        return True

    def _entry_at(self, offset: int, size: int, index: int, term: int) -> bool:
        """Whether the CommitLog holds entry (index, term) of `size` bytes at `offset`."""
        try:
            frame, _ = self._log.frame_at(offset, verify_crc=False)
        except StorageError:
            return False
        if len(frame) != size or int.from_bytes(frame[4:8], "little") != MAGIC_ENTRY:
            return False
        got_term, got_index, _kind = ENTRY_HEADER.unpack_from(frame, FRAME_HEADER_BYTES)
        return (got_term, got_index) == (term, index)

    def _scan(self, start: int, stop_index: int | None = None) -> tuple[int, bool]:
        """Index the entries from `start` on (up to `stop_index`, exclusive, if given);
        a frame that breaks index continuity or term order ends the log there (a stale
        frame must never be read as an entry). Returns (where the last entry kept
        ends, whether `stop_index` was reached)."""
        log = self._log
        expected = self.last_index() + 1
        last_term = self._run_terms[-1] if self._run_terms else self._base_term
        kept_end = start  # just past the last frame kept
        cut = False
        for offset, frame in log.iter_frames(start, log.max_offset):
            if expected == stop_index:
                return kept_end, True
            magic = int.from_bytes(frame[4:8], "little")
            if magic != MAGIC_ENTRY:
                cut = True
                break
            term, index, _kind = ENTRY_HEADER.unpack_from(frame, FRAME_HEADER_BYTES)
            if index < expected:
                kept_end = offset + len(frame)
                continue  # compacted away but its segment is still on disk
            if index != expected or term < last_term:
                cut = True
                break
            self._offsets.append(offset)
            self._sizes.append(len(frame))
            self._note_term(index, term)
            kept_end = offset + len(frame)
            expected += 1
            last_term = term
        if cut:
            # From just past the last frame kept, not from the bad frame: a blank filler
            # between the two would otherwise stay, and shift where the next entry goes.
            log.truncate(log.normalize(kept_end))
            log.flush()
        return kept_end, expected == stop_index

    def _durable_from_flushed(self) -> int:
        flushed = self._log.flushed_offset
        offsets, sizes = self._offsets, self._sizes
        durable = bisect_right(range(len(offsets)), flushed, key=lambda i: offsets[i] + sizes[i])
        return self._base_index + durable

    # ------------------------------------------------------------------ LogStore

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._offsets)

    def term_at(self, index: int) -> int | None:
        if index == 0:
            return 0
        if index == self._base_index:
            return self._base_term
        if self._base_index < index <= self._base_index + len(self._offsets):
            return self._run_terms[bisect_right(self._run_starts, index) - 1]
        return None

    def _note_term(self, index: int, term: int) -> None:
        """Entry `index` (the next one) has `term`: a new run if the term changed."""
        if not self._run_terms or self._run_terms[-1] != term:
            self._run_starts.append(index)
            self._run_terms.append(term)

    def offset_of(self, index: int) -> int:
        """Commit offset where entry `index` starts."""
        return self._offsets[index - self._base_index - 1]

    def end_of(self, index: int) -> int:
        """Commit offset just past entry `index`; dispatching up to here applies it."""
        if index == self._base_index:
            return self._offsets[0] if self._offsets else self._log.max_offset
        pos = index - self._base_index - 1
        return self._offsets[pos] + self._sizes[pos]

    def span_end(self, lo: int, hi: int, bytes_max: int) -> int:
        """One past the last index in [lo, hi) that `entries(lo, hi, bytes_max)` returns."""
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return lo
        first = lo - self._base_index - 1
        stop = hi - self._base_index - 1
        offsets, sizes = self._offsets, self._sizes
        # At least one entry, then as many as fit in bytes_max.
        limit = offsets[first] + max(bytes_max, sizes[first])
        fit = bisect_right(range(first, stop), limit, key=lambda i: offsets[i] + sizes[i])
        return self._base_index + 1 + first + fit

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[StoredEntry]:
        assert lo >= self.first_index(), "entries below the snapshot were compacted"
        hi = self.span_end(lo, hi, bytes_max)
        if lo >= hi:
            return []
        first = lo - self._base_index - 1
        stop = hi - self._base_index - 1
        offsets, sizes = self._offsets, self._sizes
        out: list[StoredEntry] = []
        skip = FRAME_HEADER_BYTES + ENTRY_HEADER.size
        unpack = ENTRY_HEADER.unpack_from
        pos = first
        while pos < stop:
            # One read per segment: entries never span segments, and consecutive entries in
            # one segment are contiguous (blank fillers only sit at segment tails).
            run_end = pos + 1
            segment = offsets[pos] // self._log.segment_bytes
            while run_end < stop and offsets[run_end] // self._log.segment_bytes == segment:
                run_end += 1
            base = offsets[pos]
            view = self._log.read(base, offsets[run_end - 1] + sizes[run_end - 1] - base)
            for i in range(pos, run_end):
                at = offsets[i] - base
                term, index, kind = unpack(view, at + FRAME_HEADER_BYTES)
                end = offsets[i] + sizes[i] - base
                out.append(StoredEntry(term, index, kind, bytes(view[at + skip : end])))
            pos = run_end
        return out

    def append(self, entries: Sequence[StoredEntry]) -> None:
        if not entries:
            return
        if self._base_end < 0:
            raise EntryLogError("append after forget() and before install()")
        expected = self.last_index() + 1
        total = 0
        for entry in entries:
            if entry.index != expected:
                raise EntryLogError(f"append of index {entry.index}, expected {expected}")
            expected += 1
            total += _ENTRY_FRAME_OVERHEAD + len(entry.data)
        buf = bytearray(total)
        sizes: list[int] = []
        pos = 0
        for entry in entries:
            size = _ENTRY_FRAME_OVERHEAD + len(entry.data)
            _ENTRY_FRAME.pack_into(
                buf, pos, size, MAGIC_ENTRY, 0, entry.term, entry.index, entry.kind
            )
            buf[pos + _ENTRY_FRAME_OVERHEAD : pos + size] = entry.data
            crc = zlib.crc32(memoryview(buf)[pos + FRAME_HEADER_BYTES : pos + size])
            _CRC.pack_into(buf, pos + 8, crc)
            sizes.append(size)
            pos += size
        # CRCs were computed just above, in this process: no need to re-check them.
        offsets = self._log.append_buffer(buf, sizes, verify_crc=False)
        for entry, offset, size in zip(entries, offsets, sizes, strict=True):
            self._offsets.append(offset)
            self._sizes.append(size)
            self._note_term(entry.index, entry.term)

    def cut_offset(self, index: int) -> int:
        """The commit offset `truncate_suffix(index)` cuts the CommitLog at: where entry
        `index - 1` ends, which is below where entry `index` starts when a blank filler
        sits between them. An owner that must prepare for the cut (the store lowers its
        checkpoint) must use this offset, not `offset_of(index)`."""
        pos = index - self._base_index - 1
        if pos < 0:
            raise EntryLogError(f"cannot truncate at {index}: log starts after {self._base_index}")
        if pos > len(self._offsets):
            return self._log.max_offset  # past the last entry: nothing to cut
        # Cut where the entry before ends, not where the removed one starts: a blank
        # filler may sit between the two (the removed entry did not fit the segment),
        # and keeping it would place the next entry where a replica that never had the
        # removed one would not, so replicas holding the same entries would differ.
        if pos > 0:
            start = self._offsets[pos - 1] + self._sizes[pos - 1]
        else:
            start = max(self._base_end, self._log.min_offset)
        return self._log.normalize(start)

    def truncate_suffix(self, index: int) -> None:
        cut = self.cut_offset(index)  # raises for an index the log no longer has
        pos = index - self._base_index - 1
        if pos >= len(self._offsets):
            return
        # Sealed entries are committed and never truncated: a chunk reaching `index` is
        # a caller's bug, but a stale chunk must not outlive it either way.
        self._drop_chunks(lambda _first, last: last < index)
        self._log.truncate(cut)
        del self._offsets[pos:]
        del self._sizes[pos:]
        runs = bisect_left(self._run_starts, index)  # the runs that begin before `index`
        del self._run_starts[runs:]
        del self._run_terms[runs:]
        self._durable = min(self._durable, index - 1)

    def seal(self, upto: int) -> int:
        """Write the chunks (storage/entry_index.py) that fill up with entries up to
        `upto`, which the caller knows to be committed (Raft never removes those);
        only durable entries are sealed. Returns how many chunks were written. A full
        disk stops it quietly: the chunks are an optimisation of the next start, and
        the next call writes what is missing."""
        chunks = self._chunks
        if chunks is None or self._base_end < 0:
            return 0
        limit = min(upto, self._durable, self.last_index())
        size = chunks.chunk_entries
        done = max(chunks.sealed_through(), self._base_index)
        written = 0
        while (end := (done // size + 1) * size) <= limit:
            first = done + 1
            lo, hi = first - self._base_index - 1, end - self._base_index
            runs = max(0, bisect_right(self._run_starts, first) - 1)
            stop = bisect_right(self._run_starts, end)
            run_starts = array("Q", self._run_starts[runs:stop])
            run_starts[0] = first
            chunk = Chunk(
                first,
                self._offsets[lo:hi],
                self._sizes[lo:hi],
                run_starts,
                self._run_terms[runs:stop],
            )
            try:
                chunks.write(chunk)
            except DiskFullError:
                break
            done = end
            written += 1
        return written

    def _drop_chunks(self, keep: Callable[[int, int], bool]) -> None:
        """Delete the chunk files whose (first, last) `keep` refuses."""
        chunks = self._chunks
        if chunks is not None:
            for first, last in list(chunks.spans):
                if not keep(first, last):
                    chunks.remove(first)

    def sync(self) -> None:
        self._log.flush()
        self._durable = self._durable_from_flushed()

    def durable_index(self) -> int:
        return self._durable

    def refresh_durable(self) -> int:
        """Re-derive the durable index after the owner flushed the CommitLog itself (e.g.
        off-thread with prepare_flush / complete_flush instead of `sync`); returns it."""
        self._durable = self._durable_from_flushed()
        return self._durable

    def compact(self, index: int, term: int) -> None:
        """Forget entries up to `index`; their bytes stay until retention deletes segments.

        The new start is written first: if that fails (a full disk raises DiskFullError)
        the log is unchanged, in memory as on disk."""
        if index <= self._base_index:
            return
        drop = min(index, self.last_index()) - self._base_index
        start = self._offsets[drop - 1] + self._sizes[drop - 1] if drop else self._log.max_offset
        self._fs.write_atomic(self._meta_path, _encode_meta(index, term, start))
        del self._offsets[:drop]
        del self._sizes[:drop]
        # Keep the run holding the new first entry (and every later one).
        runs = max(0, bisect_right(self._run_starts, index + 1) - 1)
        del self._run_starts[:runs]
        del self._run_terms[:runs]
        self._base_index, self._base_term = index, term
        self._base_end = start
        self._drop_chunks(lambda _first, last: last > index)

    def reset(self, index: int, term: int) -> None:
        """Drop every entry; the log continues after a snapshot ending at (index, term).

        Durable when it returns: for a log whose owner keeps nothing else to install.
        The broker, which must first replace its store with the snapshot's, uses
        `forget` (memory only) and then `install` instead."""
        self._drop_all_chunks()
        if self._offsets:
            self._log.truncate(self._offsets[0])
        self._log.flush()
        self._clear(index, term)
        self._durable = index
        self._base_end = self._log.max_offset
        self._fs.write_atomic(self._meta_path, _encode_meta(index, term, self._base_end))

    def forget(self, index: int, term: int) -> None:
        """Start after a snapshot ending at (index, term), in memory only: the files are
        untouched until `install`, so a crash before it reopens the log as it was, which
        is what raft/ready.py asks of a reset (durable only once the snapshot is)."""
        self._clear(index, term)
        self._durable = index
        self._base_end = -1  # appends wait for `install` to say where the log begins

    def install(self, index: int, term: int, offset: int) -> None:
        """The owner emptied the CommitLog, which now begins at `offset`: the log holds
        nothing and continues after (index, term). Durable when it returns."""
        assert self._log.min_offset == self._log.max_offset == offset
        self._drop_all_chunks()
        self._clear(index, term)
        self._durable = index
        self._base_end = offset
        self._fs.write_atomic(self._meta_path, _encode_meta(index, term, offset))

    def _drop_all_chunks(self) -> None:
        """Before the log starts over after a snapshot: no chunk describes it."""
        chunks = self._chunks
        if chunks is not None:
            for first in chunks.names():
                chunks.remove(first)
            chunks.spans.clear()

    def _clear(self, index: int, term: int) -> None:
        self._offsets = array("Q")
        self._sizes = array("I")
        self._run_starts = array("Q")
        self._run_terms = array("Q")
        self._base_index, self._base_term = index, term
