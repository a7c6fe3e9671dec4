"""IndexFile: find messages by key (or unique message id) and store-time range.

A key lookup must not scan the CommitLog. Each dispatched message adds one entry per
key to the active index file: a hash table of ``slot_count`` slots whose chains run
backwards through an append-only entry array, so a put is O(1) and a query walks only
the entries whose key hashes to the same slot, newest first. Hashes collide, so a
query returns candidate commit offsets and the caller checks each message's keys.

File layout (little-endian), one preallocated segment per file, in ``<root>/index/``::

    header (56 B)  magic u32 | slot_count u32 | entry_count_max u32 | used_slot_count u32
                   | entry_count u32 | reserved u32
                   | begin_timestamp_ms u64 | end_timestamp_ms u64
                   | begin_commit_offset u64 | end_commit_offset u64
    slots          slot_count x u32: 1-based index of the newest entry in the slot, 0 = empty
    entries        entry_count_max x 20 B:
                   key_hash u32 | commit_offset u64 | time_delta_ms u32 | prev_word u32
                   prev_word = prev entry index | ENTRY_PRESENT_BIT (prev 0 = chain end)

* ``key_hash`` is CRC-32 of the UTF-8 key, stable across processes and machines;
  keys are stored as ``topic#key`` (see ``index_key``). Slot = key_hash % slot_count.
* ``time_delta_ms`` is store time minus ``begin_timestamp_ms`` (the first entry's),
  clamped at 0 for a clock that went backwards: an entry's *indexed time* is
  ``max(store time, begin)``. A file rolls when a delta would not fit in u32 ms
  (about 49 days), so deltas keep millisecond precision.
* Files are named by the 20-digit commit offset of their first entry, bumped by one
  when two files would start at the same offset (a message with more keys than a file
  holds); the header holds the exact value.

Durability and recovery -- the entries are the truth, the header is a hint:

* A put writes the entry, then the slot. The present bit is in the entry's last byte,
  so a write torn anywhere reads back as "no entry", and a slot can only point at an
  entry that landed (the simulated disk lands a file's unsynced writes in order).
* ``flush`` syncs entries and slots, then writes the header and syncs again. Only the
  newest file is ever written (it also keeps its slots in memory, so a put reads no
  segment); a file is flushed when the next one is created (sealed), and sealed
  headers are trusted on open.
* Opening the newest file re-derives its state from the entries: the entries form a
  prefix, found from the header's count (searching back if that entry is absent, as
  after an interrupted truncation), then extended forward over the unflushed tail,
  whose slot updates are replayed; a torn entry after it is zeroed. End offset and
  used slot count are recomputed; end time is the later of the header's and the
  newest entries' (exact while store times do not go backwards). If any slot still
  points past the last entry (a disk that reorders writes), all slots are rebuilt.
  Opening costs O(unflushed entries + slot_count) in C, not O(entries).
* Truncation walks back from the newest entry, pointing each entry's slot back at its
  predecessor and then zeroing the entry (present byte first), then syncs. After an
  interruption the entries are a prefix and only the newest one can have lost its
  slot, which opening re-points: the index is consistent, just longer than asked;
  the store's recovery repeats the truncation anyway.
* The store's recovery recipe is: open, ``truncate_to_commit_offset(resume)``, then
  re-dispatch from ``resume``.

Queries survive corrupt bytes: every pointer is range-checked and chains strictly
decrease, so a walk ends within ``entry_count`` steps whatever the file holds, and a
candidate outside the file's commit offset range is dropped.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence

from storage.files import FileSystem, Segment

INDEX_DIR = "index"
FILE_NAME_DIGITS = 20
INDEX_MAGIC = 0x3158_4449  # b"IDX1" little-endian
SLOT_COUNT_DEFAULT = 5_000_000
ENTRY_COUNT_MAX_DEFAULT = 20_000_000
HEADER_BYTES = 56
SLOT_BYTES = 4
ENTRY_BYTES = 20
# Top bit of prev_word, the entry's last field: in little-endian, its last byte.
ENTRY_PRESENT_BIT = 0x8000_0000
ENTRY_INDEX_MAX = ENTRY_PRESENT_BIT - 1
TIME_DELTA_MS_MAX = 0xFFFF_FFFF
SLOT_COUNT_MAX = 0xFFFF_FFFF
_HEADER = struct.Struct("<IIIIIIQQQQ")
_U32 = struct.Struct("<I")
_ENTRY = struct.Struct("<IQII")
assert _HEADER.size == HEADER_BYTES
assert _ENTRY.size == ENTRY_BYTES
_ZERO_BYTE = bytes(1)
_ZERO_ENTRY = bytes(ENTRY_BYTES)


class IndexFileError(ValueError):
    """An index file whose geometry cannot be determined from its size or header."""


def index_key(topic: str, key: str) -> str:
    """The key under which a message key (or unique id) of ``topic`` is indexed."""
    return f"{topic}#{key}"


def key_hash(key: str) -> int:
    """Stable 32-bit hash of an index key: CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(key.encode("utf-8"))


def file_bytes(slot_count: int, entry_count_max: int) -> int:
    """Size of an index file with this geometry."""
    return HEADER_BYTES + slot_count * SLOT_BYTES + entry_count_max * ENTRY_BYTES


def _u32_array(data: memoryview | bytes) -> array[int]:
    words = array("I")
    assert words.itemsize == 4
    words.frombytes(data)
    if sys.byteorder != "little":
        words.byteswap()
    return words


class IndexFile:
    """One fixed-size index file; ``IndexService`` owns the rolling sequence of them."""

    def __init__(
        self,
        segment: Segment,
        slot_count: int,
        entry_count_max: int,
        begin_timestamp_ms: int,
        begin_commit_offset: int,
    ) -> None:
        assert 0 < slot_count <= SLOT_COUNT_MAX
        assert 0 < entry_count_max <= ENTRY_INDEX_MAX
        assert segment.capacity == file_bytes(slot_count, entry_count_max)
        self._segment = segment
        self.slot_count = slot_count
        self.entry_count_max = entry_count_max
        self._entries_pos = HEADER_BYTES + slot_count * SLOT_BYTES
        self.begin_timestamp_ms = begin_timestamp_ms
        self.begin_commit_offset = begin_commit_offset
        self.end_timestamp_ms = begin_timestamp_ms
        self.end_commit_offset = begin_commit_offset
        self.entry_count = 0
        self.used_slot_count = 0
        self._dirty = False
        # The newest file keeps a copy of its slots in memory (4 B x slot_count, 20 MB by
        # default) so a put reads its slot without a segment read; writes go to both.
        self._slots: array[int] | None = None

    @property
    def path(self) -> str:
        return self._segment.path

    @property
    def full(self) -> bool:
        return self.entry_count >= self.entry_count_max

    # ------------------------------------------------------------------ create and open

    @classmethod
    def create(
        cls,
        fs: FileSystem,
        path: str,
        slot_count: int,
        entry_count_max: int,
        begin_commit_offset: int,
        begin_timestamp_ms: int,
    ) -> IndexFile:
        """A new empty file whose header (with its time base) is durable on return."""
        segment = fs.open_segment(path, file_bytes(slot_count, entry_count_max))
        index = cls(segment, slot_count, entry_count_max, begin_timestamp_ms, begin_commit_offset)
        index._write_header()
        segment.sync()
        index._slots = array("I", bytes(slot_count * SLOT_BYTES))
        return index

    @classmethod
    def open(
        cls, fs: FileSystem, path: str, slot_count: int, entry_count_max: int, sealed: bool
    ) -> IndexFile | None:
        """Open an existing file; None if it is blank (created, header never synced).

        The geometry is the configured one when the size matches, else the header's;
        a sealed file trusts its header, the newest one is recovered from its entries.
        """
        size = fs.file_size(path)
        segment = fs.open_segment(path, size)
        try:
            header = bytes(segment.read(0, HEADER_BYTES))
            fields = _HEADER.unpack(header)
            if size != file_bytes(slot_count, entry_count_max):
                slot_count, entry_count_max = fields[1], fields[2]
                if not (
                    0 < slot_count <= SLOT_COUNT_MAX
                    and 0 < entry_count_max <= ENTRY_INDEX_MAX
                    and size == file_bytes(slot_count, entry_count_max)
                ):
                    if not any(header):
                        segment.close()
                        return None
                    raise IndexFileError(f"{path}: {size} bytes match neither config nor header")
            _, _, _, used, count, _, begin_ts, end_ts, begin_co, end_co = fields
            index = cls(segment, slot_count, entry_count_max, begin_ts, begin_co)
            if not index._present(1):
                # Entries are only written after the header was synced at creation, so
                # a file without its first entry holds nothing (and maybe a torn header).
                segment.close()
                return None
            index.entry_count = index._durable_prefix(min(count, entry_count_max))
            index.used_slot_count = used
            index.end_timestamp_ms = max(end_ts, begin_ts)
            index.end_commit_offset = end_co
            if not sealed or index.entry_count != count:
                index._recover_tail()
            return index
        except BaseException:
            segment.close()
            raise

    def _entry(self, index: int) -> tuple[int, int, int, int]:
        return _ENTRY.unpack_from(
            self._segment.read(self._entries_pos + (index - 1) * ENTRY_BYTES, ENTRY_BYTES)
        )

    def _present(self, index: int) -> bool:
        return bool(self._entry(index)[3] & ENTRY_PRESENT_BIT)

    def _slot(self, slot: int) -> int:
        if self._slots is not None:
            return self._slots[slot]
        value: int = _U32.unpack_from(
            self._segment.read(HEADER_BYTES + slot * SLOT_BYTES, SLOT_BYTES)
        )[0]
        return value

    def _set_slot(self, slot: int, value: int) -> None:
        self._segment.pack_into(_U32, HEADER_BYTES + slot * SLOT_BYTES, value)
        if self._slots is not None:
            self._slots[slot] = value

    def _load_slots(self) -> array[int]:
        slots = _u32_array(self._segment.read(HEADER_BYTES, self.slot_count * SLOT_BYTES))
        self._slots = slots
        return slots

    def seal(self) -> None:
        """Flush and drop the in-memory slots: a sealed file only serves queries."""
        self.flush()
        self._slots = None

    def _zero_entry(self, index: int) -> None:
        """Remove an entry so that no torn write can leave it looking present.

        The present bit goes first, alone in a one-byte write, then the rest; a single
        20-byte write torn part way would zero the front and keep the present bit.
        """
        pos = self._entries_pos + (index - 1) * ENTRY_BYTES
        self._segment.write(pos + ENTRY_BYTES - 1, _ZERO_BYTE)
        self._segment.write(pos, _ZERO_ENTRY)

    def _durable_prefix(self, count: int) -> int:
        """``count`` if entry ``count`` is present, else the last present entry below it.

        Entries form a prefix, so a binary search finds its end; the header can be
        ahead of the entries after an interrupted truncation or a corrupt byte.
        """
        if count == 0 or self._present(count):
            return count
        lo, hi = 0, count  # entry lo is present (or lo == 0), entry hi is not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._present(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _recover_tail(self) -> None:
        """Adopt the unflushed tail, zero a torn entry, and recompute the header fields."""
        start = self.entry_count
        changed = False
        last_co = self.begin_commit_offset
        delta_max = 0
        if start:
            # The newest entry must head its slot's chain. It does not when a put's slot
            # write was lost, or a truncation pointed the slot back but did not zero the
            # entry; re-pointing adopts the entry either way, with its chain intact.
            hash_, last_co, delta_max, _ = self._entry(start)
            if self._slot(hash_ % self.slot_count) != start:
                self._set_slot(hash_ % self.slot_count, start)
                changed = True
        index = start
        while index < self.entry_count_max:
            hash_, co, delta, prev_word = self._entry(index + 1)
            prev = prev_word & ~ENTRY_PRESENT_BIT
            if not prev_word & ENTRY_PRESENT_BIT or co < last_co or prev > index:
                break
            index += 1
            self._set_slot(hash_ % self.slot_count, index)
            last_co = co
            delta_max = max(delta_max, delta)
        self.entry_count = index
        changed = changed or index != start
        while index < self.entry_count_max and any(self._entry(index + 1)):
            index += 1
            self._zero_entry(index)
            changed = True
        self.end_commit_offset = last_co
        # Exact while store times do not go backwards (the newest entry is the latest);
        # only a header torn by the crash could understate an earlier, later-stamped one.
        self.end_timestamp_ms = max(self.end_timestamp_ms, self.begin_timestamp_ms + delta_max)
        self._check_slots()
        if changed:
            self._dirty = True
            self.flush()

    def _check_slots(self) -> None:
        """Recount used slots; rebuild them all if any points past the entries.

        Two passes in C over the slot array (20 MB by default), cheap next to the rebuild
        they guard, which only a disk that reorders writes or a corrupt byte triggers.
        """
        slots = self._load_slots()
        if max(slots) > self.entry_count:
            self._rebuild_slots()
            slots = self._load_slots()
        self.used_slot_count = self.slot_count - slots.count(0)

    def _rebuild_slots(self) -> None:
        """Point every slot at its newest entry again: O(entries), for damaged files only."""
        self._slots = None
        self._segment.write(HEADER_BYTES, bytes(self.slot_count * SLOT_BYTES))
        for index in range(1, self.entry_count + 1):
            self._set_slot(self._entry(index)[0] % self.slot_count, index)
        self._dirty = True

    # ------------------------------------------------------------------ put and query

    def put(self, key_hash: int, commit_offset: int, store_timestamp_ms: int) -> bool:
        """Append one entry; False (nothing written) if the file is full or the time
        delta does not fit, so the caller rolls to a new file."""
        if self.entry_count >= self.entry_count_max or not self.fits_time(store_timestamp_ms):
            return False
        self.put_many(((key_hash, commit_offset, store_timestamp_ms),))
        return True

    def fits_time(self, store_timestamp_ms: int) -> bool:
        """Whether an entry of this store time fits (its delta from the file's begin
        time, u32 milliseconds, about 49 days)."""
        return store_timestamp_ms - self.begin_timestamp_ms <= TIME_DELTA_MS_MAX

    def put_many(self, entries: Sequence[tuple[int, int, int]]) -> None:
        """`put` of each (key_hash, commit_offset, store_timestamp_ms), in commit order,
        that fit the file (room, and `fits_time`): one write for all of them, then their
        slots.

        Every replica dispatches a producer batch's 32 messages x 2 keys at once, so a
        loop over local variables with one segment write replaces 64 calls of `put`.
        The order on disk is still entries before the slots that point at them.
        """
        count = self.entry_count
        slots = self._slots
        if slots is None:
            slots = self._load_slots()
        slot_count = self.slot_count
        begin = self.begin_timestamp_ms
        end_ts = self.end_timestamp_ms
        used = self.used_slot_count
        pack = _ENTRY.pack_into
        data = bytearray(len(entries) * ENTRY_BYTES)
        touched: list[int] = []
        pos = 0
        commit_offset = self.end_commit_offset
        for key_hash_, commit_offset, timestamp_ms in entries:
            delta = timestamp_ms - begin
            if delta < 0:
                delta = 0
            assert delta <= TIME_DELTA_MS_MAX, "put_many of entries the file does not take"
            slot = key_hash_ % slot_count
            prev = slots[slot]
            if prev == 0:
                used += 1
            elif prev > count:
                prev = 0  # a damaged slot: never chain to an entry that does not exist
            count += 1
            pack(data, pos, key_hash_, commit_offset, delta, prev | ENTRY_PRESENT_BIT)
            slots[slot] = count
            touched.append(slot)
            pos += ENTRY_BYTES
            if timestamp_ms > end_ts:
                end_ts = timestamp_ms
        assert count <= self.entry_count_max, "put_many of entries the file does not take"
        segment = self._segment
        segment.write(self._entries_pos + self.entry_count * ENTRY_BYTES, data)
        for slot in touched:
            segment.pack_into(_U32, HEADER_BYTES + slot * SLOT_BYTES, slots[slot])
        self.entry_count = count
        self.used_slot_count = used
        self.end_commit_offset = commit_offset
        self.end_timestamp_ms = end_ts
        self._dirty = True

    def query(
        self, key_hash: int, begin_ms: int, end_ms: int, max_count: int, out: list[int]
    ) -> None:
        """Append to ``out``, newest first, the commit offsets of entries with this
        hash whose indexed time is in [begin_ms, end_ms], until ``out`` has max_count."""
        count = self.entry_count
        segment = self._segment
        entries_pos = self._entries_pos
        base_ms = self.begin_timestamp_ms
        low_delta, high_delta = begin_ms - base_ms, end_ms - base_ms
        low_co, high_co = self.begin_commit_offset, self.end_commit_offset
        index = self._slot(key_hash % self.slot_count)
        steps = 0
        while 0 < index <= count and steps < count and len(out) < max_count:
            hash_, co, delta, prev_word = _ENTRY.unpack_from(
                segment.read(entries_pos + (index - 1) * ENTRY_BYTES, ENTRY_BYTES)
            )
            if not prev_word & ENTRY_PRESENT_BIT:
                return
            if hash_ == key_hash and low_delta <= delta <= high_delta and low_co <= co <= high_co:
                out.append(co)
            prev = prev_word & ~ENTRY_PRESENT_BIT
            if prev >= index:
                return
            index = prev
            steps += 1

    # ------------------------------------------------------------------ durability

    def _write_header(self) -> None:
        header = _HEADER.pack(
            INDEX_MAGIC,
            self.slot_count,
            self.entry_count_max,
            self.used_slot_count,
            self.entry_count,
            0,
            self.begin_timestamp_ms,
            self.end_timestamp_ms,
            self.begin_commit_offset,
            self.end_commit_offset,
        )
        self._segment.write(0, header)

    @property
    def dirty(self) -> bool:
        """Whether it holds entries or slots that `flush` has not synced."""
        return self._dirty

    def flush(self) -> None:
        """Sync entries and slots, then the header that describes them."""
        if not self._dirty:
            return
        self._segment.sync()
        self._write_header()
        self._segment.sync()
        self._dirty = False

    def truncate_to_commit_offset(self, commit_offset: int) -> None:
        """Remove the newest entries whose commit offset is >= ``commit_offset``, durably.

        Entries are appended in commit order, so they are the tail: each one's slot is
        pointed back at its predecessor (if the slot still points at it) and then the
        entry is zeroed, newest first, so an interruption leaves a consistent prefix.
        """
        index = self.entry_count
        removed = False
        while index > 0:
            hash_, co, _, prev_word = self._entry(index)
            if co < commit_offset:
                break
            slot = hash_ % self.slot_count
            if self._slot(slot) == index:
                prev = prev_word & ~ENTRY_PRESENT_BIT
                if prev >= index:
                    prev = 0  # a damaged pointer: end the chain rather than loop
                self._set_slot(slot, prev)
                if prev == 0:
                    self.used_slot_count -= 1
            self._zero_entry(index)
            index -= 1
            removed = True
        if not removed:
            return
        self.entry_count = index
        self.end_commit_offset = self._entry(index)[1] if index else self.begin_commit_offset
        self._dirty = True
        self.flush()

    def close(self) -> None:
        self._slots = None
        self._segment.close()


def file_name(begin_commit_offset: int) -> str:
    return f"{begin_commit_offset:0{FILE_NAME_DIGITS}d}"


class IndexService:
    """The rolling sequence of index files under ``<root>/index/``; only the newest
    one takes puts. See the module docstring for layout and recovery."""

    def __init__(
        self,
        fs: FileSystem,
        root: str,
        slot_count: int = SLOT_COUNT_DEFAULT,
        entry_count_max: int = ENTRY_COUNT_MAX_DEFAULT,
    ) -> None:
        if not 0 < slot_count <= SLOT_COUNT_MAX:
            raise ValueError(f"slot_count must be in [1, {SLOT_COUNT_MAX}], got {slot_count}")
        if not 0 < entry_count_max <= ENTRY_INDEX_MAX:
            raise ValueError(
                f"entry_count_max must be in [1, {ENTRY_INDEX_MAX}], got {entry_count_max}"
            )
        self._fs = fs
        self.directory = f"{root}/{INDEX_DIR}"
        self.slot_count = slot_count
        self.entry_count_max = entry_count_max
        self._files: list[IndexFile] = []
        # Name (as an int) of each file in _files, to keep names increasing on roll.
        self._names: list[int] = []
        self._last_commit_offset = -1
        self._open()

    def _open(self) -> None:
        names = sorted(
            int(n)
            for n in self._fs.listdir(self.directory)
            if len(n) == FILE_NAME_DIGITS and n.isdigit()
        )
        for i, name in enumerate(names):
            path = f"{self.directory}/{file_name(name)}"
            index = IndexFile.open(
                self._fs, path, self.slot_count, self.entry_count_max, i < len(names) - 1
            )
            if index is None:
                self._fs.remove(path)
                continue
            self._files.append(index)
            self._names.append(name)
        self._drop_empty_tail()
        self._last_commit_offset = self._files[-1].end_commit_offset if self._files else -1

    def _drop_empty_tail(self) -> None:
        while self._files and self._files[-1].entry_count == 0:
            self._files.pop().close()
            self._fs.remove(f"{self.directory}/{file_name(self._names.pop())}")

    @property
    def last_commit_offset(self) -> int | None:
        """Commit offset of the newest entry, None if the index is empty."""
        return None if self._last_commit_offset < 0 else self._last_commit_offset

    def files(self) -> list[IndexFile]:
        """The index files, oldest first (for inspection and tests)."""
        return list(self._files)

    def put(self, key: str, commit_offset: int, store_timestamp_ms: int) -> None:
        """Index ``key`` (see ``index_key``) for the message at ``commit_offset``.

        Entries must come in commit order. Rolling to a new file may raise
        DiskFullError; nothing is indexed then and the call can be retried.
        """
        self.put_hash(zlib.crc32(key.encode("utf-8")), commit_offset, store_timestamp_ms)

    def put_hash(self, hash_: int, commit_offset: int, store_timestamp_ms: int) -> None:
        """`put` for a key whose hash (zlib.crc32 of its UTF-8 bytes) the caller already
        has: the dispatcher hashes keys straight from the frame's bytes."""
        assert commit_offset >= self._last_commit_offset, "index entries must follow commit order"
        files = self._files
        if not files or not files[-1].put(hash_, commit_offset, store_timestamp_ms):
            self._roll(commit_offset, store_timestamp_ms)
            stored = files[-1].put(hash_, commit_offset, store_timestamp_ms)
            assert stored, "a new index file takes at least one entry"
        self._last_commit_offset = commit_offset

    def put_messages(self, entries: Sequence[tuple[int, int, int]], ends: Sequence[int]) -> None:
        """Index a batch of messages: message i's entries, (hash, commit_offset,
        store_timestamp_ms) as for `put_hash`, are ``entries[ends[i - 1]:ends[i]]``.

        The files end up exactly as if each message were indexed alone (``ensure_room``
        for its entries, then a `put_hash` each), but the messages that fit the newest
        file go in with one `IndexFile.put_many`. A DiskFullError from a roll leaves the
        messages before it indexed and none after.
        """
        files = self._files
        start = m = 0
        count = len(ends)
        while m < count:
            j = m
            if files:
                newest = files[-1]
                free = newest.entry_count_max - newest.entry_count
                while j < count and ends[j] - start <= free:
                    if ends[j] > start and not newest.fits_time(entries[ends[j] - 1][2]):
                        break
                    j += 1
                if j > m:
                    end = ends[j - 1]
                    if end > start:
                        newest.put_many(entries[start:end])
                        self._last_commit_offset = entries[end - 1][1]
                    start, m = end, j
                    continue
            end = ends[m]  # message m does not fit the newest file (or there is none)
            if end > start:
                self.ensure_room(end - start, entries[start][1], entries[start][2])
                for entry in entries[start:end]:
                    self.put_hash(*entry)
            start, m = end, m + 1

    def ensure_room(self, entries: int, commit_offset: int, store_timestamp_ms: int) -> None:
        """Roll now unless the newest file takes `entries` more, so that the puts of one
        message all land or (DiskFullError from the roll) none does."""
        files = self._files
        if not files or files[-1].entry_count + entries > self.entry_count_max:
            self._roll(commit_offset, store_timestamp_ms)

    def _roll(self, commit_offset: int, store_timestamp_ms: int) -> None:
        """Seal the newest file (flush it) and create the next one, durably."""
        if self._files:
            self._files[-1].seal()
        name = max(commit_offset, self._names[-1] + 1) if self._names else commit_offset
        self._fs.makedirs(self.directory)
        index = IndexFile.create(
            self._fs,
            f"{self.directory}/{file_name(name)}",
            self.slot_count,
            self.entry_count_max,
            commit_offset,
            store_timestamp_ms,
        )
        self._files.append(index)
        self._names.append(name)

    def query(self, key: str, begin_ms: int, end_ms: int, max_count: int) -> list[int]:
        """Commit offsets of messages indexed under ``key`` with indexed time in
        [begin_ms, end_ms], newest first, at most ``max_count``. Candidates only:
        hashes collide, so the caller checks each message's keys."""
        hash_ = key_hash(key)
        out: list[int] = []
        for index in reversed(self._files):
            if len(out) >= max_count:
                break
            if index.begin_timestamp_ms > end_ms or index.end_timestamp_ms < begin_ms:
                continue
            index.query(hash_, begin_ms, end_ms, max_count, out)
        return out

    def flush(self) -> None:
        """Make every entry put so far durable (only the newest file can be dirty)."""
        if self._files:
            self._files[-1].flush()

    def newest_dirty(self) -> IndexFile | None:
        """The file `flush` would sync, if it holds anything unsynced."""
        if self._files and self._files[-1].dirty:
            return self._files[-1]
        return None

    def truncate_to_commit_offset(self, commit_offset: int) -> None:
        """Remove every entry whose commit offset is >= ``commit_offset``, durably:
        whole files beyond it are deleted newest first, then the last one is cut."""
        while self._files and self._files[-1].begin_commit_offset >= commit_offset:
            self._files.pop().close()
            self._fs.remove(f"{self.directory}/{file_name(self._names.pop())}")
        if self._files:
            self._files[-1].truncate_to_commit_offset(commit_offset)
            self._drop_empty_tail()
        self._last_commit_offset = self._files[-1].end_commit_offset if self._files else -1

    def clear(self) -> None:
        """Delete every index file, durably: a store reset drops every message.

        A file is forgotten only once it is deleted, so after an error part way (a
        crash leaves files that open) calling ``clear`` again finishes the job.
        """
        while self._files:
            self._files[-1].close()
            self._fs.remove(f"{self.directory}/{file_name(self._names[-1])}")
            self._files.pop()
            self._names.pop()
        self._last_commit_offset = -1

    def delete_before_commit_offset(self, commit_min_offset: int) -> int:
        """Apply CommitLog retention: delete whole files whose newest entry is below
        ``commit_min_offset``, never the newest file. Returns files deleted."""
        deleted = 0
        while len(self._files) > 1 and self._files[0].end_commit_offset < commit_min_offset:
            self._files.pop(0).close()
            self._fs.remove(f"{self.directory}/{file_name(self._names.pop(0))}")
            deleted += 1
        return deleted

    def close(self) -> None:
        for index in self._files:
            index.close()
        self._files.clear()
        self._names.clear()
