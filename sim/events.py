"""The discrete-event loop: a virtual clock and a heap of timed callbacks.

Time is an integer number of nanoseconds since the start of the run; nothing reads
the wall clock. Events at the same instant run in the order they were scheduled (the
sequence number breaks ties), so a run is a pure function of its seed.

Why a heap of `(time_ns, seq, fn, arg)` tuples and not event objects: the loop runs
millions of events per run, and tuple comparison on two ints is the cheapest ordering
Python offers; `fn` is never compared because `seq` is unique.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


class EventLoop:
    def __init__(self) -> None:
        self.now_ns = 0
        self.events = 0
        # When `events` passes `events_limit`, `on_limit` runs (and may raise): a bound
        # on the work a run may do, so a livelocked system cannot hang the simulator.
        self.events_limit = 1 << 62
        self.on_limit: Callable[[], None] = lambda: None
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self._stopped = False

    def at(self, time_ns: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Run `fn(arg)` at `time_ns` (never in the past)."""
        if time_ns < self.now_ns:
            time_ns = self.now_ns
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, fn, arg))

    def after(self, delay_ns: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now_ns + delay_ns, self._seq, fn, arg))

    def stop(self) -> None:
        self._stopped = True

    def run_until(self, end_ns: int) -> None:
        """Run events up to and including `end_ns`, or until `stop()`."""
        heap = self._heap
        pop = heapq.heappop
        self._stopped = False
        while heap and not self._stopped:
            if heap[0][0] > end_ns:
                break
            time_ns, _, fn, arg = pop(heap)
            self.now_ns = time_ns
            self.events += 1
            if self.events > self.events_limit:
                self.events_limit = 1 << 62
                self.on_limit()
            fn(arg)
        if not self._stopped and self.now_ns < end_ns:
            self.now_ns = end_ns
