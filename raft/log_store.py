"""Where a node's log lives: the LogStore protocol and an in-memory implementation.

The core writes entries through `append`/`truncate_suffix` (cheap: page cache or
memory) and learns what is durable from `durable_index`. Making entries durable
(`sync`) is the caller's job, announced by `Ready.sync_log`: that is where the
fsync cost is paid, once per Ready, however many entries it covers.

Indexes start at 1. `first_index() - 1` is the snapshot boundary: the term of that
index stays known (`term_at`) after compaction so consistency checks still work.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, repeat
from operator import add, attrgetter
from typing import Protocol

from raft.messages import ENTRY_OVERHEAD_BYTES, Entry

_data = attrgetter("data")


class LogStore(Protocol):
    def first_index(self) -> int:
        """Index of the first entry still held (last_index() + 1 when empty)."""
        ...

    def last_index(self) -> int: ...

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index; for first_index() - 1 the snapshot term; 0 for 0;
        None when the index was compacted away or is past the end."""
        ...

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, stopping before bytes_max is exceeded."""
        ...

    def append(self, entries: Sequence[Entry]) -> None:
        """Append contiguous entries right after last_index() (not yet durable)."""
        ...

    def truncate_suffix(self, index: int) -> None:
        """Drop entries at and after index (a conflicting, uncommitted tail)."""
        ...

    def sync(self) -> None:
        """Make every appended entry (and truncation) durable."""
        ...

    def durable_index(self) -> int:
        """Last index known to survive a crash."""
        ...

    def compact(self, index: int, term: int) -> None:
        """Drop entries up to and including index (already applied, in a snapshot)."""
        ...

    def reset(self, index: int, term: int) -> None:
        """Drop everything; the log now starts after a snapshot ending at (index, term)."""
        ...


class MemoryLogStore:
    """A LogStore in memory; `sync` is free. For unit tests and the in-memory benchmark.

    Byte accounting is done in bulk: `_ends[i]` is the running total of `size_bytes()`
    up to and including the i-th held entry, so `entries()` finds its cut with one
    bisect and returns one list slice instead of summing entry by entry.
    """

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._ends: list[int] = []
        self._ends_base = 0  # running total just before the first held entry
        self._base_index = 0
        self._base_term = 0
        self._durable = 0
        # The state before a reset that was not synced yet; a crash returns to it.
        self._before_reset: tuple[list[Entry], list[int], int, int, int, int] | None = None

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        pos = index - self._base_index - 1
        if pos >= 0:
            if pos < len(self._entries):
                return self._entries[pos].term
            return None
        if pos == -1:
            return self._base_term
        return 0 if index == 0 else None

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        assert lo >= self.first_index(), "entries below the snapshot were compacted"
        a = lo - self._base_index - 1
        b = min(hi, self.last_index() + 1) - self._base_index - 1
        if a >= b:
            return []
        before = self._ends[a - 1] if a > 0 else self._ends_base
        cut = bisect_right(self._ends, before + bytes_max, a, b)
        return self._entries[a : max(cut, a + 1)]

    def append(self, entries: Sequence[Entry]) -> None:
        if entries:
            assert entries[0].index == self.last_index() + 1, "append must be contiguous"
            assert entries[-1].index == entries[0].index + len(entries) - 1
            self._entries.extend(entries)
            total = self._ends[-1] if self._ends else self._ends_base
            sizes = map(add, map(len, map(_data, entries)), repeat(ENTRY_OVERHEAD_BYTES))
            running = accumulate(sizes, initial=total)
            next(running)
            self._ends.extend(running)

    def truncate_suffix(self, index: int) -> None:
        assert index > self._base_index, "cannot truncate into the snapshot"
        del self._entries[index - self._base_index - 1 :]
        del self._ends[index - self._base_index - 1 :]
        self._durable = min(self._durable, index - 1)

    def sync(self) -> None:
        self._durable = self.last_index()
        self._before_reset = None

    def durable_index(self) -> int:
        return self._durable

    def compact(self, index: int, term: int) -> None:
        if index <= self._base_index:
            return
        assert index <= self.last_index()
        count = index - self._base_index
        self._ends_base = self._ends[count - 1]
        del self._entries[:count]
        del self._ends[:count]
        self._base_index = index
        self._base_term = term

    def reset(self, index: int, term: int) -> None:
        if self._before_reset is None:
            self._before_reset = (
                self._entries,
                self._ends,
                self._ends_base,
                self._base_index,
                self._base_term,
                self._durable,
            )
        self._entries = []
        self._ends = []
        self._ends_base = 0
        self._base_index = index
        self._base_term = term
        self._durable = min(self._durable, index)

    def crash(self) -> None:
        """What a crash leaves: an unsynced reset is undone and entries past the
        durable index are lost (a truncation counts as durable at once: losing it
        would only bring back entries that were never acknowledged after it)."""
        if self._before_reset is not None:
            (
                self._entries,
                self._ends,
                self._ends_base,
                self._base_index,
                self._base_term,
                self._durable,
            ) = self._before_reset
            self._before_reset = None
        if self.last_index() > self._durable:
            self.truncate_suffix(self._durable + 1)
