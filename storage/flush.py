"""When to fsync the CommitLog: a sans-IO policy and group-commit bookkeeping.

The driver (a trio task in the broker, an event in the simulator) owns the clock
and the fsync; this module only decides. Time enters as `now_ms` arguments.

* ASYNC mode acknowledges writes before they are durable and flushes in the
  background: when `interval_ms` has passed since the last flush, or as soon as
  `bytes_min` bytes are unflushed (bounding what a power cut can take). Waiting
  for either amortises one fsync over many batches.
* SYNC mode acknowledges a write only once it is durable. Writers register the
  offset they need in a `GroupCommit`; the driver performs one fsync covering
  everything appended so far and releases every waiter it covers, so N concurrent
  writers cost one fsync, not N.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from storage.errors import TooManyWaitersError

__all__ = [
    "FLUSH_BYTES_MIN_DEFAULT",
    "FLUSH_INTERVAL_MS_DEFAULT",
    "GROUP_COMMIT_WAITERS_MAX_DEFAULT",
    "FlushMode",
    "FlushPolicy",
    "GroupCommit",
]

FLUSH_INTERVAL_MS_DEFAULT = 500
FLUSH_BYTES_MIN_DEFAULT = 16 * 1024
GROUP_COMMIT_WAITERS_MAX_DEFAULT = 64 * 1024
"""Bound on outstanding sync-flush waiters; past it writers get back-pressure."""


class FlushMode(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Decides whether a flush is due; holds no state (the driver passes it in)."""

    mode: FlushMode = FlushMode.ASYNC
    interval_ms: int = FLUSH_INTERVAL_MS_DEFAULT
    bytes_min: int = FLUSH_BYTES_MIN_DEFAULT
    thorough_interval_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.interval_ms <= 0 or self.bytes_min <= 0:
            raise ValueError(f"interval_ms and bytes_min must be positive: {self}")

    def due(self, now_ms: int, max_offset: int, flushed_offset: int, last_flush_ms: int) -> bool:
        """True if the driver should flush now.

        Never due with nothing unflushed. SYNC: due whenever anything is unflushed
        (waiters are blocked on it). ASYNC: every `interval_ms`, if at least `bytes_min`
        bytes are unflushed (as RocketMQ's flush-least-pages), and after
        `thorough_interval_ms` whatever is unflushed, so a trickle is never left
        unsynced for long.
        """
        assert flushed_offset <= max_offset, (flushed_offset, max_offset)
        unflushed_bytes = max_offset - flushed_offset
        if unflushed_bytes == 0:
            return False
        if self.mode is FlushMode.SYNC:
            return True
        elapsed_ms = now_ms - last_flush_ms
        if elapsed_ms >= self.thorough_interval_ms:
            return True
        return elapsed_ms >= self.interval_ms and unflushed_bytes >= self.bytes_min

    def deadline_ms(self, last_flush_ms: int) -> int:
        """When the interval rule next fires; the driver sleeps until then or a wake-up."""
        return last_flush_ms + self.interval_ms


class GroupCommit:
    """Bookkeeping for SYNC flushes: who waits for which offset to become durable.

    Protocol for the driver: `target()` -> if not None, flush the log (one fsync
    covering all it holds, which is >= target) -> `complete(log.flushed_offset)`
    -> wake the returned tickets. A ticket is satisfied when the flushed offset is
    >= the offset it asked for (the end of the writer's frames).
    """

    def __init__(self, waiters_max: int = GROUP_COMMIT_WAITERS_MAX_DEFAULT) -> None:
        assert waiters_max > 0
        self._waiters_max = waiters_max
        self._heap: list[tuple[int, int]] = []  # (offset, ticket): smallest offset first
        self._target: int | None = None
        self._next_ticket = 0
        self._flushed = 0

    @property
    def pending(self) -> int:
        return len(self._heap)

    @property
    def flushed_offset(self) -> int:
        """The highest flushed offset `complete` has been told about."""
        return self._flushed

    def request(self, offset: int) -> int:
        """Register a writer that needs every byte below `offset` durable; its ticket.

        Tickets increase in request order. An offset already covered by the last
        `complete` still gets a ticket, released by the next `complete` (the driver
        calls it after any flush, even one with nothing to sync). Raises
        TooManyWaitersError when `waiters_max` tickets are outstanding.
        """
        if len(self._heap) >= self._waiters_max:
            raise TooManyWaitersError(f"{len(self._heap)} writers already wait for a flush")
        ticket = self._next_ticket
        self._next_ticket += 1
        heapq.heappush(self._heap, (offset, ticket))
        if self._target is None or offset > self._target:
            self._target = offset
        return ticket

    def target(self) -> int | None:
        """The highest offset any waiter needs, or None when nobody waits."""
        return self._target

    def complete(self, flushed_offset: int) -> list[int]:
        """Record a finished flush; return the tickets it satisfied, in request order."""
        assert flushed_offset >= 0
        # A truncate can lower the log's flushed offset; waiters past it keep waiting.
        self._flushed = flushed_offset
        done: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= flushed_offset:
            done.append(heapq.heappop(heap)[1])
        if not heap:
            self._target = None
        done.sort()
        return done

    def fail_all(self) -> list[int]:
        """Drop every waiter (the flush failed: fsync errors are fatal); their tickets."""
        done = sorted(ticket for _, ticket in self._heap)
        self._heap.clear()
        self._target = None
        return done
