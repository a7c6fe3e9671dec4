"""ConsumeQueue: the per (topic, queue id) index that makes the CommitLog pullable.

The CommitLog holds every message of every topic in commit order. A consumer of one
queue must not scan it; instead the dispatcher appends, for each committed message, a
fixed-size *unit* to that message's ConsumeQueue, at the next queue offset. A pull is
then two O(1) steps: unit = queue[offset], record = commitlog[unit.commit_offset].

File layout (little-endian), under ``<root>/<topic>/<queue_id>/``::

    segment file  = units_per_segment units of UNIT_BYTES, sparse (a hole reads as zeros)
    name          = 20-digit zero-padded queue offset of the segment's first unit,
                    always a multiple of units_per_segment
    unit (20 B)   = commit_offset u64 | size u32 | tag_hash u64
    size == 0     = "no unit here" (a fresh segment is all zeros)
    blank unit    = (0, 0xFFFFFFFF, 0): a queue offset that holds no message; see ``reset``

Contracts:

* Queue offsets are dense: ``[min_offset, max_offset)`` are all present units, and
  ``put`` only appends at ``max_offset``. Commit offsets strictly increase with queue
  offset (one queue's messages are dispatched in commit order), which is what lets
  ``truncate_to_commit_offset`` and ``delete_before_commit_offset`` binary-search.
* Durability: units are durable once ``flush()`` returned. Rolling to a new segment
  syncs the full one first, so after a crash only the last segment holding data can
  have a torn or missing tail; opening cuts the queue at the first missing unit, so
  what survives is always a contiguous prefix of what was put.
* A torn last unit can still look plausible (its commit offset landed, its size or tag
  hash only partly). ``recover`` drops units that point past the CommitLog's end and,
  given ``unit_matches``, units the CommitLog does not confirm. The store's recovery
  recipe is: open, ``recover(commitlog_max, unit_matches)``, then
  ``truncate_to_commit_offset(resume)`` and re-dispatch from ``resume``; because queue
  offsets are assigned in commit order, re-dispatch rebuilds byte-identical units.
* ``min_offset`` after opening is the first unit on disk past any blanks; retention
  state is not persisted here, so the store re-applies ``delete_before_commit_offset``
  with the CommitLog's min offset after opening.
* Blank units exist only as a prefix of the first segment (if at all), written by
  ``reset`` so that a queue can start at a queue offset other than 0 and still reopen
  there. They are never served (``min_offset`` is always past them), count as older
  than any message (commit offset "below 0" for the binary searches), end at commit
  offset 0 for the commit-order check, and are never dropped as torn. ``put`` refuses
  size 0xFFFFFFFF, so a real unit, whole or torn (a torn write leaves a prefix of the
  unit followed by the zeros it was written over), never reads as a blank.
* Truncation is rare (recovery only) and synced when it returns. It is not atomic
  across a crash, but every intermediate state is a contiguous prefix whose only
  possibly damaged unit is the last, which ``recover(..., unit_matches)`` drops; and
  repeating it is harmless, which the recovery recipe does.
* The torn-write reasoning assumes what the simulated disk does: a file's unsynced
  writes land in order and the first lost one may be cut at any byte. A real disk
  may also land pages out of order; opening still cuts at the first missing unit.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from itertools import pairwise
from typing import NamedTuple

from storage.files import FileSystem, Segment

UNIT_BYTES = 20
UNITS_PER_SEGMENT_DEFAULT = 300_000
SEGMENT_NAME_DIGITS = 20
QUEUE_ID_MAX = 65_535
TOPIC_BYTES_MAX = 255

_UNIT = struct.Struct("<QIQ")
assert _UNIT.size == UNIT_BYTES
_ZERO_UNIT = bytes(UNIT_BYTES)
BLANK_SIZE = 0xFFFF_FFFF
"""The size field of a blank unit. No real unit has it (``put`` refuses it), so the size
alone tells a blank."""
# A unit seen as five u32 words: the size field is word 2.
_UNIT_WORDS = UNIT_BYTES // 4
_SIZE_WORD = 2


def _parent_dir(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."


class ConsumeQueueError(ValueError):
    """The files under a queue directory do not form a valid ConsumeQueue."""


class Unit(NamedTuple):
    """One ConsumeQueue entry: where a message sits in the CommitLog."""

    commit_offset: int
    size: int
    tag_hash: int


BLANK_UNIT = Unit(0, BLANK_SIZE, 0)
"""RocketMQ's pre-blank (commitLogOffset 0, size Integer.MAX_VALUE, tags 0): a queue
offset before the queue's first message, written by ``ConsumeQueue.reset``."""
_BLANK_BYTES = _UNIT.pack(*BLANK_UNIT)


# Builds a Unit from an unpacked tuple without the Python-level frame of Unit._make:
# get_range builds 32 of them per pull, and this is a third of its cost.
_unit_from_tuple: Callable[[tuple[int, int, int]], Unit] = partial(tuple.__new__, Unit)

UnitMatches = Callable[[int, Unit], bool]
"""(queue_offset, unit) -> does the CommitLog hold this message at this queue offset?"""

StoreTimeOf = Callable[[int, int], int | None]
"""(commit_offset, size) -> store timestamp in ms, or None if no longer readable."""


def segment_name(first_queue_offset: int) -> str:
    """The file name of the segment whose first unit has this queue offset."""
    return f"{first_queue_offset:0{SEGMENT_NAME_DIGITS}d}"


def validate_topic(topic: str) -> None:
    """Reject topic names that could escape or collide in the directory tree."""
    if (
        not topic
        or topic in (".", "..")
        or "/" in topic
        or "\0" in topic
        or len(topic.encode("utf-8")) > TOPIC_BYTES_MAX
    ):
        raise ValueError(f"invalid topic name {topic!r}")


def validate_queue(topic: str, queue_id: int) -> None:
    """Reject a (topic, queue id) that has no ConsumeQueue directory of its own."""
    validate_topic(topic)
    if not 0 <= queue_id <= QUEUE_ID_MAX:
        raise ValueError(f"queue id {queue_id} outside [0, {QUEUE_ID_MAX}]")


def validate_queue_next(queue_next: Mapping[tuple[str, int], int]) -> None:
    """Check a ``ConsumeQueueSet.reset`` argument whole, before anything is deleted."""
    for (topic, queue_id), next_offset in queue_next.items():
        validate_queue(topic, queue_id)
        if next_offset < 0:
            raise ValueError(f"{topic}/{queue_id}: next queue offset {next_offset} < 0")


def _first_zero_size(data: memoryview | bytes, unit_count: int) -> int:
    """Index of the first unit with size 0 among ``unit_count`` units, or unit_count.

    Runs in C (array slicing and index) because opening a queue scans up to a whole
    segment, 300k units by default.
    """
    words = array("I")
    assert words.itemsize == 4
    words.frombytes(data[: unit_count * UNIT_BYTES])
    if sys.byteorder != "little":
        words.byteswap()
    try:
        return words[_SIZE_WORD::_UNIT_WORDS].index(0)
    except ValueError:
        return unit_count


class _SegmentRef(NamedTuple):
    base: int
    segment: Segment


class ConsumeQueue:
    """The units of one (topic, queue id); see the module docstring for the contract.

    Opening reads the directory, cuts any torn or missing tail, and leaves the queue
    ready for ``put``; call ``recover`` before serving reads after a crash.
    """

    def __init__(
        self,
        fs: FileSystem,
        root: str,
        topic: str,
        queue_id: int,
        units_per_segment: int = UNITS_PER_SEGMENT_DEFAULT,
    ) -> None:
        validate_queue(topic, queue_id)
        if units_per_segment < 1:
            raise ValueError(f"units_per_segment must be positive, got {units_per_segment}")
        self._fs = fs
        self.topic = topic
        self.queue_id = queue_id
        self.directory = f"{root}/{topic}/{queue_id}"
        self._units = units_per_segment
        self._segment_bytes = units_per_segment * UNIT_BYTES
        # Contiguous segments, oldest first; _segments[i].base == _first_base + i * _units.
        self._segments: list[_SegmentRef] = []
        self._first_base = 0
        self._min = 0
        self._max = 0
        self._flushed = 0
        self._dirty = False
        # Directories holding names `_roll` created that `flush` has not synced yet.
        self._unsynced_dirs: set[str] = set()
        # Cached tail: the segment _max lives in, or the one it just filled.
        self._tail: Segment | None = None
        self._tail_base = 0
        self._tail_end = 0
        # commit_offset + size of the last unit: the next unit must start at or past it.
        self._commit_end = 0
        self._open()

    # ------------------------------------------------------------------ state

    @property
    def min_offset(self) -> int:
        """The first queue offset a reader may ask for."""
        return self._min

    @property
    def max_offset(self) -> int:
        """The next queue offset to assign; units exist for [min_offset, max_offset)."""
        return self._max

    @property
    def flushed_offset(self) -> int:
        """Units below this queue offset are durable."""
        return self._flushed

    @property
    def dirty(self) -> bool:
        """Whether units were written, or files created, since the last flush."""
        return self._dirty or bool(self._unsynced_dirs)

    @property
    def units_per_segment(self) -> int:
        return self._units

    def segment_bases(self) -> list[int]:
        """Queue offsets of the first unit of each segment on disk, oldest first."""
        return [ref.base for ref in self._segments]

    # ------------------------------------------------------------------ append

    def put(self, queue_offset: int, commit_offset: int, size: int, tag_hash: int) -> None:
        """Append one unit at ``queue_offset``, which must be ``max_offset``.

        Raises DiskFullError (state unchanged) when a new segment cannot be reserved.
        """
        assert queue_offset == self._max, (
            f"{self.directory}: put at {queue_offset}, expected {self._max}"
        )
        assert 0 < size < BLANK_SIZE, "size 0 reads back as 'no unit', 0xFFFFFFFF as a blank"
        assert commit_offset >= self._commit_end, "units of one queue must follow commit order"
        if queue_offset == self._tail_end:
            self._roll()
        tail = self._tail
        assert tail is not None
        tail.pack_into(
            _UNIT, (queue_offset - self._tail_base) * UNIT_BYTES, commit_offset, size, tag_hash
        )
        self._max = queue_offset + 1
        self._commit_end = commit_offset + size
        self._dirty = True

    def put_many(self, queue_offset: int, units: Sequence[tuple[int, int, int]]) -> None:
        """Append consecutive units starting at ``queue_offset`` with one write per segment.

        Each item is (commit_offset, size, tag_hash). If a new segment cannot be
        reserved, DiskFullError propagates after the units that fit were appended;
        ``max_offset`` says how many.
        """
        assert queue_offset == self._max, (
            f"{self.directory}: put at {queue_offset}, expected {self._max}"
        )
        done = 0
        total = len(units)
        while done < total:
            if self._max == self._tail_end:
                self._roll()
            tail = self._tail
            assert tail is not None
            count = min(total - done, self._tail_end - self._max)
            chunk = bytearray(count * UNIT_BYTES)
            commit_end = self._commit_end
            pos = 0
            for commit_offset, size, tag_hash in units[done : done + count]:
                assert 0 < size < BLANK_SIZE, "size 0 is 'no unit', 0xFFFFFFFF a blank"
                assert commit_offset >= commit_end, "units of one queue must follow commit order"
                _UNIT.pack_into(chunk, pos, commit_offset, size, tag_hash)
                commit_end = commit_offset + size
                pos += UNIT_BYTES
            tail.write((self._max - self._tail_base) * UNIT_BYTES, chunk)
            self._max += count
            self._commit_end = commit_end
            self._dirty = True
            done += count

    def _roll(self) -> None:
        """Open the segment starting at ``_tail_end``, syncing the full one first.

        Syncing the full segment before the first write to the next one is what lets
        opening assume every segment but the last one with data is complete.
        """
        base = self._tail_end
        assert base % self._units == 0
        # The new names (topic and queue directories, the file) become durable with the
        # units at the next `flush`, which a checkpoint runs off the event loop: each
        # directory fsync here cost a dispatch 1-5 ms per new queue.
        directory = self.directory.rstrip("/")
        self._unsynced_dirs.update(self._fs.makedirs(directory, durable=False))
        if self._tail is not None and self._dirty:
            self._tail.sync()
            self._flushed = self._max
            self._dirty = False
        segment = self._fs.open_segment(
            f"{self.directory}/{segment_name(base)}",
            self._segment_bytes,
            sparse=True,
            durable=False,
        )
        self._unsynced_dirs.add(directory)
        if not self._segments:
            self._first_base = base
        self._segments.append(_SegmentRef(base, segment))
        self._set_tail()

    def _set_tail(self) -> None:
        if self._segments:
            ref = self._segments[-1]
            self._tail = ref.segment
            self._tail_base = ref.base
            self._tail_end = ref.base + self._units
        else:
            self._tail = None
            self._tail_base = self._tail_end = self._first_base

    # ------------------------------------------------------------------ read

    def get(self, queue_offset: int) -> Unit | None:
        """The unit at ``queue_offset``, or None outside [min_offset, max_offset). O(1)."""
        if not self._min <= queue_offset < self._max:
            return None
        return self._read_unit(queue_offset)

    def _read_unit(self, queue_offset: int) -> Unit:
        """Any unit physically present, including those below ``min_offset``."""
        units = self._units
        ref = self._segments[queue_offset // units - self._first_base // units]
        pos = (queue_offset - ref.base) * UNIT_BYTES
        return _unit_from_tuple(_UNIT.unpack_from(ref.segment.read(pos, UNIT_BYTES)))

    def get_range(self, queue_offset: int, max_count: int) -> list[Unit]:
        """Up to ``max_count`` units from ``queue_offset``, one read per segment touched.

        Empty when ``queue_offset`` is outside [min_offset, max_offset): the caller
        compares with the bounds to tell "too small" from "nothing new yet".
        """
        if not self._min <= queue_offset < self._max or max_count <= 0:
            return []
        end = min(self._max, queue_offset + max_count)
        units = self._units
        first_index = self._first_base // units
        result: list[Unit] = []
        offset = queue_offset
        while offset < end:
            ref = self._segments[offset // units - first_index]
            stop = min(end, ref.base + units)
            view = ref.segment.read((offset - ref.base) * UNIT_BYTES, (stop - offset) * UNIT_BYTES)
            result.extend(map(_unit_from_tuple, _UNIT.iter_unpack(view)))
            del view
            offset = stop
        return result

    def last_unit(self) -> Unit | None:
        """The newest unit on disk, even if retention moved ``min_offset`` past it; None
        if there is none or only blanks (they are a prefix, so the newest tells).

        The dispatcher uses it to tell how far this queue got in the CommitLog, the
        commit-order check to tell where the next unit may start: a blank says nothing
        of the CommitLog, so it must not count as a message there (at commit offset 0
        it would make a resuming dispatch skip the message at 0; its size would put
        its end 4 GiB out).
        """
        if self._max == self._first_base:
            return None
        unit = self._read_unit(self._max - 1)
        return None if unit.size == BLANK_SIZE else unit

    def offset_for_timestamp(self, ts_ms: int, store_time_of: StoreTimeOf) -> int:
        """The first queue offset whose message was stored at or after ``ts_ms``.

        Binary search, so O(log n) calls of ``store_time_of``; it assumes store times
        do not decrease along the queue (the leader stamps them in commit order) and
        treats a message that is no longer readable as older than any ``ts_ms``.
        Returns ``max_offset`` when every message is older.
        """
        lo, hi = self._min, self._max
        while lo < hi:
            mid = (lo + hi) // 2
            unit = self._read_unit(mid)
            if unit.size == BLANK_SIZE:  # older than any message (min_offset is past them)
                lo = mid + 1
                continue
            stored_ms = store_time_of(unit.commit_offset, unit.size)
            if stored_ms is None or stored_ms < ts_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _first_at_or_after_commit_offset(self, commit_offset: int, lo: int) -> int:
        """The first queue offset in [lo, max_offset) whose unit starts at or past it.

        Blanks count as starting below any commit offset, 0 included: they come before
        every message of the queue, so the search stays a search over sorted keys, and
        neither retention nor truncation ever lands ``min_offset`` on one.
        """
        hi = self._max
        while lo < hi:
            mid = (lo + hi) // 2
            unit = self._read_unit(mid)
            if unit.size == BLANK_SIZE or unit.commit_offset < commit_offset:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _past_blanks(self) -> int:
        """The first queue offset on disk that is not a blank (one read when none is)."""
        if self._max == self._first_base or self._read_unit(self._first_base).size != BLANK_SIZE:
            return self._first_base
        return self._first_at_or_after_commit_offset(0, self._first_base)

    # ------------------------------------------------------------------ durability

    def flush(self, names: set[str] | None = None) -> None:
        """Make every unit put so far durable (one sync of the tail at most), and the
        names of the files and directories `_roll` created. With `names`, the
        directories to sync are added to it instead, for the caller to sync once for
        many queues (a checkpoint after a burst of new topics) before relying on them."""
        if self._dirty:
            assert self._tail is not None
            self._tail.sync()
            self._dirty = False
        if names is None:
            self._sync_names()
        else:
            names |= self._unsynced_dirs
            self._unsynced_dirs.clear()
        self._flushed = self._max

    def names_not_synced(self, names: set[str]) -> None:
        """`flush(names)` handed these directories over and syncing them failed (no file
        descriptor was left): this queue keeps them, so the next flush syncs them before
        anything relies on them."""
        self._unsynced_dirs |= names

    def _sync_names(self, *also: str) -> None:
        for d in sorted(self._unsynced_dirs.union(also)):
            self._fs.sync_dir(d)
        self._unsynced_dirs.clear()

    def close(self) -> None:
        """Release the segment handles; the queue must not be used afterwards."""
        for ref in self._segments:
            ref.segment.close()
        self._segments.clear()
        self._tail = None

    # ------------------------------------------------------------------ open and recovery

    def _open(self) -> None:
        names = self._fs.listdir(self.directory)
        bases: list[int] = []
        for name in names:
            if len(name) != SEGMENT_NAME_DIGITS or not name.isdigit():
                continue
            base = int(name)
            if base % self._units:
                raise ConsumeQueueError(
                    f"{self.directory}/{name}: not a multiple of {self._units} units per segment"
                )
            bases.append(base)
        bases.sort()
        for prev, base in pairwise(bases):
            if base != prev + self._units:
                raise ConsumeQueueError(
                    f"{self.directory}: segment missing between {prev} and {base}"
                )
        for base in bases:
            path = f"{self.directory}/{segment_name(base)}"
            actual = self._fs.file_size(path)
            if actual != self._segment_bytes:
                raise ConsumeQueueError(
                    f"{path}: {actual} bytes, expected {self._segment_bytes} "
                    f"({self._units} units per segment)"
                )
            self._segments.append(
                _SegmentRef(base, self._fs.open_segment(path, self._segment_bytes, sparse=True))
            )
        if not self._segments:
            return
        self._first_base = self._segments[0].base
        end = self._physical_end()
        self._max = end
        self._cut_after(end)
        self._min = self._past_blanks()
        self._flushed = self._max
        self._after_tail_change()

    def _physical_end(self) -> int:
        """The queue offset of the first missing unit.

        Every segment but the last was synced full before the next one was written,
        so a missing last unit is enough to find the one that can have a gap (only
        damage or a crash of a simulated disk that lands files independently leaves
        one). The last segment was never synced full, so it is scanned unit by unit:
        its first unit of size 0 ends the queue, whatever lies beyond.
        """
        last_pos = (self._units - 1) * UNIT_BYTES
        for ref in self._segments[:-1]:
            if _UNIT.unpack_from(ref.segment.read(last_pos, UNIT_BYTES))[1] == 0:
                return ref.base + self._first_hole(ref.segment)
        ref = self._segments[-1]
        return ref.base + self._first_hole(ref.segment)

    def _first_hole(self, segment: Segment) -> int:
        data = segment.read(0, self._segment_bytes)
        try:
            return _first_zero_size(data, self._units)
        finally:
            del data

    def _after_tail_change(self) -> None:
        self._set_tail()
        last = self.last_unit()
        self._commit_end = 0 if last is None else last.commit_offset + last.size

    def _cut_after(self, queue_offset: int) -> None:
        """Remove every unit at or past ``queue_offset`` from disk, durably.

        Segments wholly past it are deleted newest first; then the rest of the segment
        holding it is zeroed one unit at a time, newest first, and synced. A crash part
        way leaves a shorter prefix whose only damaged unit is the last one (a torn
        zeroing clears its front and keeps its size), which is what ``recover`` checks.
        One write for the whole range would instead leave a damaged unit in the middle.
        """
        assert self._segments
        assert self._first_base <= queue_offset
        while len(self._segments) > 1 and self._segments[-1].base >= queue_offset:
            ref = self._segments.pop()
            ref.segment.close()
            self._fs.remove(ref.segment.path)
        ref = self._segments[-1]
        start = queue_offset - ref.base
        if start >= self._units:
            return
        rest = ref.segment.read(start * UNIT_BYTES, (self._units - start) * UNIT_BYTES)
        used_units = (len(bytes(rest).rstrip(b"\0")) + UNIT_BYTES - 1) // UNIT_BYTES
        del rest
        if used_units:
            for unit in range(start + used_units - 1, start - 1, -1):
                ref.segment.write(unit * UNIT_BYTES, _ZERO_UNIT)
            ref.segment.sync()

    def recover(self, commit_max_offset: int, unit_matches: UnitMatches | None = None) -> None:
        """Drop the tail of units the CommitLog cannot back, durably.

        Scans back from the newest unit and drops it while its message would end past
        ``commit_max_offset`` (the CommitLog's valid end after its own recovery) or,
        when given, ``unit_matches(queue_offset, unit)`` says the CommitLog holds a
        different message there. The latter is what catches a torn last unit whose
        commit offset landed but whose size or tag hash did not. The scan stops at a
        blank: no torn unit reads as one (see the module docstring), and it has no
        message for the CommitLog to confirm.
        """
        end = self._max
        while end > self._first_base:
            unit = self._read_unit(end - 1)
            if unit.size == BLANK_SIZE:
                break
            if unit.commit_offset + unit.size <= commit_max_offset and (
                unit_matches is None or unit_matches(end - 1, unit)
            ):
                break
            end -= 1
        if end != self._max:
            self.truncate(end)

    def truncate_to_commit_offset(self, commit_offset: int) -> None:
        """Drop every unit whose message starts at or past ``commit_offset``."""
        if not self._segments:
            return
        self.truncate(self._first_at_or_after_commit_offset(commit_offset, self._first_base))

    def truncate(self, queue_offset: int) -> None:
        """Drop every unit at or past ``queue_offset``, durably; ``max_offset`` becomes it.

        ``queue_offset`` must lie within the units on disk: [first segment, max_offset].
        """
        if queue_offset == self._max:
            return
        if not self._first_base <= queue_offset <= self._max:
            raise ValueError(
                f"{self.directory}: truncate to {queue_offset} outside [{self._first_base}, {self._max}]"
            )
        self._cut_after(queue_offset)
        self._sync_names()
        self._max = queue_offset
        self._min = min(self._min, queue_offset)
        self._flushed = min(self._flushed, queue_offset)
        self._after_tail_change()
        if self._flushed == self._max:
            self._dirty = False

    def reset(self, next_offset: int) -> None:
        """Drop every unit and make ``next_offset`` the next queue offset, durably.

        For a replica that installs a snapshot: it holds none of the leader's messages
        but must number each queue's next message as the leader does, or one queue
        offset would name different messages on different replicas. Opening derives
        the bounds from the files alone, so the start is written as RocketMQ's
        fillPreBlank does: blank units for [base, next_offset) in the segment whose
        ``base`` holds ``next_offset`` (just that segment, empty, when ``next_offset``
        is a multiple of ``units_per_segment``; no file at all for 0), synced. The
        queue then reopens with max_offset ``next_offset`` and min_offset past the
        blanks.

        Segments are deleted oldest first, so a crash part way leaves files that open
        (maybe with a torn blank that passes for a unit, whose message would be at
        commit offset 0); calling ``reset`` again with the same offset repairs it all.
        """
        if next_offset < 0:
            raise ValueError(f"{self.directory}: next queue offset {next_offset} < 0")
        while self._segments:
            ref = self._segments[0]
            ref.segment.close()
            self._fs.remove(ref.segment.path)
            self._segments.pop(0)
        # Until the segment is written: an empty queue whose first put would roll at base.
        base = next_offset - next_offset % self._units
        self._first_base = self._min = self._max = self._flushed = base
        self._dirty = False
        self._after_tail_change()
        # Durably: the directories may exist already, made by `_roll`s (this queue's or
        # a sibling's) whose names no flush has synced yet.
        queue_dir = self.directory.rstrip("/")
        topic_dir = _parent_dir(queue_dir)
        if next_offset == 0:
            if self._fs.exists(queue_dir):  # it stays, empty
                self._sync_names(topic_dir, _parent_dir(topic_dir))
            return
        self._fs.makedirs(self.directory)
        segment = self._fs.open_segment(
            f"{self.directory}/{segment_name(base)}", self._segment_bytes, sparse=True
        )
        self._segments.append(_SegmentRef(base, segment))
        if next_offset > base:
            segment.write(0, _BLANK_BYTES * (next_offset - base))
        segment.sync()
        self._sync_names(queue_dir, topic_dir, _parent_dir(topic_dir))
        self._min = self._max = self._flushed = next_offset
        self._after_tail_change()

    # ------------------------------------------------------------------ retention

    def delete_before_commit_offset(self, commit_min_offset: int) -> int:
        """Apply CommitLog retention: forget units whose message starts below it.

        Deletes whole segments whose last unit starts below ``commit_min_offset``
        (never the last segment, which anchors ``max_offset``) and moves ``min_offset``
        to the first unit at or past it; units below that inside the first remaining
        segment stay on disk but are no longer served. Returns segments deleted.
        """
        deleted = 0
        last_pos = (self._units - 1) * UNIT_BYTES
        while len(self._segments) > 1:
            ref = self._segments[0]
            last = Unit._make(_UNIT.unpack_from(ref.segment.read(last_pos, UNIT_BYTES)))
            if last.commit_offset >= commit_min_offset and last.size != BLANK_SIZE:
                break
            self._segments.pop(0)
            ref.segment.close()
            self._fs.remove(ref.segment.path)
            self._first_base = self._segments[0].base
            deleted += 1
        start = max(self._min, self._first_base)
        self._min = self._first_at_or_after_commit_offset(commit_min_offset, start)
        return deleted


class ConsumeQueueSet:
    """All ConsumeQueues under one root: ``<root>/<topic>/<queue_id>/``.

    Opening finds every queue already on disk; the others are created on first use.
    Every directory under ``root`` is taken for a topic, so give the set a root of its
    own (``<store>/consumequeue``), apart from the index and the CommitLog.
    """

    def __init__(
        self, fs: FileSystem, root: str, units_per_segment: int = UNITS_PER_SEGMENT_DEFAULT
    ) -> None:
        self._fs = fs
        self._root = root
        self._units = units_per_segment
        self._queues: dict[tuple[str, int], ConsumeQueue] = {}
        for topic in fs.listdir(root):
            try:
                validate_topic(topic)
            except ValueError:
                continue
            for name in fs.listdir(f"{root}/{topic}"):
                if name.isdigit() and str(int(name)) == name and int(name) <= QUEUE_ID_MAX:
                    self.get_or_create(topic, int(name))

    def get(self, topic: str, queue_id: int) -> ConsumeQueue | None:
        return self._queues.get((topic, queue_id))

    def get_or_create(self, topic: str, queue_id: int) -> ConsumeQueue:
        queue = self._queues.get((topic, queue_id))
        if queue is None:
            queue = ConsumeQueue(self._fs, self._root, topic, queue_id, self._units)
            self._queues[(topic, queue_id)] = queue
        return queue

    def __iter__(self) -> Iterator[ConsumeQueue]:
        return iter(list(self._queues.values()))

    def __len__(self) -> int:
        return len(self._queues)

    def flush(self) -> None:
        """Sync every queue with unflushed units."""
        for queue in self._queues.values():
            if queue.dirty:
                queue.flush()

    def recover(
        self,
        commit_max_offset: int,
        unit_matches: Callable[[ConsumeQueue, int, Unit], bool] | None = None,
    ) -> None:
        """``ConsumeQueue.recover`` on every queue; ``unit_matches`` also gets the queue."""
        for queue in self._queues.values():
            queue.recover(
                commit_max_offset, None if unit_matches is None else _bind(unit_matches, queue)
            )

    def truncate_to_commit_offset(self, commit_offset: int) -> None:
        """Drop, in every queue, the units whose message starts at or past it."""
        for queue in self._queues.values():
            queue.truncate_to_commit_offset(commit_offset)

    def reset(self, queue_next: Mapping[tuple[str, int], int]) -> None:
        """``ConsumeQueue.reset`` every queue: to ``queue_next[(topic, queue_id)]``, to 0
        if absent. Queues first named here are created unless they start at 0.

        Directories are never removed, so a queue that was on disk stays in the set (and
        reopens) as an empty one. Checks every argument before it deletes anything.
        """
        validate_queue_next(queue_next)
        for key, queue in list(self._queues.items()):
            queue.reset(queue_next.get(key, 0))
        for (topic, queue_id), next_offset in queue_next.items():
            if next_offset > 0 and (topic, queue_id) not in self._queues:
                self.get_or_create(topic, queue_id).reset(next_offset)

    def delete_before_commit_offset(self, commit_min_offset: int) -> int:
        """Apply CommitLog retention to every queue; returns segments deleted."""
        return sum(q.delete_before_commit_offset(commit_min_offset) for q in self._queues.values())

    def max_commit_end(self) -> int:
        """Where the newest unit of any queue ends in the CommitLog (0 if none; a queue
        holding only blanks has none, see ``ConsumeQueue.last_unit``)."""
        ends = [u.commit_offset + u.size for q in self._queues.values() if (u := q.last_unit())]
        return max(ends, default=0)

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._queues.clear()


def _bind(
    unit_matches: Callable[[ConsumeQueue, int, Unit], bool], queue: ConsumeQueue
) -> UnitMatches:
    def matches(queue_offset: int, unit: Unit) -> bool:
        return unit_matches(queue, queue_offset, unit)

    return matches
