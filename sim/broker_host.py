"""A simulated broker process: the real `mq.broker.core.BrokerCore` over its own
`SimFileSystem`, driven the way the trio server drives it (mq/broker/server.py), but
in virtual time.

The driver loop of mq/broker/core.py, as this host follows it:

1. After every input (a tick, a peer message, a client request, a finished fsync) call
   `core.ready(now_ms)` unless a Work is in flight; send `take_outputs()` at once (Raft
   appends may leave before the fsync).
2. A Work that does I/O (`work.blocking`: a hard state write or CommitLog segments to
   sync) takes a simulated disk latency (1-4 ms, 5% of the time up to 40 ms). Meanwhile
   the core keeps serving requests and queues the Raft messages it receives (the core's
   own rule). Only when the latency has passed does `work.run()` write and fsync, then
   `core.advance(work, now_ms)`; a crash before that loses the fsync, so the unsynced
   CommitLog tail is what `SimFileSystem.crash()` decides: lost, partly landed, torn.
3. A Work without I/O is run and advanced at once.

A crash drops the core object (no `close`), crashes the file system, and a restart
constructs a fresh `BrokerCore` on the same file system: CommitLog recovery, the
ConsumeQueue rebuild and the replicated-state replay all run for real.

Each host has its own clock: `now_ms` runs at the rate of its ticks, so clock drift
(`set_tick`) changes both how often the Raft core ticks and how fast its request
deadlines expire. A paused process buffers its input (up to `INBOX_MAX`) and its clock
keeps running, as a stopped process's wall clock does.

Peer messages leave the core as encoded RAFT_MESSAGE frames; the host decodes them
with the broker's codec (so both directions of the codec run on every message) and
hands the envelopes to the shared network model of sim/network.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from mq.broker.config import BrokerConfig
from mq.broker.core import BrokerCore, PeerMessage, Reply, Work
from mq.broker.raft_codec import decode_envelope
from mq.protocol import Frame, decode_frame
from raft.messages import Envelope, VoteResponse
from raft.node import RaftNode, Role
from sim.events import NS_PER_MS
from storage.files import SimFileSystem

if TYPE_CHECKING:
    from sim.broker_cluster import BrokerCluster

TICK_NS = 10 * NS_PER_MS
INBOX_MAX = 1024
CLOCK_START_MS = 1_000_000

# (client name, reply id, encoded request frame) of a request on its way to a node
ClientRequest = tuple[str, int, bytes]


class BrokerHost:
    def __init__(
        self,
        cluster: BrokerCluster,
        node_id: int,
        config: BrokerConfig,
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.id = node_id
        self.config = config
        self.loop = cluster.loop
        self.trace = cluster.trace
        self.network = cluster.network
        self._rng = rng
        self.fs = SimFileSystem(random.Random(rng.getrandbits(64)))
        self.core: BrokerCore | None = None
        self.up = False
        self.paused = False
        self.crashes = 0
        self.tick_ns = TICK_NS
        self._tick_gen = 0
        self._epoch = 0
        self.inbox: list[Envelope | ClientRequest] = []
        self._in_flight: Work | None = None
        self._deferred_done = False
        # The host's clock: now_ms = base_ms + (now_ns - base_ns) * TICK_NS / tick_ns.
        self._clock_base_ms = CLOCK_START_MS
        self._clock_base_ns = 0
        self.disk_latency_min_ns = 1 * NS_PER_MS
        self.disk_latency_max_ns = 4 * NS_PER_MS
        self.disk_slow_p = 0.05
        self.disk_slow_max_ns = 40 * NS_PER_MS
        self._seen: tuple[Role, int, int | None] | None = None
        self._commit = 0
        self._leader_commit_term = -1
        # Hooks for the checkers and for sim-side plants (deliberate bugs).
        self.on_commit: Callable[[BrokerHost], None] = lambda host: None
        self.request_filter: Callable[[BrokerHost, Frame, int], Frame | None] | None = None
        self.skip_fsync = False

    # -- the clock

    def now_ms(self) -> int:
        elapsed_ns = self.loop.now_ns - self._clock_base_ns
        return self._clock_base_ms + elapsed_ns * TICK_NS // (self.tick_ns * NS_PER_MS)

    def set_tick(self, tick_ns: int) -> None:
        """Clock drift: the node's clock (and so its ticks) runs TICK_NS/tick_ns as fast."""
        if tick_ns == self.tick_ns:
            return
        self._clock_base_ms = self.now_ms()
        self._clock_base_ns = self.loop.now_ns
        self.tick_ns = tick_ns
        if self.up and not self.paused:
            self._start_ticking()

    @property
    def node(self) -> RaftNode | None:
        """The Raft node inside the core (what sim/faults.py looks at), None when down."""
        return self.core.raft if self.core is not None else None

    # -- life cycle

    def start(self) -> None:
        """Boot (or reboot) the process from what is on its disk."""
        assert not self.up
        self._epoch += 1
        self.core = BrokerCore(
            self.config,
            self.fs,
            self.now_ms(),
            rng=random.Random(self._rng.getrandbits(64)),
        )
        self.up = True
        self.paused = False
        self._in_flight = None
        self._seen = None
        raft = self.core.raft
        self._commit = raft.commit_index
        self.trace.emit(
            f"n{self.id} start t{raft.term} commit={raft.commit_index} "
            f"applied={raft.applied_index} last={self.core.log.last_index()} "
            f"dispatched={self.core.store.dispatcher.dispatched_offset}"
        )
        self.cluster.on_start(self)
        self._pump()
        if self.up:
            self._start_ticking()

    def crash(self, reason: str) -> None:
        if not self.up:
            return
        self.up = False
        self.paused = False
        self._epoch += 1
        self._tick_gen += 1
        self.core = None
        self._in_flight = None
        self._deferred_done = False
        self.inbox.clear()
        self.crashes += 1
        self.fs.crash()
        self._seen = None
        self.trace.emit(f"n{self.id} CRASH ({reason})")

    def pause(self) -> None:
        if not self.up or self.paused:
            return
        self.paused = True
        self._tick_gen += 1
        self.trace.emit(f"n{self.id} PAUSE")

    def resume(self) -> None:
        """Wake up with a stale view; half the time timers fire before input is read."""
        if not self.up or not self.paused:
            return
        self.paused = False
        timers_first = self._rng.random() < 0.5
        self.trace.emit(
            f"n{self.id} RESUME with {len(self.inbox)} buffered inputs"
            + (", timers first" if timers_first else "")
        )
        if self._deferred_done:
            self._deferred_done = False
            self._work_done(self._epoch)
        if timers_first and self.up and not self.paused:
            self.tick()
        inbox, self.inbox = self.inbox, []
        for item in inbox:
            if not self.up or self.paused:
                break
            if type(item) is Envelope:
                self.receive(item)
            else:
                self.client_request(item)  # type: ignore[arg-type]
        if self.up and not self.paused:
            self._start_ticking()

    def _start_ticking(self) -> None:
        self._tick_gen += 1
        first = 1 + int(self._rng.random() * self.tick_ns)
        self.loop.after(first, self._own_tick, self._tick_gen)

    # -- inputs

    def _own_tick(self, gen: int) -> None:
        if gen != self._tick_gen:
            return
        self.tick()
        if gen == self._tick_gen:
            self.loop.after(self.tick_ns, self._own_tick, gen)

    def tick(self) -> None:
        core = self.core
        assert core is not None
        core.tick(self.now_ms())
        self._pump()

    def receive(self, env: Envelope) -> None:
        if not self.up:
            return
        if self.paused:
            self._buffer(env)
            return
        core = self.core
        assert core is not None
        core.step(env)
        self._pump()

    def client_request(self, req: ClientRequest) -> None:
        """A client's request arrived over its link to this node."""
        if not self.up:
            self.trace.emit(f"{req[0]}#{req[1]} to n{self.id} lost (node down)")
            return
        if self.paused:
            self._buffer(req)
            return
        _client, reply_id, data = req
        core = self.core
        assert core is not None
        frame = decode_frame(data)
        now_ms = self.now_ms()
        response: Frame | None = None
        if self.request_filter is not None:
            response = self.request_filter(self, frame, now_ms)
        if response is None:
            response = core.handle(frame, reply_id, now_ms)
        if response is not None:
            self.cluster.reply(self, reply_id, response)
        self._pump()

    def _buffer(self, item: Envelope | ClientRequest) -> None:
        if len(self.inbox) < INBOX_MAX:
            self.inbox.append(item)
        else:
            self.trace.emit(f"n{self.id} paused: inbox full, input lost")

    # -- the driver loop

    def _route(self) -> None:
        core = self.core
        if core is None:
            return
        outputs = core.take_outputs()
        if not outputs:
            return
        replies: list[Reply] = []
        for out in outputs:
            if isinstance(out, PeerMessage):
                _group, env = decode_envelope(out.frame)
                self.network.send(env)
                msg = env.msg
                if type(msg) is VoteResponse and msg.granted and not msg.pre_vote:
                    faults = self.cluster.faults
                    if faults is not None and faults.watch_votes:
                        faults.on_vote_granted(self)  # type: ignore[arg-type]
            elif isinstance(out, Reply):
                replies.append(out)
            # RoleChanged / TopicsChanged are for NameServer registration: role changes
            # are read from the Raft node itself (_observe).
        # Held pulls are woken in the core's set order; answer in request order so the
        # run does not depend on PYTHONHASHSEED.
        replies.sort(key=lambda r: r.reply_to)
        for reply in replies:
            self.cluster.reply(self, reply.reply_to, reply.frame)

    def _pump(self) -> None:
        epoch = self._epoch
        while self.up and self._epoch == epoch and not self.paused:
            core = self.core
            assert core is not None
            self._route()
            self._observe()
            if self._in_flight is not None or not self.up or self._epoch != epoch:
                return
            work = core.ready(self.now_ms())
            self._route()
            if work is None:
                self._observe()
                return
            if not work.blocking and not self.skip_fsync:
                work.run()
                core.advance(work, self.now_ms())
                continue
            self._in_flight = work
            latency = self._rng.randrange(self.disk_latency_min_ns, self.disk_latency_max_ns)
            if self._rng.random() < self.disk_slow_p:
                latency += self._rng.randrange(0, self.disk_slow_max_ns)
            syncs = work.plan is not None and bool(work.plan.segments)
            self.trace.emit(
                f"n{self.id} fsync{' hs' if work.hard_state is not None else ''}"
                f"{' log' if syncs else ''} +{latency // 1000}us"
            )
            faults = self.cluster.faults
            if faults is not None and faults.watch_persist and syncs:
                faults.on_persist_start(self, latency, True)  # type: ignore[arg-type]
            self.loop.after(latency, self._work_done, epoch)
            return

    def _work_done(self, epoch: int) -> None:
        if epoch != self._epoch or self._in_flight is None:
            return
        if self.paused:
            self._deferred_done = True
            return
        work, self._in_flight = self._in_flight, None
        core = self.core
        assert core is not None
        if self.skip_fsync:
            # Plant: the fsync is skipped but reported done (a disk that lies).
            if work.hard_state is not None:
                self.fs.write_atomic(work.hard_state_path, work.hard_state)
        else:
            work.run()
        core.advance(work, self.now_ms())
        self._pump()

    def _observe(self) -> None:
        """Report role, term and commit changes (trace, fault hooks, checkers)."""
        core = self.core
        if core is None:
            return
        raft = core.raft
        view = (raft.role, raft.term, raft.leader_id)
        if view != self._seen:
            self._seen = view
            self.trace.emit(f"n{self.id} {raft.role.name} t{raft.term} leader={raft.leader_id}")
            faults = self.cluster.faults
            if raft.role is Role.LEADER and faults is not None and faults.watch_leaders:
                faults.on_leader_elected(self)  # type: ignore[arg-type]
                if not self.up or self.core is not core:
                    return
        commit = raft.commit_index
        if commit != self._commit:
            self._commit = commit
            self.trace.emit(f"n{self.id} commit {commit}")
            self.on_commit(self)
            faults = self.cluster.faults
            if raft.role is Role.LEADER and faults is not None and faults.watch_commits:
                first = self._leader_commit_term != raft.term
                self._leader_commit_term = raft.term
                faults.on_leader_commit(self, first)  # type: ignore[arg-type]
