"""The CommitLog: one append-only log of frames, for every topic, in fixed-size segments.

Why one log: every write (messages of all topics, later Raft entries, offsets and
config records) is a sequential append to one file at a time, which is what disks
and page caches are fastest at; per-queue indexes (ConsumeQueue, IndexFile) are
derived from it by dispatch and can always be rebuilt from it.

Addressing. A physical offset is a byte position in the logical log. Segment files
are named by their 20-digit zero-padded start offset, all have the same capacity
`segment_bytes`, and are contiguous, so offset -> segment is one division. A frame
never spans two segments: when the next frame does not fit, a blank filler marks
the rest of the segment and the frame goes to the next segment start. Fewer than 8
bytes (a blank header) left in a segment cannot hold any frame; such a position is
never used as an offset: it is "normalized" to the next segment start.

State and contracts:
* `min_offset` <= `flushed_offset` <= `max_offset`. Bytes in [min, max) are frames
  (and blank fillers); `max_offset` is where the next frame goes; every byte below
  `flushed_offset` is durable.
* `append`/`append_buffer` validate every frame (size, magic, and by default CRC)
  before writing any; new segments are created before any byte is written, so a
  DiskFullError leaves the log exactly as it was.
* `truncate` and recovery zero-fill the bytes they drop and sync them before
  returning, so a frame that was dropped can never be picked up again by a later
  recovery scan (e.g. if new, shorter frames happen to end where a stale one began).
* No byte at or past the durable *write limit* (file `write_limit`) was ever
  written: the limit is pushed ahead (by `write_reserve_bytes`) and persisted
  before any write would cross it. After a crash it bounds the scan for stale
  bytes to zero-fill, which would otherwise read a whole (1 GiB) segment tail.
* Reads are views: zero-copy into the mmap on real files. A view stays readable
  until its range is truncated (it then shows zeros) or its segment deleted.
* A log opened on existing files must be `recover`ed before use; a new one need not.

Not thread-safe: one owner (the broker core / its driver) calls it.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from storage.errors import (
    CorruptRecordError,
    FrameTooLargeError,
    LogLayoutError,
    OffsetOutOfRangeError,
    StorageError,
)
from storage.files import Buffer, FileSystem, Segment
from storage.record import (
    BLANK_HEADER_BYTES,
    FRAME_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    blank_header,
    check_frame,
)

__all__ = ["SEGMENT_BYTES_DEFAULT", "SEGMENT_BYTES_MIN", "CommitLog", "RecoveryReport"]

SEGMENT_BYTES_DEFAULT = 1 << 30
SEGMENT_BYTES_MIN = 64
"""Small enough for tests that roll segments every few frames; a frame must still fit."""
_SEGMENT_NAME_DIGITS = 20
_SCAN_CHUNK_BYTES = 1 << 16
"""Unit of the backward scan that finds how far a dropped tail holds non-zero bytes."""
_ZERO_CHUNK_BYTES = 1 << 20
"""Largest single zero-fill write, so truncating a big tail never allocates a huge buffer."""
WRITE_RESERVE_BYTES_DEFAULT = 64 << 20
"""How far ahead of the last write the durable write limit is pushed each time it moves.

Bigger: fewer limit updates (one small atomic file write each); smaller: less to scan
for stale bytes after a crash. 64 MiB is ~1 update per 100 ms at 600 MB/s of appends.
"""
WRITE_LIMIT_FILE = "write_limit"
"""Holds the write limit (u64 offset + u32 CRC); not 20 digits, so never taken for a segment."""
_LIMIT = struct.Struct("<QI")

_HEADER = struct.Struct("<III")
_SIZE_MAGIC = struct.Struct("<II")
_U32 = struct.Struct("<I")


@dataclass(slots=True)
class _Slot:
    """One open segment and what the log knows about it."""

    start: int
    segment: Segment
    high_water: int
    """Relative position below which bytes may be non-zero (capacity when unknown)."""


@dataclass(slots=True)
class FlushPlan:
    """What one off-thread flush must sync; see CommitLog.prepare_flush."""

    target: int
    starts: tuple[int, ...]
    segments: tuple[Segment, ...]
    synced: bool = False

    def sync(self) -> None:
        """Run the fsyncs (thread-safe with respect to appends on the owning thread)."""
        for segment in self.segments:
            segment.sync()
        self.synced = True


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `recover` found and did; the caller logs it.

    `stopped_because` is "end" when the scan met an all-zero header (a clean end of
    log), otherwise why the frame at `valid_until` was rejected. `truncated_bytes`
    counts the non-zero bytes zero-filled at and after `valid_until` in its segment;
    `segments_deleted` lists the start offsets of later segments that were removed.
    """

    scanned_from: int
    valid_until: int
    frames_validated: int
    stopped_because: str
    truncated_bytes: int
    segments_deleted: tuple[int, ...]

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0 or bool(self.segments_deleted)


class CommitLog:
    """Append-only frame log in fixed-size segments; see the module docstring."""

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        segment_bytes: int = SEGMENT_BYTES_DEFAULT,
        *,
        write_reserve_bytes: int = WRITE_RESERVE_BYTES_DEFAULT,
    ) -> None:
        """Open the log in `directory`, listing its segments without validating them.

        Raises LogLayoutError if the segment files are not contiguous or not all of
        `segment_bytes` (e.g. the log was created with another segment size).
        """
        if segment_bytes < SEGMENT_BYTES_MIN or segment_bytes > 0xFFFFFFFF:
            raise ValueError(f"segment_bytes {segment_bytes} outside [{SEGMENT_BYTES_MIN}, 2**32)")
        if write_reserve_bytes <= 0:
            raise ValueError(f"write_reserve_bytes must be positive: {write_reserve_bytes}")
        self._fs = fs
        self._dir = directory.rstrip("/") or "/"
        self._segment_bytes = segment_bytes
        self._slots: list[_Slot] = []
        self._dirty: set[int] = set()
        self._closed = False
        self._write_reserve_bytes = write_reserve_bytes
        fs.makedirs(self._dir)
        self._write_limit = self._load_write_limit()
        starts = sorted(
            int(name)
            for name in fs.listdir(self._dir)
            if len(name) == _SEGMENT_NAME_DIGITS and name.isdigit()
        )
        for i, start in enumerate(starts):
            if i > 0 and start != starts[i - 1] + segment_bytes:
                raise LogLayoutError(
                    f"{self._dir}: segment {start:020d} does not follow {starts[i - 1]:020d} "
                    f"at segment_bytes={segment_bytes}"
                )
            size = fs.file_size(self._path(start))
            # The last segment may be short if a crash cut its creation; opening extends it.
            if size > segment_bytes or (size != segment_bytes and i < len(starts) - 1):
                raise LogLayoutError(
                    f"{self._path(start)}: {size} bytes, expected segment_bytes={segment_bytes}"
                )
        try:
            for start in starts:
                seg = fs.open_segment(self._path(start), segment_bytes)
                self._slots.append(_Slot(start, seg, high_water=self._limit_in(start)))
        except BaseException:
            for slot in self._slots:
                slot.segment.close()
            raise
        self._min = starts[0] if starts else 0
        self._max = self._min
        self._flushed = self._min
        self._recovered = not starts

    # ------------------------------------------------------------------ properties

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    @property
    def min_offset(self) -> int:
        """Offset of the first byte still held (start of the oldest segment)."""
        return self._min

    @property
    def max_offset(self) -> int:
        """Where the next frame will be appended; the end of the log."""
        return self._max

    @property
    def flushed_offset(self) -> int:
        """Every byte below this offset is durable."""
        return self._flushed

    @property
    def recovered(self) -> bool:
        return self._recovered

    # ------------------------------------------------------------------ helpers

    def _path(self, start: int) -> str:
        return f"{self._dir}/{start:020d}"

    def _load_write_limit(self) -> int | None:
        """The persisted write limit, or None if absent or damaged (then: assume anything)."""
        raw = self._fs.read_bytes(f"{self._dir}/{WRITE_LIMIT_FILE}")
        if raw is None or len(raw) != _LIMIT.size:
            return None
        limit, crc = _LIMIT.unpack(raw)
        return limit if zlib.crc32(raw[:8]) == crc else None

    def _limit_in(self, start: int) -> int:
        """Relative position in the segment at `start` from which no byte was ever written."""
        if self._write_limit is None:
            return self._segment_bytes
        return max(0, min(self._segment_bytes, self._write_limit - start))

    def _reserve_writes_to(self, end: int) -> None:
        """Durably push the write limit past `end` before anything is written there.

        Truthful even when the previous limit was unknown: only a recovered log
        appends, and recovery leaves nothing but zeros past max_offset.
        """
        if self._write_limit is not None and end <= self._write_limit:
            return
        limit = end + self._write_reserve_bytes
        raw = limit.to_bytes(8, "little")
        self._fs.write_atomic(
            f"{self._dir}/{WRITE_LIMIT_FILE}", _LIMIT.pack(limit, zlib.crc32(raw))
        )
        self._write_limit = limit

    def _live(self) -> None:
        if self._closed:
            raise StorageError(f"{self._dir}: commit log is closed")
        if not self._recovered:
            raise StorageError(f"{self._dir}: existing commit log must be recover()ed before use")

    def _segment_start(self, pos: int) -> int:
        return pos - (pos - self._min) % self._segment_bytes

    def normalize(self, pos: int) -> int:
        """`pos`, or the next segment start if no frame header fits before the segment end:
        where the next frame after a frame ending at `pos` starts."""
        return self._normalize(pos)

    def _normalize(self, pos: int) -> int:
        """`pos`, or the next segment start if no frame header fits before the segment end."""
        left = self._segment_bytes - (pos - self._min) % self._segment_bytes
        return pos + left if left < BLANK_HEADER_BYTES else pos

    def _slot_at(self, pos: int) -> _Slot | None:
        """The open segment holding `pos`, or None past the last one."""
        if not self._slots:
            return None
        i = (pos - self._slots[0].start) // self._segment_bytes
        if 0 <= i < len(self._slots):
            slot = self._slots[i]
            assert slot.start <= pos < slot.start + self._segment_bytes
            return slot
        return None

    # ------------------------------------------------------------------ append

    def append(
        self, frames: Sequence[bytes | bytearray | memoryview], *, verify_crc: bool = True
    ) -> list[int]:
        """Append complete frames; return their physical start offsets.

        Each element is one whole MAGIC_MESSAGE or MAGIC_ENTRY frame (header + CRC).
        Frames are joined and written with one Segment.write per segment touched.
        Raises CorruptRecordError for a malformed frame, FrameTooLargeError for one
        that cannot fit an empty segment, DiskFullError when a needed segment cannot
        be created; in every such case nothing was written.
        """
        if not frames:
            return []
        sizes = [memoryview(f).nbytes for f in frames]
        return self.append_buffer(b"".join(frames), sizes, verify_crc=verify_crc)

    def append_buffer(
        self, buf: Buffer, sizes: Sequence[int], *, verify_crc: bool = True
    ) -> list[int]:
        """Append the frames concatenated in `buf` (sizes in order); return their offsets.

        What `encode_messages` returns goes here as is. The buffer is split only at
        segment boundaries. verify_crc=False skips re-computing each frame's CRC (the
        size and magic are still checked): for buffers whose CRCs this process has
        just computed; frames from elsewhere (replication) must be verified.
        Errors as for `append`.
        """
        self._live()
        data = memoryview(buf).cast("B")
        if not sizes:
            if data.nbytes:
                raise ValueError(f"{data.nbytes} bytes given with no frame sizes")
            return []
        self._check_frames(data, sizes, verify_crc)
        return self._place_and_write(data, sizes)

    def _check_frames(self, data: memoryview, sizes: Sequence[int], verify_crc: bool) -> None:
        """Every frame's header must match its size and be a message or entry; CRC if asked.

        A wrong size field would break the chain of frames and make recovery drop
        everything after it, so the structure is checked even when the CRC is not.
        """
        if max(sizes) > self._segment_bytes:
            raise FrameTooLargeError(
                f"frame of {max(sizes)} bytes cannot fit a {self._segment_bytes}-byte segment"
            )
        if min(sizes) < FRAME_HEADER_BYTES:
            raise CorruptRecordError(f"frame size {min(sizes)} is shorter than a frame header")
        if sum(sizes) != data.nbytes:
            raise ValueError(f"sizes add up to {sum(sizes)} bytes, buffer holds {data.nbytes}")
        unpack = _HEADER.unpack_from
        pos = 0
        for size in sizes:
            stored_size, magic, crc = unpack(data, pos)
            if stored_size != size or (magic != MAGIC_MESSAGE and magic != MAGIC_ENTRY):
                raise CorruptRecordError(
                    f"frame at buffer position {pos}: header says size {stored_size} "
                    f"magic {magic:#010x}, expected size {size} and a message or entry magic"
                )
            if verify_crc and zlib.crc32(data[pos + FRAME_HEADER_BYTES : pos + size]) != crc:
                raise CorruptRecordError(f"frame at buffer position {pos}: crc mismatch")
            pos += size

    def _place_and_write(self, data: memoryview, sizes: Sequence[int]) -> list[int]:
        seg_bytes = self._segment_bytes
        pos = self._max
        seg_end = self._segment_start(pos) + seg_bytes
        total = data.nbytes
        # runs: (log position, buffer start, buffer end), one per segment touched.
        blanks: list[int] = []
        if pos + total <= seg_end:
            offsets = list(itertools.accumulate(sizes, initial=pos))
            offsets.pop()
            runs = [(pos, 0, total)]
            end = pos + total
        else:
            offsets = []
            runs = []
            run_pos, run_buf = pos, 0
            buf_pos = 0
            for size in sizes:
                if pos + size > seg_end:
                    if buf_pos > run_buf:
                        runs.append((run_pos, run_buf, buf_pos))
                    if seg_end - pos >= BLANK_HEADER_BYTES:
                        blanks.append(pos)
                    pos = seg_end
                    seg_end += seg_bytes
                    run_pos, run_buf = pos, buf_pos
                offsets.append(pos)
                pos += size
                buf_pos += size
            runs.append((run_pos, run_buf, buf_pos))
            end = pos
        assert offsets[0] >= self._max and end > offsets[-1]
        self._reserve_writes_to(end)
        self._ensure_segments(self._segment_start(end - 1))
        # Nothing has been written yet; from here on only I/O errors can interrupt.
        for blank in blanks:
            slot = self._slot_at(blank)
            assert slot is not None
            rel = blank - slot.start
            slot.segment.write(rel, blank_header(seg_bytes - rel))
            slot.high_water = max(slot.high_water, rel + BLANK_HEADER_BYTES)
            self._dirty.add(slot.start)
        for run_pos, start, stop in runs:
            slot = self._slot_at(run_pos)
            assert slot is not None and run_pos + (stop - start) <= slot.start + seg_bytes
            rel = run_pos - slot.start
            slot.segment.write(rel, data[start:stop])
            slot.high_water = max(slot.high_water, rel + stop - start)
            self._dirty.add(slot.start)
        self._max = self._normalize(end)
        return offsets

    def _ensure_segments(self, last_start: int) -> None:
        """Create every segment up to the one starting at `last_start`, or none of them."""
        created: list[_Slot] = []
        next_start = self._slots[-1].start + self._segment_bytes if self._slots else self._min
        try:
            while next_start <= last_start:
                path = self._path(next_start)
                seg = self._fs.open_segment(path, self._segment_bytes)
                slot = _Slot(next_start, seg, high_water=0)
                created.append(slot)
                self._slots.append(slot)
                next_start += self._segment_bytes
        except BaseException:
            # DiskFullError most likely; whatever it was, the log must look untouched.
            for slot in reversed(created):
                self._slots.pop()
                slot.segment.close()
                with contextlib.suppress(OSError):  # an empty leftover is dropped by recovery
                    self._fs.remove(self._path(slot.start))
            raise

    # ------------------------------------------------------------------ read

    def read(self, offset: int, size: int) -> memoryview:
        """A view of `size` bytes at `offset`, inside [min_offset, max_offset) and one segment."""
        self._live()
        if size < 0 or offset < self._min or offset >= self._max or offset + size > self._max:
            raise OffsetOutOfRangeError(
                f"read [{offset}, {offset + size}) outside [{self._min}, {self._max})"
            )
        slot = self._slot_at(offset)
        assert slot is not None
        rel = offset - slot.start
        if rel + size > self._segment_bytes:
            raise OffsetOutOfRangeError(
                f"read [{offset}, {offset + size}) crosses the end of segment {slot.start:020d}"
            )
        return slot.segment.read(rel, size)

    def frame_at(self, offset: int, *, verify_crc: bool = True) -> tuple[memoryview, int]:
        """The validated frame at `offset` and the offset of the frame after it.

        For a blank filler the view is its 8-byte header and the next offset is the
        next segment start. Raises OffsetOutOfRangeError if `offset` is outside the
        log or where no frame can start, CorruptRecordError if the frame is invalid
        (corruption after recovery: bit rot, or a caller offset that is not a frame
        boundary).
        """
        self._live()
        if offset < self._min or offset >= self._max:
            raise OffsetOutOfRangeError(f"offset {offset} outside [{self._min}, {self._max})")
        slot = self._slot_at(offset)
        assert slot is not None
        rel = offset - slot.start
        left = self._segment_bytes - rel
        if left < BLANK_HEADER_BYTES:
            raise OffsetOutOfRangeError(
                f"offset {offset} is too close to its segment end for a frame"
            )
        seg = slot.segment
        size, magic = _SIZE_MAGIC.unpack_from(seg.read(rel, BLANK_HEADER_BYTES), 0)
        if magic == MAGIC_BLANK:
            if size != left:
                raise CorruptRecordError(
                    f"blank filler at {offset}: size {size}, segment has {left}"
                )
            return seg.read(rel, BLANK_HEADER_BYTES), slot.start + self._segment_bytes
        limit = min(left, self._max - offset)
        if size < FRAME_HEADER_BYTES or size > limit:
            raise CorruptRecordError(f"frame at {offset}: size {size} outside [12, {limit}]")
        view = seg.read(rel, size)
        if verify_crc:
            check_frame(view)
        elif magic != MAGIC_MESSAGE and magic != MAGIC_ENTRY:
            raise CorruptRecordError(f"frame at {offset}: bad magic {magic:#010x}")
        return view, self._normalize(offset + size)

    def iter_frames(
        self, start: int | None = None, end: int | None = None, *, verify_crc: bool = True
    ) -> Iterator[tuple[int, memoryview]]:
        """Yield (offset, frame view) for every non-blank frame starting in [start, end).

        `start` (default min_offset) must be a frame boundary or the end of a frame (which
        may sit in a segment tail too short for another frame); `end` defaults to
        max_offset as it is when each frame is fetched.
        """
        pos = self._min if start is None else self._normalize(start)
        while pos < (self._max if end is None else min(end, self._max)):
            view, nxt = self.frame_at(pos, verify_crc=verify_crc)
            if _SIZE_MAGIC.unpack_from(view, 0)[1] != MAGIC_BLANK:
                yield pos, view
            pos = nxt

    # ------------------------------------------------------------------ flush

    def flush(self) -> int:
        """Sync every segment with unsynced bytes, oldest first; return flushed_offset.

        If a sync fails the error propagates, that segment stays dirty and
        flushed_offset covers only the segments synced before it. Treat it as fatal:
        after a failed fsync the kernel may have dropped the dirty pages.
        """
        if self._closed:
            raise StorageError(f"{self._dir}: commit log is closed")
        for start in sorted(self._dirty):
            slot = self._slot_at(start)
            assert slot is not None and slot.start == start
            try:
                slot.segment.sync()
            except BaseException:
                self._flushed = max(self._flushed, min(start, self._max))
                raise
            self._dirty.discard(start)
        self._flushed = self._max
        return self._flushed

    def prepare_flush(self) -> FlushPlan:
        """First half of a flush whose fsyncs run off the caller's thread.

        Captures the target (today's max offset) and the segments to sync, and marks
        them clean: bytes appended afterwards dirty them again and wait for the next
        plan. `FlushPlan.sync` may then run in a worker thread while appends go on;
        `complete_flush` (back on the owning thread) publishes the new flushed offset.
        The owner must not truncate or delete segments while a plan is in flight.
        """
        if self._closed:
            raise StorageError(f"{self._dir}: commit log is closed")
        starts = sorted(self._dirty)
        segments = []
        for start in starts:
            slot = self._slot_at(start)
            assert slot is not None and slot.start == start
            segments.append(slot.segment)
        self._dirty.clear()
        return FlushPlan(self._max, tuple(starts), tuple(segments))

    def complete_flush(self, plan: FlushPlan) -> int:
        """Second half: every byte below `plan.target` is durable once `plan.sync` returned."""
        if not plan.synced:
            self._dirty.update(plan.starts)
            return self._flushed
        self._flushed = max(self._flushed, min(plan.target, self._max))
        return self._flushed

    @property
    def dirty_segments(self) -> list[int]:
        """Start offsets of segments holding unsynced bytes (what `flush` will sync)."""
        return sorted(self._dirty)

    # ------------------------------------------------------------------ truncate / recover

    def truncate(self, offset: int) -> None:
        """Drop every byte at or after `offset` (a frame boundary in [min, max]), durably.

        Used when Raft finds a conflicting uncommitted tail. The dropped bytes in
        `offset`'s segment are zero-filled and later segments deleted; everything is
        synced before returning, so flushed_offset == max_offset == offset after.
        """
        self._live()
        if offset < self._min or offset > self._max:
            raise OffsetOutOfRangeError(f"truncate to {offset} outside [{self._min}, {self._max}]")
        if offset == self._max:
            return
        slot = self._slot_at(offset)
        assert slot is not None
        rel = offset - slot.start
        if self._segment_bytes - rel < BLANK_HEADER_BYTES:
            raise ValueError(f"truncate to {offset}: not a frame boundary (segment tail)")
        magic = _SIZE_MAGIC.unpack_from(slot.segment.read(rel, BLANK_HEADER_BYTES), 0)[1]
        if magic not in (MAGIC_MESSAGE, MAGIC_ENTRY, MAGIC_BLANK):
            raise ValueError(f"truncate to {offset}: not a frame boundary (magic {magic:#010x})")
        self._drop_from(offset)
        self.flush()

    def _drop_from(self, pos: int) -> tuple[int, tuple[int, ...]]:
        """Zero-fill [pos, segment end) where non-zero, delete later segments; set max.

        Returns (bytes zero-filled, starts of deleted segments). The caller syncs.
        """
        deleted: list[int] = []
        slot = self._slot_at(pos)
        keep = len(self._slots) if slot is None else self._slots.index(slot) + 1
        if slot is not None and pos == slot.start and keep > 1:
            keep -= 1  # an emptied segment other than the first is deleted, not zero-filled
            slot = None
        for dropped in reversed(self._slots[keep:]):
            dropped.segment.close()
            self._fs.remove(self._path(dropped.start))
            self._dirty.discard(dropped.start)
            deleted.append(dropped.start)
        del self._slots[keep:]
        zeroed = 0
        if slot is not None:
            rel = pos - slot.start
            stop = self._nonzero_end(slot, rel, slot.high_water)
            zeroed = stop - rel
            at = rel
            while at < stop:
                n = min(_ZERO_CHUNK_BYTES, stop - at)
                slot.segment.write(at, bytes(n))
                at += n
            if zeroed:
                self._dirty.add(slot.start)
            slot.high_water = rel
        self._max = self._normalize(pos)
        self._flushed = min(self._flushed, self._max)
        deleted.reverse()
        return zeroed, tuple(deleted)

    def _nonzero_end(self, slot: _Slot, lo: int, hi: int) -> int:
        """The end of the last non-zero byte in [lo, hi) of `slot`, or lo if all zero."""
        end = min(hi, self._segment_bytes)
        while end > lo:
            start = max(lo, end - _SCAN_CHUNK_BYTES)
            tail = bytes(slot.segment.read(start, end - start)).rstrip(b"\0")
            if tail:
                return start + len(tail)
            end = start
        return lo

    def recover(self, from_offset: int) -> RecoveryReport:
        """Validate frames from `from_offset` to the first invalid one and cut the log there.

        `from_offset` must be a frame boundary or a segment start at or below the last
        durable frame (the checkpointed flushed offset, or its segment start); it is
        clamped into the segments present. Frames before it are trusted. The scan
        stops at an all-zero header (the end) or at the first frame with a bad size,
        magic or CRC; everything from there on is dropped as by `truncate`, and all
        scanned segments are synced (a killed process may have left valid frames only
        in the page cache), so flushed_offset == max_offset afterwards. Never raises
        for bad bytes; returns what it did for the caller to log.
        """
        if self._closed:
            raise StorageError(f"{self._dir}: commit log is closed")
        if not self._slots:
            self._recovered = True
            return RecoveryReport(self._min, self._min, 0, "end", 0, ())
        last_end = self._slots[-1].start + self._segment_bytes
        pos = self._normalize(max(self._min, min(from_offset, last_end)))
        scanned_from = pos
        frames = 0
        reason = "end"
        filler_before: int | None = None  # the blank filler that ended the last segment
        while pos < last_end:
            slot = self._slot_at(pos)
            assert slot is not None
            rel = pos - slot.start
            self._dirty.add(slot.start)
            count, stop, reason, filler_at = self._scan_segment(slot, rel)
            frames += count
            pos = slot.start + stop
            if reason:
                if count == 0 and rel == 0 and filler_before is not None:
                    # The frame the filler made room for did not survive: the filler
                    # goes too, so the log ends where it would have without that
                    # append (a replica that never had the frame ends there too, and
                    # the next frame must land at the same offset on both).
                    pos = filler_before
                break
            filler_before = filler_at
            pos = self._normalize(pos)
        else:
            reason = "end"
        zeroed, deleted = self._drop_from(pos)
        self._recovered = True
        self.flush()
        return RecoveryReport(scanned_from, self._max, frames, reason, zeroed, deleted)

    def _scan_segment(self, slot: _Slot, rel: int) -> tuple[int, int, str, int | None]:
        """Walk valid frames of `slot` from `rel`: (frames, stop position, reason or "",
        log offset of the blank filler that ends the segment or None).

        An empty reason means the segment was valid to its end (blank filler, exact
        fill, or a tail too short for a header) and the scan goes on to the next one.
        """
        seg_bytes = self._segment_bytes
        view = slot.segment.read(rel, seg_bytes - rel)
        left_total = seg_bytes - rel
        p = 0
        frames = 0
        reason = ""
        filler_at: int | None = None
        while True:
            left = left_total - p
            if left < BLANK_HEADER_BYTES:
                p = left_total
                break
            size, magic = _SIZE_MAGIC.unpack_from(view, p)
            if magic == MAGIC_BLANK:
                if size != left:
                    reason = f"blank filler size {size}, {left} bytes left in segment"
                    break
                # A sealed segment: nothing was written past its blank header.
                slot.high_water = min(slot.high_water, rel + p + BLANK_HEADER_BYTES)
                filler_at = slot.start + rel + p
                p = left_total
                break
            if magic != MAGIC_MESSAGE and magic != MAGIC_ENTRY:
                header = bytes(view[p : p + min(left, FRAME_HEADER_BYTES)])
                reason = "end" if not any(header) else f"bad magic {magic:#010x}"
                break
            if size < FRAME_HEADER_BYTES or size > left:
                reason = f"bad size {size}"
                break
            (crc,) = _U32.unpack_from(view, p + 8)
            if zlib.crc32(view[p + FRAME_HEADER_BYTES : p + size]) != crc:
                reason = "crc mismatch"
                break
            frames += 1
            p += size
        return frames, rel + p, reason, filler_at

    # ------------------------------------------------------------------ retention

    def segments(self) -> list[tuple[int, int]]:
        """(start, end) of each segment, oldest first; end is capped at max_offset."""
        return [
            (s.start, max(s.start, min(s.start + self._segment_bytes, self._max)))
            for s in self._slots
        ]

    def delete_first_segment(self) -> bool:
        """Delete the oldest segment unless it is the only (active) one; True if deleted."""
        self._live()
        if len(self._slots) < 2:
            return False
        slot = self._slots.pop(0)
        slot.segment.close()
        self._fs.remove(self._path(slot.start))
        self._dirty.discard(slot.start)
        self._min = self._slots[0].start
        self._flushed = max(self._flushed, self._min)
        assert self._min <= self._flushed <= self._max
        return True

    def reset(self, offset: int) -> None:
        """Drop every segment and go on, empty, at `offset`, durably.

        For a replica that installs a snapshot instead of the log before it: it must
        hold no frame, yet its next frame must land at the same physical offset as on
        the leader (`offset` is the leader's min offset), or the replicas' logs (and
        every offset derived from them) would differ. `offset` must be a multiple of
        segment_bytes: segment starts and the dispatcher's segment ends are computed
        from absolute offsets. The new segment is created (and synced) empty, so the
        log reopens with min_offset == max_offset == `offset`. Segments are deleted
        oldest first, as by retention: a crash part way leaves a contiguous log that
        opens (and a new empty one if all were gone), and calling `reset` again finishes
        the job. The write limit stays as it is: it only bounds bytes ever written, and
        the new segment holds none. No FlushPlan may be in flight.
        """
        if self._closed:
            raise StorageError(f"{self._dir}: commit log is closed")
        if offset < 0 or offset % self._segment_bytes:
            raise ValueError(
                f"reset to {offset}: not a non-negative multiple of segment_bytes "
                f"{self._segment_bytes}"
            )
        while self._slots:
            slot = self._slots[0]
            slot.segment.close()
            self._fs.remove(self._path(slot.start))
            self._dirty.discard(slot.start)
            self._slots.pop(0)
        # Coherent from here on: appends would create the segment at `offset` themselves.
        self._min = self._max = self._flushed = offset
        self._recovered = True
        segment = self._fs.open_segment(self._path(offset), self._segment_bytes)
        self._slots.append(_Slot(offset, segment, high_water=0))
        segment.sync()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every segment. Does not flush: call flush() first for a clean shutdown."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            slot.segment.close()
