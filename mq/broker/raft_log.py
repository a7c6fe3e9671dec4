"""raft's LogStore on storage's EntryLog: the Raft log lives in the CommitLog.

raft/ and storage/ do not import each other (DESIGN.md); this adapter is the only
place their types meet. It also keeps the most recent entries in memory, as
decoded `Entry` objects: a leader replicates what it just appended, and serving
that from the cache instead of re-reading and re-decoding the CommitLog is most of
the cost of replication in Python (DLedger keeps a similar in-memory tail).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from raft.messages import Entry, EntryKind
from storage.entry_log import EntryLog, StoredEntry

_KINDS = tuple(EntryKind)  # indexed by value: a tuple lookup, not an Enum call
CACHE_ENTRIES_MAX = 65_536
"""Entries kept decoded in memory (about 64 MiB of 1 KiB entries)."""


class CommitLogStore:
    """A raft.LogStore whose entries are MAGIC_ENTRY frames in the CommitLog.

    `durable_on_append` is the broker's async flush mode: an entry counts as durable
    once it is in the page cache (it survives the process being killed, not a power
    cut), so neither votes nor acknowledgements wait for an fsync. `before_truncate`
    is told the commit offset a truncation will cut at, before it happens (the broker's
    store must fix its checkpoint first).
    """

    def __init__(
        self,
        entry_log: EntryLog,
        cache_entries_max: int = CACHE_ENTRIES_MAX,
        *,
        durable_on_append: bool = False,
        before_truncate: Callable[[int], None] | None = None,
    ) -> None:
        self.entry_log = entry_log
        self._cache: list[Entry] = []
        self._cache_first = entry_log.last_index() + 1
        self._cache_max = cache_entries_max
        self._durable_on_append = durable_on_append
        self._before_truncate = before_truncate

    def first_index(self) -> int:
        return self.entry_log.first_index()

    def last_index(self) -> int:
        return self.entry_log.last_index()

    def term_at(self, index: int) -> int | None:
        return self.entry_log.term_at(index)

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        hi = self.entry_log.span_end(lo, hi, bytes_max)
        first = self._cache_first
        if lo >= first:
            return self._cache[lo - first : hi - first]
        kinds = _KINDS
        return [
            Entry(e.term, e.index, e.data, kinds[e.kind])
            for e in self.entry_log.entries(lo, hi, bytes_max)
        ]

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        self.entry_log.append([StoredEntry(e.term, e.index, int(e.kind), e.data) for e in entries])
        cache = self._cache
        if entries[0].index != self._cache_first + len(cache):
            cache.clear()
            self._cache_first = entries[0].index
        cache.extend(entries)
        excess = len(cache) - self._cache_max
        if excess > self._cache_max // 4:  # trim in chunks, not on every append
            del cache[:excess]
            self._cache_first += excess

    def truncate_suffix(self, index: int) -> None:
        if self._before_truncate is not None and index <= self.entry_log.last_index():
            self._before_truncate(self.entry_log.cut_offset(index))
        self.entry_log.truncate_suffix(index)
        if index <= self._cache_first:
            self._cache.clear()
            self._cache_first = self.entry_log.last_index() + 1
        else:
            del self._cache[index - self._cache_first :]

    def sync(self) -> None:
        self.entry_log.sync()

    def durable_index(self) -> int:
        if self._durable_on_append:
            return self.entry_log.last_index()
        return self.entry_log.durable_index()

    def compact(self, index: int, term: int) -> None:
        self.entry_log.compact(index, term)
        drop = min(max(0, index + 1 - self._cache_first), len(self._cache))
        del self._cache[:drop]
        self._cache_first += drop

    def reset(self, index: int, term: int) -> None:
        # In memory only: the broker installs the snapshot (store, then the log's files)
        # before the next sync, and a crash before that reopens the log as it was.
        self.entry_log.forget(index, term)
        self.installed()

    def installed(self) -> None:
        """The entry log was reset underneath (a snapshot install): drop the cache."""
        self._cache.clear()
        self._cache_first = self.entry_log.last_index() + 1
