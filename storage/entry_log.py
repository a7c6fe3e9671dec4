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
It keeps in memory the commit offset and size of every entry not yet sealed (12
bytes an entry; terms as runs, for every entry); committed entries are sealed into
the on-disk chunks of storage/entry_index.py as they fill one, and read back from
there (a few chunks cached) when asked for. So memory does not grow with the log, and
an open checks the chunks and scans the CommitLog only after the last one. Without an
index directory every entry stays in memory and an open scans them all.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from storage.commit_log import CommitLog
from storage.entry_index import (
    CHUNK_CACHE_DEFAULT,
    CHUNK_ENTRIES_DEFAULT,
    Chunk,
    ChunkDir,
)
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
_MAX_INDEX = 1 << 64


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


def _entry_header(frame: memoryview) -> tuple[int, int] | None:
    """(term, index) of a MAGIC_ENTRY frame; None for any other frame."""
    if int.from_bytes(frame[4:8], "little") != MAGIC_ENTRY:
        return None
    term, index, _kind = ENTRY_HEADER.unpack_from(frame, FRAME_HEADER_BYTES)
    return term, index


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
        chunk_cache: int = CHUNK_CACHE_DEFAULT,
    ) -> None:
        """Index the entries already in `commit_log` (recovered by the caller). With
        `index_dir`, committed entries are sealed there (`seal`): memory then holds only
        the entries after the last chunk (and `chunk_cache` chunks read back), and the
        next open loads the chunks instead of walking their entries."""
        self._fs = fs
        self._log = commit_log
        self._meta_path = meta_path
        meta = fs.read_bytes(meta_path)
        self._base_index = self._base_term = 0
        start = commit_log.min_offset
        decoded = _decode_meta(meta_path, meta)
        if decoded is not None:
            self._base_index, self._base_term, start = decoded
        # Entries not sealed yet: where each starts and its frame's size (under
        # segment_bytes). `_offsets[0]` is entry `_mem_first`; the entries between the
        # base and it are in sealed chunks.
        self._offsets: array[int] = array("Q")
        self._sizes: array[int] = array("I")
        self._mem_first = self._base_index + 1
        # Terms as runs: the first index of each run and its term. Terms never decrease
        # along a log and change only with an election, so this is a few numbers where
        # one 8-byte term per entry was a third of the log's memory.
        self._run_starts: array[int] = array("Q")
        self._run_terms: array[int] = array("Q")
        self._base_end = max(start, commit_log.min_offset)
        """Where the entry after the base (the snapshot point) is placed from."""
        self._chunks = None if index_dir is None else ChunkDir(fs, index_dir, chunk_entries)
        self._cache: OrderedDict[int, Chunk] = OrderedDict()
        self._cache_max = max(1, chunk_cache)
        resume = self._load_chunks(self._base_end)
        self.opened_from_index = self._mem_first - 1 - self._base_index
        """Entries the open found in sealed chunks; the rest it scanned."""
        self._scan(resume)
        self.opened_by_scan = len(self._offsets)
        self._durable = self._durable_from_flushed()

    # ------------------------------------------------------------------ open

    def _load_chunks(self, start: int) -> int:
        """Check the sealed chunks against the CommitLog, in order, and keep those that
        continue one another from the log's start; returns the offset to scan the rest
        from. The first chunk that does not check out is deleted with every one after
        it (`seal` writes them again from the entries the scan finds)."""
        chunks = self._chunks
        if chunks is None:
            return start
        pos = start
        usable = True
        for first in chunks.names():
            chunk = chunks.read(first) if usable else None
            if chunk is not None and chunk.last <= self._base_index:
                chunk = None  # compacted away; its deletion was cut short
            elif chunk is not None and self._chunk_fits(chunk, pos):
                self._note_chunk_terms(chunk)
                self._mem_first = chunk.last + 1
                pos = chunk.offsets[-1] + chunk.sizes[-1]
                chunks.spans.append((chunk.first, chunk.last))
                self._remember(chunk)
                continue
            else:
                usable = False
            chunks.remove(first)
        return pos

    def _chunk_fits(self, chunk: Chunk, pos: int) -> bool:
        """Whether `chunk` holds the next entry expected and on, and the CommitLog holds
        its first new and its last entry where it says (pos: where the last known
        entry ends)."""
        expected = self.last_index() + 1
        skip = expected - chunk.first
        if skip < 0 or chunk.last < expected:
            return False
        log = self._log
        last_term = self._run_terms[-1] if self._run_terms else self._base_term
        first_term = chunk.term_at(expected)
        offset, size = chunk.offsets[skip], chunk.sizes[skip]
        end_offset, end_size = chunk.offsets[-1], chunk.sizes[-1]
        return (
            offset >= log.normalize(pos)
            and first_term >= last_term
            and end_offset + end_size <= log.max_offset
            and self._entry_at(offset, size, expected, first_term)
            and self._entry_at(end_offset, end_size, chunk.last, chunk.term_at(chunk.last))
        )

    def _note_chunk_terms(self, chunk: Chunk) -> None:
        """The term runs of the chunk's entries from the next expected index on."""
        expected = self.last_index() + 1
        starts, terms = chunk.run_starts, chunk.run_terms
        for i, (run_start, term) in enumerate(zip(starts, terms, strict=True)):
            if i + 1 < len(starts) and starts[i + 1] <= expected:
                continue  # the run ends before the first entry taken
            self._note_term(max(run_start, expected), term)

    def _entry_at(self, offset: int, size: int, index: int, term: int) -> bool:
        """Whether the CommitLog holds entry (index, term) of `size` bytes at `offset`."""
        try:
            frame, _ = self._log.frame_at(offset, verify_crc=False)
        except StorageError:
            return False
        return len(frame) == size and _entry_header(frame) == (term, index)

    def _scan(self, start: int) -> None:
        """Index the entries from `start` on into memory; a frame that breaks index
        continuity or term order ends the log there (a stale frame must never be read
        as an entry)."""
        log = self._log
        expected = self.last_index() + 1
        last_term = self._run_terms[-1] if self._run_terms else self._base_term
        kept_end = start  # just past the last frame kept
        cut = False
        for offset, frame in log.iter_frames(start, log.max_offset):
            header = _entry_header(frame)
            if header is None:
                cut = True
                break
            term, index = header
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

    def _durable_from_flushed(self) -> int:
        """Sealed entries are durable; of the others, those that end at or below the
        CommitLog's flushed offset."""
        flushed = self._log.flushed_offset
        offsets, sizes = self._offsets, self._sizes
        durable = bisect_right(range(len(offsets)), flushed, key=lambda i: offsets[i] + sizes[i])
        return self._mem_first - 1 + durable

    # ------------------------------------------------------------------ sealed chunks

    def _loc(self, index: int) -> tuple[int, int]:
        """(commit offset, frame size) of entry `index`, which the log holds."""
        k = index - self._mem_first
        if k >= 0:
            return self._offsets[k], self._sizes[k]
        chunk = self._chunk_of(index)
        j = index - chunk.first
        return chunk.offsets[j], chunk.sizes[j]

    def _chunk_of(self, index: int) -> Chunk:
        """The sealed chunk holding `index` (below `_mem_first`), read if not cached."""
        chunks = self._chunks
        assert chunks is not None and self._base_index < index < self._mem_first
        spans = chunks.spans
        first, last = spans[bisect_right(spans, (index, _MAX_INDEX)) - 1]
        assert first <= index <= last
        chunk = self._cache.get(first)
        if chunk is not None:
            self._cache.move_to_end(first)
            return chunk
        chunk = chunks.read(first)
        if chunk is None or chunk.last != last:
            # Damaged since the open checked it: its entries are still in the CommitLog.
            chunk = self._rebuild_chunk(first, last)
        self._remember(chunk)
        return chunk

    def _rebuild_chunk(self, first: int, last: int) -> Chunk:
        """Index entries first..last again by walking them (CRC-checked) and rewrite
        their chunk. Raises CorruptRecordError if the CommitLog no longer holds them."""
        lo = max(first, self._base_index + 1)
        if lo - 1 > self._base_index:
            offset, size = self._loc(lo - 1)
            start = offset + size
        else:
            start = self._base_end
        offsets, sizes = array("Q"), array("I")
        expected = lo
        for offset, frame in self._log.iter_frames(start, self._log.max_offset):
            header = _entry_header(frame)
            if header is None or header[1] != expected:
                break
            offsets.append(offset)
            sizes.append(len(frame))
            expected += 1
            if expected > last:
                break
        if expected != last + 1:
            raise CorruptRecordError(
                f"entries {lo}..{last} are not in the CommitLog where the log expects them"
            )
        chunk = Chunk(lo, offsets, sizes, *self._runs_of(lo, last))
        assert self._chunks is not None
        with contextlib.suppress(DiskFullError):
            self._chunks.rewrite(first, chunk)
        return chunk

    def _remember(self, chunk: Chunk) -> None:
        cache = self._cache
        cache[chunk.first] = chunk
        cache.move_to_end(chunk.first)
        while len(cache) > self._cache_max:
            cache.popitem(last=False)

    def _runs_of(self, first: int, last: int) -> tuple[array[int], array[int]]:
        """The term runs covering first..last, the first one starting at `first`."""
        runs = max(0, bisect_right(self._run_starts, first) - 1)
        stop = bisect_right(self._run_starts, last)
        starts = array("Q", self._run_starts[runs:stop])
        starts[0] = first
        return starts, self._run_terms[runs:stop]

    def _pieces(self, lo: int, hi: int) -> Iterator[tuple[int, array[int], array[int]]]:
        """(index of position 0, offsets, sizes) of the chunks, then the memory, that
        hold entries lo..hi-1, in order."""
        index = lo
        while index < hi and index < self._mem_first:
            chunk = self._chunk_of(index)
            yield chunk.first, chunk.offsets, chunk.sizes
            index = chunk.last + 1
        if index < hi:
            yield self._mem_first, self._offsets, self._sizes

    def seal(self, upto: int) -> int:
        """Write the chunks (storage/entry_index.py) that fill up with entries up to
        `upto`, which the caller knows to be committed (Raft never removes those),
        and let go of their entries in memory; only durable entries are sealed.
        Returns how many chunks were written. A full disk stops it quietly: the
        entries stay in memory, and the next call tries again."""
        chunks = self._chunks
        if chunks is None or self._base_end < 0:
            return 0
        limit = min(upto, self._durable, self.last_index())
        size = chunks.chunk_entries
        written = 0
        while (end := ((self._mem_first - 1) // size + 1) * size) <= limit:
            first = self._mem_first
            count = end - first + 1
            chunk = Chunk(
                first, self._offsets[:count], self._sizes[:count], *self._runs_of(first, end)
            )
            try:
                chunks.write(chunk)
            except DiskFullError:
                break
            del self._offsets[:count]
            del self._sizes[:count]
            self._mem_first = end + 1
            self._remember(chunk)
            written += 1
        return written

    def _unseal_from(self, index: int) -> None:
        """Bring the sealed entries from the chunk holding `index` on back into memory
        and delete their chunks (before a truncation that reaches them)."""
        chunks = self._chunks
        assert chunks is not None
        while chunks.spans and chunks.spans[-1][1] >= index:
            first, _last = chunks.spans[-1]
            chunk = self._chunk_of(max(first, self._base_index + 1))
            skip = max(0, self._base_index + 1 - chunk.first)
            self._offsets = chunk.offsets[skip:] + self._offsets
            self._sizes = chunk.sizes[skip:] + self._sizes
            self._mem_first = chunk.first + skip
            chunks.remove(first)
            self._cache.pop(first, None)

    def _drop_chunks_through(self, index: int) -> None:
        """Delete the chunks whose entries are all at or below `index` (compacted)."""
        chunks = self._chunks
        if chunks is not None:
            for first, last in list(chunks.spans):
                if last <= index:
                    chunks.remove(first)
                    self._cache.pop(first, None)

    def _drop_all_chunks(self) -> None:
        """Before the log starts over after a snapshot: no chunk describes it."""
        if self._chunks is not None:
            self._chunks.remove_all()
        self._cache.clear()

    # ------------------------------------------------------------------ LogStore

    @property
    def sealed_index(self) -> int:
        """The last entry whose place is sealed on disk (the base if none is)."""
        return self._mem_first - 1

    @property
    def entries_in_memory(self) -> int:
        """Entries whose place only memory holds (12 bytes each)."""
        return len(self._offsets)

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._mem_first - 1 + len(self._offsets)

    def term_at(self, index: int) -> int | None:
        if index == 0:
            return 0
        if index == self._base_index:
            return self._base_term
        if self._base_index < index <= self.last_index():
            return self._run_terms[bisect_right(self._run_starts, index) - 1]
        return None

    def _note_term(self, index: int, term: int) -> None:
        """Entry `index` (the next one) has `term`: a new run if the term changed."""
        if not self._run_terms or self._run_terms[-1] != term:
            self._run_starts.append(index)
            self._run_terms.append(term)

    def offset_of(self, index: int) -> int:
        """Commit offset where entry `index` starts."""
        return self._loc(index)[0]

    def end_of(self, index: int) -> int:
        """Commit offset just past entry `index`; dispatching up to here applies it."""
        if index == self._base_index:
            if self.last_index() > index:
                return self._loc(index + 1)[0]
            return self._log.max_offset
        offset, size = self._loc(index)
        return offset + size

    def span_end(self, lo: int, hi: int, bytes_max: int) -> int:
        """One past the last index in [lo, hi) that `entries(lo, hi, bytes_max)` returns."""
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return lo
        offset, size = self._loc(lo)
        # At least one entry, then as many as fit in bytes_max.
        limit = offset + max(bytes_max, size)
        for first, offsets, sizes in self._pieces(lo, hi):
            a = max(lo, first) - first
            b = min(hi, first + len(offsets)) - first
            fit = bisect_right(range(a, b), limit, key=lambda i: offsets[i] + sizes[i])
            if fit < b - a:
                return first + a + fit
        return hi

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[StoredEntry]:
        assert lo >= self.first_index(), "entries below the snapshot were compacted"
        hi = self.span_end(lo, hi, bytes_max)
        out: list[StoredEntry] = []
        if lo >= hi:
            return out
        for first, offsets, sizes in self._pieces(lo, hi):
            a = max(lo, first) - first
            b = min(hi, first + len(offsets)) - first
            self._read(offsets, sizes, a, b, out)
        return out

    def _read(
        self, offsets: array[int], sizes: array[int], pos: int, stop: int, out: list[StoredEntry]
    ) -> None:
        """Append the entries at positions pos..stop-1 of `offsets` / `sizes` to `out`.

        Each is checked against its CRC: what is read here is sent to followers and
        applied, so a damaged entry (bit rot under a sealed chunk, which a start does
        not re-read) must stop this node, not spread to the others or be applied.
        Raises CorruptRecordError naming the entry and where it sits."""
        skip = FRAME_HEADER_BYTES + ENTRY_HEADER.size
        unpack = ENTRY_HEADER.unpack_from
        unpack_crc = _CRC.unpack_from
        crc32 = zlib.crc32
        segment_bytes = self._log.segment_bytes
        while pos < stop:
            # One read per segment: entries never span segments, and consecutive entries in
            # one segment are contiguous (blank fillers only sit at segment tails).
            run_end = pos + 1
            segment = offsets[pos] // segment_bytes
            while run_end < stop and offsets[run_end] // segment_bytes == segment:
                run_end += 1
            base = offsets[pos]
            view = self._log.read(base, offsets[run_end - 1] + sizes[run_end - 1] - base)
            for i in range(pos, run_end):
                at = offsets[i] - base
                term, index, kind = unpack(view, at + FRAME_HEADER_BYTES)
                end = offsets[i] + sizes[i] - base
                if crc32(view[at + FRAME_HEADER_BYTES : end]) != unpack_crc(view, at + 8)[0]:
                    raise CorruptRecordError(
                        f"the Raft entry at CommitLog offset {offsets[i]} (segment file "
                        f"commitlog/{offsets[i] - offsets[i] % segment_bytes:020d}, entry "
                        f"{index} by its header) fails its CRC check"
                    )
                out.append(StoredEntry(term, index, kind, bytes(view[at + skip : end])))
            pos = run_end

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
        if index <= self._base_index:
            raise EntryLogError(f"cannot truncate at {index}: log starts after {self._base_index}")
        if index > self.last_index() + 1:
            return self._log.max_offset  # past the last entry: nothing to cut
        # Cut where the entry before ends, not where the removed one starts: a blank
        # filler may sit between the two (the removed entry did not fit the segment),
        # and keeping it would place the next entry where a replica that never had the
        # removed one would not, so replicas holding the same entries would differ.
        if index - 1 > self._base_index:
            offset, size = self._loc(index - 1)
            start = offset + size
        else:
            start = max(self._base_end, self._log.min_offset)
        return self._log.normalize(start)

    def truncate_suffix(self, index: int) -> None:
        cut = self.cut_offset(index)  # raises for an index the log no longer has
        if index > self.last_index():
            return
        if index < self._mem_first:
            # Sealed entries are committed and never truncated, so this is a caller's
            # bug; still, no chunk may outlive the entries it describes.
            self._unseal_from(index)
        self._log.truncate(cut)
        k = index - self._mem_first
        del self._offsets[k:]
        del self._sizes[k:]
        runs = bisect_left(self._run_starts, index)  # the runs that begin before `index`
        del self._run_starts[runs:]
        del self._run_terms[runs:]
        self._durable = min(self._durable, index - 1)

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
        last = self.last_index()
        start = self.end_of(min(index, last)) if last > self._base_index else self._log.max_offset
        self._fs.write_atomic(self._meta_path, _encode_meta(index, term, start))
        drop = min(len(self._offsets), max(0, index + 1 - self._mem_first))
        del self._offsets[:drop]
        del self._sizes[:drop]
        self._mem_first = max(self._mem_first, index + 1)
        # Keep the run holding the new first entry (and every later one).
        runs = max(0, bisect_right(self._run_starts, index + 1) - 1)
        del self._run_starts[:runs]
        del self._run_terms[:runs]
        self._base_index, self._base_term = index, term
        self._base_end = start
        self._drop_chunks_through(index)

    def reset(self, index: int, term: int) -> None:
        """Drop every entry; the log continues after a snapshot ending at (index, term).

        Durable when it returns: for a log whose owner keeps nothing else to install.
        The broker, which must first replace its store with the snapshot's, uses
        `forget` (memory only) and then `install` instead."""
        if self.last_index() > self._base_index:
            self._log.truncate(self.offset_of(self._base_index + 1))
        self._drop_all_chunks()
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
        if self._chunks is not None:
            self._chunks.spans.clear()  # the files stay until `install`
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

    def _clear(self, index: int, term: int) -> None:
        self._offsets = array("Q")
        self._sizes = array("I")
        self._mem_first = index + 1
        self._cache.clear()
        self._run_starts = array("Q")
        self._run_terms = array("Q")
        self._base_index, self._base_term = index, term
