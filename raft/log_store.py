"""Where a node's log lives: the LogStore protocol and an in-memory implementation.

The core writes entries through `append`/`truncate_suffix` (cheap: page cache or
memory) and learns what is durable from `durable_index`. Making entries durable
(`sync`) is the caller's job, announced by `Ready.sync_log`: that is where the
fsync cost is paid, once per Ready, however many entries it covers.

Indexes start at 1. `first_index() - 1` is the snapshot boundary: the term of that
index stays known (`term_at`) after compaction so consistency checks still work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.messages import Entry


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
    """A LogStore in memory; `sync` is free. For unit tests and the in-memory benchmark."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._base_index = 0
        self._base_term = 0
        self._durable = 0

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        if index == self._base_index:
            return self._base_term
        pos = index - self._base_index - 1
        if 0 <= pos < len(self._entries):
            return self._entries[pos].term
        return None

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        assert lo >= self.first_index(), "entries below the snapshot were compacted"
        hi = min(hi, self.last_index() + 1)
        out: list[Entry] = []
        total = 0
        for pos in range(lo - self._base_index - 1, hi - self._base_index - 1):
            entry = self._entries[pos]
            total += entry.size_bytes()
            if out and total > bytes_max:
                break
            out.append(entry)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        if entries:
            assert entries[0].index == self.last_index() + 1, "append must be contiguous"
            self._entries.extend(entries)

    def truncate_suffix(self, index: int) -> None:
        assert index > self._base_index, "cannot truncate into the snapshot"
        del self._entries[index - self._base_index - 1 :]
        self._durable = min(self._durable, index - 1)

    def sync(self) -> None:
        self._durable = self.last_index()

    def durable_index(self) -> int:
        return self._durable

    def compact(self, index: int, term: int) -> None:
        if index <= self._base_index:
            return
        assert index <= self.last_index()
        del self._entries[: index - self._base_index]
        self._base_index = index
        self._base_term = term

    def reset(self, index: int, term: int) -> None:
        self._entries = []
        self._base_index = index
        self._base_term = term
        self._durable = index
