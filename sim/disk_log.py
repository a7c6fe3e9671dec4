"""A Raft log on a simulated disk: entries in memory, durability as a crash would see it.

`SimDiskLog` satisfies `raft.log_store.LogStore`. It keeps two pictures of the log:

* the *visible* log, what the node reads and writes now (page cache);
* the *durable image*, what a power cut would leave behind.

Every `append`, `truncate_suffix` and `reset` is recorded as a pending operation. A
sync makes pending operations durable *in order*; `begin_sync` / `finish_sync` split
that in two so the node host can model an fsync that takes time: the fsync covers the
writes issued before it began, not the ones the node makes while it runs.

`crash(rng)` follows `storage.files.SimFileSystem.crash`: the durable image survives,
plus a random prefix of the pending operations as a disk that loses its cache but
reorders nothing would leave them, where the first operation that did not land whole
may be torn. A torn append keeps a prefix of its entries (recovery's CRC check drops the
torn record); a torn truncation did not happen; a reset never lands without its sync. A truncation whose marker never
reached the disk therefore lets old entries reappear after a crash, as they would on a
real CommitLog: they were never acknowledged, so Raft must cope with them.

`reset` (a follower installing a snapshot) is a pending operation like the others: the
driver installs the snapshot in its state machine when the Ready's fsync completes, so a
crash before that leaves the old log and the old state together. `compact` drops only
entries that are durable and applied, on both pictures at once.

This is the seam the real CommitLog-backed LogStore replaces: the node factory takes any
LogStore; only the crash model lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raft.messages import Entry

_APPEND = 0
_TRUNCATE = 1
_RESET = 2

# (kind, index or 0, term or 0, entries or ())
_Op = tuple[int, int, int, tuple[Entry, ...]]


class CrashRandom(Protocol):
    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...


@dataclass
class _Image:
    """A log as a base (snapshot boundary) and the entries after it."""

    base_index: int = 0
    base_term: int = 0
    entries: list[Entry] = field(default_factory=list)

    def apply(self, op: _Op) -> None:
        kind, index, term, batch = op
        if kind == _APPEND:
            assert batch[0].index == self.base_index + len(self.entries) + 1
            self.entries.extend(batch)
        elif kind == _TRUNCATE:
            del self.entries[max(0, index - self.base_index - 1) :]
        else:
            self.base_index, self.base_term, self.entries = index, term, []

    def copy(self) -> _Image:
        return _Image(self.base_index, self.base_term, list(self.entries))


class SimDiskLog:
    """A LogStore whose durability follows the simulated disk's crash semantics."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._base_index = 0
        self._base_term = 0
        self._image = _Image()
        self._pending: list[_Op] = []
        self._ops_synced = 0
        self._durable = 0
        self.syncs = 0

    # -- reads

    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        pos = index - self._base_index - 1
        if pos < 0:
            if pos == -1:
                return self._base_term
            return 0 if index == 0 else None
        if pos < len(self._entries):
            return self._entries[pos].term
        return None

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        assert lo >= self.first_index(), "entries below the snapshot were compacted"
        base = self._base_index + 1
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out = self._entries[lo - base : hi - base]
        total = 0
        for n, entry in enumerate(out):
            total += len(entry.data) + 24
            if total > bytes_max and n > 0:
                return out[:n]
        return out

    def entry_at(self, index: int) -> Entry | None:
        pos = index - self._base_index - 1
        if 0 <= pos < len(self._entries):
            return self._entries[pos]
        return None

    def all_entries(self) -> list[Entry]:
        """The entries after the snapshot boundary (`first_index()` onwards)."""
        return list(self._entries)

    # -- writes

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        assert entries[0].index == self.last_index() + 1, "append must be contiguous"
        batch = tuple(entries)
        self._entries.extend(batch)
        self._pending.append((_APPEND, 0, 0, batch))

    def truncate_suffix(self, index: int) -> None:
        assert index > self._base_index, "cannot truncate into the snapshot"
        if index > self.last_index():
            return
        del self._entries[index - self._base_index - 1 :]
        self._pending.append((_TRUNCATE, index, 0, ()))
        self._durable = min(self._durable, index - 1)

    def reset(self, index: int, term: int) -> None:
        """Drop everything; the log now starts after a snapshot ending at (index, term).
        Durable with the next sync (see the module docstring)."""
        self._entries = []
        self._base_index = index
        self._base_term = term
        self._pending.append((_RESET, index, term, ()))
        # As MemoryLogStore does: nothing past the boundary is held; acknowledgements
        # wait for the Ready's fsync, which makes the reset durable.
        self._durable = index

    def sync(self) -> None:
        self.finish_sync(self.begin_sync())

    def begin_sync(self) -> int:
        """Start an fsync; it will cover exactly the operations issued so far."""
        return self._ops_synced + len(self._pending)

    def finish_sync(self, token: int) -> None:
        """The fsync started by `begin_sync` returned: its operations are durable."""
        count = token - self._ops_synced
        if count <= 0:
            return
        image = self._image
        for op in self._pending[:count]:
            image.apply(op)
        del self._pending[:count]
        self._ops_synced = token
        self.syncs += 1
        if any(op[0] == _RESET for op in self._pending):
            return  # a reset is still pending: the durable index stays where reset put it
        # The visible log and the image agree up to the first pending truncation.
        durable = image.base_index + len(image.entries)
        if image.base_index != self._base_index:
            durable = min(durable, self._base_index)
        for kind, index, _, _ in self._pending:
            if kind == _TRUNCATE:
                durable = min(durable, index - 1)
        self._durable = max(durable, self._base_index)

    def durable_index(self) -> int:
        return self._durable

    def compact(self, index: int, term: int) -> None:
        if index <= self._base_index:
            return
        assert index <= self._durable, "compact only what is durable"
        del self._entries[: index - self._base_index]
        self._base_index = index
        self._base_term = term
        image = self._image
        if index > image.base_index:
            assert index <= image.base_index + len(image.entries)
            del image.entries[: index - image.base_index]
            image.base_index = index
            image.base_term = term

    def has_unsynced(self) -> bool:
        return bool(self._pending)

    # -- faults

    def crash(self, rng: CrashRandom) -> int:
        """Power cut: keep the durable image plus whatever the PRNG lets land.

        Returns how many pending operations were lost (wholly or torn)."""
        image = self._image.copy()
        pending = self._pending
        landed = rng.randrange(0, len(pending) + 1) if pending else 0
        # A reset lands only with a completed sync: the driver stores the snapshot it
        # replaces the log with when that sync completes, and the real store writes the
        # reset behind the snapshot. Nothing after an unsynced reset lands either.
        for n, op in enumerate(pending[:landed]):
            if op[0] == _RESET:
                landed = n
                break
        for op in pending[:landed]:
            image.apply(op)
        if landed < len(pending):
            kind, _, _, batch = pending[landed]
            if kind == _APPEND:
                # A torn append: the entries before the torn one made it.
                keep = rng.randrange(0, len(batch))
                if keep:
                    image.apply((_APPEND, 0, 0, batch[:keep]))
        self._entries = list(image.entries)
        self._base_index = image.base_index
        self._base_term = image.base_term
        self._image = image
        self._pending = []
        self._durable = self.last_index()
        return len(pending) - landed
