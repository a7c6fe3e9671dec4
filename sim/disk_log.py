"""A Raft log on a simulated disk: entries in memory, durability as a crash would see it.

`SimDiskLog` satisfies `raft.log_store.LogStore`. It keeps two pictures of the log:

* the *visible* log, what the node reads and writes now (page cache);
* the *durable image*, what a power cut would leave behind.

Every `append` and `truncate_suffix` is recorded as a pending operation. A sync makes
pending operations durable *in order*; `begin_sync` / `finish_sync` split that in two so
the node host can model an fsync that takes time: the fsync covers the writes issued
before it began, not the ones the node makes while it runs.

`crash(rng)` follows `storage.files.SimFileSystem.crash`: the durable image survives,
plus a random prefix of the pending operations as a disk that loses its cache but
reorders nothing would leave them, where the first operation that did not land whole
may be torn. A torn append keeps a prefix of its entries (recovery's CRC check drops the
torn record); a torn truncation did not happen. A truncation whose marker never reached
the disk therefore lets old entries reappear after a crash, as they would on a real
CommitLog: they were never acknowledged, so Raft must cope with them.

`reset` (installing a snapshot) and `compact` are durable at once: the real store writes
the snapshot and its checkpoint atomically before it drops anything.

This is the seam the real CommitLog-backed LogStore replaces: the node factory takes any
LogStore; only the crash model lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raft.messages import Entry

_APPEND = 0
_TRUNCATE = 1


class CrashRandom(Protocol):
    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...


class SimDiskLog:
    """A LogStore whose durability follows the simulated disk's crash semantics."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._base_index = 0
        self._base_term = 0
        # The durable image: what survives a crash (a list of its own, updated by syncs).
        self._image: list[Entry] = []
        self._pending: list[tuple[int, int, tuple[Entry, ...]]] = []
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
            return self._base_term if pos == -1 else None
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
        return list(self._entries)

    # -- writes

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        assert entries[0].index == self.last_index() + 1, "append must be contiguous"
        batch = tuple(entries)
        self._entries.extend(batch)
        self._pending.append((_APPEND, 0, batch))

    def truncate_suffix(self, index: int) -> None:
        assert index > self._base_index, "cannot truncate into the snapshot"
        if index > self.last_index():
            return
        del self._entries[index - self._base_index - 1 :]
        self._pending.append((_TRUNCATE, index, ()))
        self._durable = min(self._durable, index - 1)

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
        for op in self._pending[:count]:
            self._apply(self._image, op)
        del self._pending[:count]
        self._ops_synced = token
        self.syncs += 1
        # The visible log and the image agree up to the first pending truncation.
        durable = len(self._image)
        for kind, index, _ in self._pending:
            if kind == _TRUNCATE:
                durable = min(durable, index - self._base_index - 1)
        self._durable = self._base_index + durable

    def durable_index(self) -> int:
        return self._durable

    def compact(self, index: int, term: int) -> None:
        if index <= self._base_index:
            return
        assert index <= self._durable, "compact only what is durable"
        drop = index - self._base_index
        del self._entries[:drop]
        del self._image[:drop]
        self._base_index = index
        self._base_term = term

    def reset(self, index: int, term: int) -> None:
        self._entries = []
        self._image = []
        self._pending = []
        self._base_index = index
        self._base_term = term
        self._durable = index

    def has_unsynced(self) -> bool:
        return bool(self._pending)

    # -- faults

    def crash(self, rng: CrashRandom) -> int:
        """Power cut: keep the durable image plus whatever the PRNG lets land.

        Returns how many pending operations were lost (wholly or torn)."""
        image = list(self._image)
        pending = self._pending
        landed = rng.randrange(0, len(pending) + 1) if pending else 0
        for op in pending[:landed]:
            self._apply(image, op)
        if landed < len(pending):
            kind, _, batch = pending[landed]
            if kind == _APPEND:
                # A torn append: the entries before the torn one made it.
                keep = rng.randrange(0, len(batch))
                if keep:
                    self._apply(image, (_APPEND, 0, batch[:keep]))
        self._entries = image
        self._image = list(image)
        self._pending = []
        self._durable = self._base_index + len(image)
        return len(pending) - landed

    def _apply(self, image: list[Entry], op: tuple[int, int, tuple[Entry, ...]]) -> None:
        kind, index, batch = op
        if kind == _APPEND:
            assert batch[0].index == self._base_index + len(image) + 1
            image.extend(batch)
        else:
            del image[index - self._base_index - 1 :]
