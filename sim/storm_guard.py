"""The storm guard: a bound on how much work one run may do in virtual time.

Both simulators run it from the start of the faults phase. A livelock or a message
storm (some plants cause them, and reordering plus duplication can make the core
resend its replication window in bursts) would otherwise keep a seed running for
minutes; the guard turns it into a fast `liveness` failure instead, so `--seeds N`
stays bounded.
"""

from __future__ import annotations

from typing import Any

from sim.checkers import Violation
from sim.events import NS_PER_MS, EventLoop


class StormGuard:
    """Fails the run when the cluster spins: more than `events_max` events in a 100 ms
    window of virtual time, `windows` windows in a row, or `burst_max` in one window (a
    storm that doubles itself would otherwise run for minutes inside a single window).

    A healthy 3-node run has well under a hundred events per window; reordering plus
    duplication can make the core resend its replication window in bursts of several
    thousand (see docs/simulations.md), which is tolerated."""

    _WINDOW_NS = 100 * NS_PER_MS

    def __init__(
        self,
        loop: EventLoop,
        events_max: int = 5_000,
        windows: int = 5,
        burst_max: int = 40_000,
    ) -> None:
        self._loop = loop
        self.events_max = events_max
        self.windows = windows
        self.burst_max = burst_max
        self._last = 0
        self._hot = 0
        loop.on_limit = self._burst

    def start(self) -> None:
        self._arm()
        self._loop.after(self._WINDOW_NS, self._check)

    def _arm(self) -> None:
        self._last = self._loop.events
        self._loop.events_limit = self._last + self.burst_max

    def _burst(self) -> None:
        raise Violation(
            "liveness",
            f"the cluster is spinning: over {self.burst_max} events within 100 ms of "
            f"virtual time (a livelock or a message storm)",
        )

    def _check(self, _: Any = None) -> None:
        count = self._loop.events - self._last
        self._hot = self._hot + 1 if count > self.events_max else 0
        if self._hot >= self.windows:
            raise Violation(
                "liveness",
                f"the cluster is spinning: over {self.events_max} events per 100 ms of "
                f"virtual time for {self.windows * 100} ms (a livelock or a message storm)",
            )
        self._arm()
        self._loop.after(self._WINDOW_NS, self._check)
