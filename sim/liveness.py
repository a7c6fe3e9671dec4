"""The liveness phase of a run, shared by `mq sim raft` and `mq sim broker`.

After the heal every fault has ended, so a correct cluster must make progress again:
a probe client sends one operation through whoever leads, and within the bound (10 s
of virtual time by default) a leader must be elected and the probe must *settle*.
What settling means belongs to each simulator (a `Probe`): the probe operation applied
on every node for Raft; the probe batch acknowledged and dispatched on every node, all
at one commit index, for the broker. This module owns what is common: the clock that
starts at the heal, the 10 ms poll, the time to a leader and to a settled probe (both
reported in a run's stats), and the verdict when the bound passes.
"""

from __future__ import annotations

from typing import Any, Protocol

from sim.checkers import Violation
from sim.events import NS_PER_MS, NS_PER_S
from sim.world import World

LIVENESS_BOUND_S = 10.0


class Probe(Protocol):
    """One simulator's probe: its client, and what it takes for the probe to settle."""

    def start(self) -> None:
        """Start the probe client: it sends its one operation through whoever leads."""
        ...

    def settled(self) -> bool:
        """Whether the probe is done everywhere it must be (polled every 10 ms)."""
        ...

    def diagnose(self, leader_ms: float, bound_s: float) -> str:
        """Why the probe did not settle in time although a leader was elected
        `leader_ms` after the heal: the liveness violation's message."""
        ...


class Liveness:
    """After the heal: a leader, then the probe settled, within `bound_ns`."""

    _POLL_NS = 10 * NS_PER_MS

    def __init__(self, world: World[Any], probe: Probe, bound_ns: int) -> None:
        self.world = world
        self.probe = probe
        self.bound_ns = bound_ns
        self.leader_ms: float | None = None
        self.probe_ms: float | None = None
        self._start_ns = 0
        self._done = False

    def run(self) -> None:
        """Run the event loop from the heal until the probe settles or the bound passes;
        raise a `liveness` Violation in the second case."""
        loop = self.world.loop
        self._start_ns = loop.now_ns
        self.world.trace.emit(f"liveness: probe, bound {self.bound_ns // NS_PER_MS} ms")
        self.probe.start()
        loop.after(0, self._poll)
        loop.run_until(self._start_ns + self.bound_ns)
        if self._done:
            return
        bound_s = self.bound_ns / NS_PER_S
        if self.leader_ms is None:
            raise Violation("liveness", f"no leader within {bound_s:g} s after every fault healed")
        raise Violation("liveness", self.probe.diagnose(self.leader_ms, bound_s))

    def _poll(self, _: Any = None) -> None:
        loop = self.world.loop
        elapsed_ms = (loop.now_ns - self._start_ns) / NS_PER_MS
        if self.leader_ms is None and self.world.leader() is not None:
            self.leader_ms = elapsed_ms
        if self.probe.settled():
            self.probe_ms = elapsed_ms
            self._done = True
            loop.stop()
            return
        loop.after(self._POLL_NS, self._poll)
