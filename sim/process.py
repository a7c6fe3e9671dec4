"""A simulated OS process, the part both simulators' hosts share: up or crashed,
running or paused, ticking on the cluster's grid or on a drifting clock of its own, a
bounded socket buffer while paused, and the fault schedule's hooks.

`sim/node_host.py` (a `RaftNode` behind the Ready contract) and `sim/broker_host.py`
(a `BrokerCore` behind its driver contract) subclass it and supply what a process
*runs*: booting from disk (`_boot`), what a crash loses (`_crashed`), a tick, and how
buffered input is handled when a paused process resumes. What a process *is* to the
faults (crash, pause, resume, drift, the leader/commit/vote hooks) is here once, so a
fault means the same thing to both simulators.
"""

from __future__ import annotations

import random
from typing import Any, Generic, TypeVar

from raft.messages import Envelope
from sim.events import NS_PER_MS, EventLoop
from sim.trace import Trace

# The cluster-wide tick: 10 ms, as the brokers tick.
TICK_NS = 10 * NS_PER_MS
# A paused process's socket buffers hold at most this many inputs; the rest is lost.
INBOX_MAX = 1024

Request = TypeVar("Request")


class SimProcess(Generic[Request]):
    """One process of a simulated cluster. `Request` is what a client sends it."""

    def __init__(self, cluster: Any, node_id: int, rng: random.Random) -> None:
        self.cluster = cluster
        self.id = node_id
        self.loop: EventLoop = cluster.loop
        self.trace: Trace = cluster.trace
        self.network = cluster.network
        self._rng = rng
        self.up = False
        self.paused = False
        self.crashes = 0
        # Bumped by every boot and crash: a timer armed by an earlier life is stale.
        self.epoch = 0
        self.tick_ns = TICK_NS
        # Bumped whenever the tick timer is re-armed or stopped: stale ticks are ignored.
        self._tick_gen = 0
        self.inbox: list[Envelope | Request] = []
        # Simulated fsync latency: 1-4 ms, and `disk_slow_p` of the time up to 40 ms.
        self.disk_latency_min_ns = 1 * NS_PER_MS
        self.disk_latency_max_ns = 4 * NS_PER_MS
        self.disk_slow_p = 0.05
        self.disk_slow_max_ns = 40 * NS_PER_MS
        # The term of the last commit reported to the faults as a leader's.
        self._leader_commit_term = -1
        # How many times the disk was filled (the `full` fault's token, as `crashes` is).
        self.disk_fills = 0

    # -- the disk (the `full` fault: only a host with a store has one to fill)

    def fill_disk(self, room: int) -> bool:
        """Leave `room` bytes free on the disk until `free_disk`; False if this host
        keeps no store that a full disk would reach."""
        return False

    def free_disk(self) -> None:
        """End `fill_disk`."""

    def replace_disk(self) -> None:
        """Give a stopped process a new, empty disk (the `wipe` fault, broker hosts)."""
        raise NotImplementedError(f"{type(self).__name__} has no disk to replace")

    # -- what a subclass runs

    def _boot(self) -> None:
        """Construct the core from what is on disk and mark the process up."""
        raise NotImplementedError

    def _crashed(self, reason: str) -> None:
        """Drop the core and whatever the crash loses (unsynced writes, in-flight I/O)."""
        raise NotImplementedError

    def tick(self) -> None:
        """One tick of this process's clock."""
        raise NotImplementedError

    def _pump(self) -> None:
        """Drive the core until it has nothing more to do or waits for I/O."""
        raise NotImplementedError

    def _resume_io(self) -> None:
        """Finish the I/O that completed while the process was paused."""

    def _step_buffered(self, env: Envelope) -> None:
        """Handle a peer message that waited in the socket buffer."""
        raise NotImplementedError

    def _serve_buffered(self, req: Request) -> None:
        """Handle a client request that waited in the socket buffer."""
        raise NotImplementedError

    def _rebase_clock(self) -> None:
        """Called before the tick length changes, for a process that keeps a clock."""

    @property
    def on_grid(self) -> bool:
        """Ticked by the cluster's shared grid rather than by a timer of its own."""
        return False

    # -- life cycle

    def start(self) -> None:
        """Boot (or reboot) the process from what is on its disk."""
        assert not self.up
        self.epoch += 1  # work scheduled by an earlier life is ignored from now on
        self._boot()
        self._pump()
        if self.up:
            self._start_ticking()

    def crash(self, reason: str) -> None:
        if not self.up:
            return
        self.up = False
        self.paused = False
        self.epoch += 1
        self._tick_gen += 1
        self.inbox.clear()
        self.crashes += 1
        self._crashed(reason)

    def pause(self) -> None:
        if not self.up or self.paused:
            return
        self.paused = True
        self._tick_gen += 1
        self.trace.emit(f"n{self.id} PAUSE")

    def resume(self) -> None:
        """Wake up with a stale view. What a woken process does first is a race: half
        the time its timers fire before it reads its sockets (a leader that lost its
        job while paused then still acts as leader for a moment)."""
        if not self.up or not self.paused:
            return
        self.paused = False
        timers_first = self._rng.random() < 0.5
        self.trace.emit(
            f"n{self.id} RESUME with {len(self.inbox)} buffered inputs"
            + (", timers first" if timers_first else "")
        )
        self._resume_io()
        if timers_first and self.up and not self.paused:
            self.tick()
        inbox, self.inbox = self.inbox, []
        for item in inbox:
            if not self.up or self.paused:
                break
            if type(item) is Envelope:
                self._step_buffered(item)
            else:
                self._serve_buffered(item)  # type: ignore[arg-type]
        if self.up and not self.paused:
            self._start_ticking()

    def _buffer(self, item: Envelope | Request) -> None:
        """A paused process's socket buffers hold what arrives, up to a bound."""
        if len(self.inbox) < INBOX_MAX:
            self.inbox.append(item)
        else:
            self.trace.emit(f"n{self.id} paused: inbox full, input lost")

    # -- the clock

    def set_tick(self, tick_ns: int) -> None:
        """Clock drift: from now on this process ticks every `tick_ns` on a clock of its
        own; `TICK_NS` puts it back on time (and on the cluster's grid, if it has one)."""
        if tick_ns == self.tick_ns:
            return
        self._rebase_clock()
        self.tick_ns = tick_ns
        if self.up and not self.paused:
            self._start_ticking()

    def _start_ticking(self) -> None:
        self._tick_gen += 1
        if not self.on_grid:
            first = 1 + int(self._rng.random() * self.tick_ns)
            self.loop.after(first, self._own_tick, self._tick_gen)

    def _own_tick(self, gen: int) -> None:
        """A tick on the process's own clock (off the grid)."""
        if gen != self._tick_gen:
            return
        self.tick()
        if gen == self._tick_gen:
            self.loop.after(self.tick_ns, self._own_tick, gen)

    # -- the fault schedule's hooks (sim/faults.py), which may crash or cut off this
    # process on the spot

    def _leader_elected(self) -> None:
        faults = self.cluster.faults
        if faults is not None and faults.watch_leaders:
            faults.on_leader_elected(self)

    def _leader_committed(self, term: int) -> None:
        faults = self.cluster.faults
        if faults is not None and faults.watch_commits:
            first = self._leader_commit_term != term
            self._leader_commit_term = term
            faults.on_leader_commit(self, first)

    def _vote_granted(self) -> None:
        faults = self.cluster.faults
        if faults is not None and faults.watch_votes:
            faults.on_vote_granted(self)

    def _persist_started(self, latency_ns: int, syncs_log: bool) -> None:
        faults = self.cluster.faults
        if faults is not None and faults.watch_persist:
            faults.on_persist_start(self, latency_ns, syncs_log)
