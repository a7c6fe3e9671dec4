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

Retention runs in the core's tick and a snapshot install in `ready()`; the host tells
the checkers the moment either moves where the node's log begins (`on_log_start`),
and wraps the core's `snapshot()` (what Raft sends a follower that needs compacted
entries) so the checkers see what each leader sent, and a plant may change it. A full
disk during an install raises InstallDiskFullError out of `ready()`, which the broker
documents as fatal to the process: the host crashes it and restarts it later, as the
fault schedule's crashes do (so does a start that cannot finish an interrupted install
for want of space).

Each host has its own clock: `now_ms` runs at the rate of its ticks, so clock drift
(`set_tick`) changes both how often the Raft core ticks and how fast its request
deadlines expire. A paused process buffers its input (up to `INBOX_MAX`) and its clock
keeps running, as a stopped process's wall clock does.

Peer messages leave the core as encoded RAFT_MESSAGE frames; the host decodes them
with the broker's codec (so both directions of the codec run on every message) and
hands the envelopes to the shared network model of sim/network.py.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from mq.broker.config import BrokerConfig
from mq.broker.core import BrokerCore, InstallDiskFullError, Notify, PeerMessage, Reply, Work
from mq.broker.raft_codec import decode_envelope
from mq.protocol import Frame, decode_frame
from raft.messages import Envelope, VoteResponse
from raft.node import RaftNode, Role
from raft.ready import SnapshotMeta
from sim.events import NS_PER_MS
from sim.process import TICK_NS, SimProcess
from storage.files import SimFileSystem

if TYPE_CHECKING:
    from sim.broker_cluster import BrokerCluster

CLOCK_START_MS = 1_000_000

# (client name, reply id, encoded request frame) of a request on its way to a node
ClientRequest = tuple[str, int, bytes]
# What a core's `snapshot()` returns: Raft's meta and the SegmentSnapshot's bytes.
SnapshotOut = tuple[SnapshotMeta, bytes]
# How long a process that died of a full disk (during a snapshot install) stays down.
DISK_FULL_RESTART_NS = (100 * NS_PER_MS, 1000 * NS_PER_MS)


class BrokerHost(SimProcess[ClientRequest]):
    cluster: BrokerCluster

    def __init__(
        self,
        cluster: BrokerCluster,
        node_id: int,
        config: BrokerConfig,
        rng: random.Random,
    ) -> None:
        super().__init__(cluster, node_id, rng)
        self.config = config
        self.fs = SimFileSystem(random.Random(rng.getrandbits(64)))
        self.disk_replacements = 0
        self.core: BrokerCore | None = None
        self._in_flight: Work | None = None
        self._deferred_done = False
        # The host's clock: now_ms = base_ms + (now_ns - base_ns) * TICK_NS / tick_ns.
        self._clock_base_ms = CLOCK_START_MS
        self._clock_base_ns = 0
        self._seen: tuple[Role, int, int | None] | None = None
        self._commit = 0
        # Hooks for the checkers and for sim-side plants (deliberate bugs).
        self.on_commit: Callable[[BrokerHost], None] = lambda host: None
        self.request_filter: Callable[[BrokerHost, Frame, int], Frame | None] | None = None
        self.request_rewrite: Callable[[BrokerHost, Frame], Frame] | None = None
        self.skip_fsync = False
        # Called when where the node's log begins moves: "retention" (a tick deleted
        # segments) or "install" (a snapshot was installed); and with every snapshot
        # the core hands Raft to send (after `snapshot_plant`, which may change it).
        self.on_log_start: Callable[[BrokerHost, str], None] = lambda host, cause: None
        self.on_snapshot_sent: Callable[[BrokerHost, SnapshotOut], None] = lambda h, s: None
        self.snapshot_plant: Callable[[BrokerHost, SnapshotOut], SnapshotOut] | None = None
        # Over every life of the process: segments retention deleted, snapshots
        # installed (an install a restart finished counts once), deaths of a full disk
        # during an install (or a start that could not finish one).
        self.segments_deleted = 0
        self.snapshots_installed = 0
        self.disk_full_exits = 0
        # Whether the last start finished a snapshot install a crash had interrupted.
        self.installed_at_boot = False
        self._log_view: tuple[int, int] = (0, 0)
        self._core_counts: tuple[int, int] = (0, 0)

    # -- the clock

    def now_ms(self) -> int:
        elapsed_ns = self.loop.now_ns - self._clock_base_ns
        return self._clock_base_ms + elapsed_ns * TICK_NS // (self.tick_ns * NS_PER_MS)

    def _rebase_clock(self) -> None:
        """Clock drift: the node's clock (and so its ticks) runs TICK_NS/tick_ns as fast,
        from the time it reads now."""
        self._clock_base_ms = self.now_ms()
        self._clock_base_ns = self.loop.now_ns

    @property
    def node(self) -> RaftNode | None:
        """The Raft node inside the core (what sim/faults.py looks at), None when down."""
        return self.core.raft if self.core is not None else None

    # -- the disk

    def fill_disk(self, room: int) -> bool:
        """Whatever needs a new segment or file fails with DiskFullError until
        `free_disk`."""
        self.disk_fills += 1
        self.fs.capacity_bytes = self.fs.used_bytes() + room
        return True

    def free_disk(self) -> None:
        self.fs.capacity_bytes = None

    def replace_disk(self) -> None:
        """A new, empty disk for a crashed node (the `wipe` fault): it restarts with no
        log, no term, no vote and no store, and, as docs/broker.md asks of an operator,
        with `join` (no vote or campaign until a leader has caught it up)."""
        assert not self.up, "replace the disk of a stopped node"
        self.fs = SimFileSystem(random.Random(self._rng.getrandbits(64)))
        self.config = dataclasses.replace(self.config, join=True)
        self.disk_replacements += 1

    # -- life cycle (the rest is SimProcess's)

    def _boot(self) -> None:
        installing = self.fs.exists(f"{self.config.data_dir.rstrip('/')}/installing")
        try:
            core = BrokerCore(
                self.config,
                self.fs,
                self.now_ms(),
                rng=random.Random(self._rng.getrandbits(64)),
            )
        except InstallDiskFullError as exc:
            # Finishing an interrupted install needs room the disk does not have: the
            # process exits again, and is started again later.
            self.disk_full_exits += 1
            self.fs.crash()
            self.trace.emit(f"n{self.id} start failed: {exc}")
            self._restart_later()
            return
        self.core = core
        self.installed_at_boot = installing
        if installing:
            self.snapshots_installed += 1
        self._wrap_snapshot(core)
        self._log_view = self._view_log(core)
        self._core_counts = (0, 0)
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

    def _wrap_snapshot(self, core: BrokerCore) -> None:
        """Raft asks the core (its SnapshotSource) for the snapshot to send: route that
        through the plant, if any, and tell the checkers what went out."""
        real = core.snapshot

        def snapshot() -> SnapshotOut:
            out = real()
            if self.snapshot_plant is not None:
                out = self.snapshot_plant(self, out)
            self.on_snapshot_sent(self, out)
            return out

        core.snapshot = snapshot  # type: ignore[method-assign]

    @staticmethod
    def _view_log(core: BrokerCore) -> tuple[int, int]:
        return core.commit_log.min_offset, core.log.first_index()

    def _watch_log(self, core: BrokerCore) -> None:
        """After a call that may delete segments or install a snapshot: if where the
        log begins moved, count what did it and tell the checkers."""
        view = self._view_log(core)
        if view == self._log_view:
            return
        self._log_view = view
        stats = core.stats()
        counts = (stats["segments_deleted"], stats["snapshots_installed"])
        deleted = counts[0] - self._core_counts[0]
        installed = counts[1] - self._core_counts[1]
        self._core_counts = counts
        self.segments_deleted += deleted
        self.snapshots_installed += installed
        cause = "install" if installed else "retention"
        self.trace.emit(
            f"n{self.id} log begins at {view[0]} (index {view[1]}): "
            + ("snapshot installed" if installed else f"{deleted} segments deleted")
        )
        self.on_log_start(self, cause)

    def _restart_later(self) -> None:
        """The process died by itself (not a fault): start it again after a while, as
        a supervisor would (the fault schedule's restart; the heal starts it anyway)."""
        faults = self.cluster.faults
        downtime = self._rng.randrange(*DISK_FULL_RESTART_NS)
        if faults is not None:
            faults.crash(self, "", downtime)  # type: ignore[arg-type]  # a SimProcess
        else:
            token = self.crashes
            self.loop.after(downtime, self._restart_if, token)

    def _restart_if(self, token: int) -> None:
        if not self.up and self.crashes == token:
            self.start()

    def _crashed(self, reason: str) -> None:
        self.core = None
        self._in_flight = None
        self._deferred_done = False
        self.fs.crash()
        self._seen = None
        self.trace.emit(f"n{self.id} CRASH ({reason})")

    def _resume_io(self) -> None:
        if self._deferred_done:
            self._deferred_done = False
            self._work_done(self.epoch)

    def _step_buffered(self, env: Envelope) -> None:
        self.receive(env)

    def _serve_buffered(self, req: ClientRequest) -> None:
        self.client_request(req)

    # -- inputs

    def tick(self) -> None:
        core = self.core
        assert core is not None
        core.tick(self.now_ms())
        self._watch_log(core)
        if self.up and self.core is core:
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
        client, reply_id, data = req
        core = self.core
        assert core is not None
        frame = decode_frame(data)
        now_ms = self.now_ms()
        self.cluster.on_request(self, client, frame)
        if self.request_rewrite is not None:
            frame = self.request_rewrite(self, frame)
        response: Frame | None = None
        if self.request_filter is not None:
            response = self.request_filter(self, frame, now_ms)
        if response is None:
            connection = self.cluster.connection_token(client, self.id)
            response = core.handle(frame, reply_id, now_ms, connection=connection)
        if response is not None:
            self.cluster.reply(self, reply_id, response)
        self._pump()

    # -- the driver loop

    def _route(self) -> None:
        core = self.core
        if core is None:
            return
        outputs = core.take_outputs()
        if not outputs:
            return
        replies: list[Reply] = []
        notifies: list[Notify] = []
        for out in outputs:
            if isinstance(out, PeerMessage):
                _group, env = decode_envelope(out.frame)
                self.network.send(env)
                msg = env.msg
                if type(msg) is VoteResponse and msg.granted and not msg.pre_vote:
                    self._vote_granted()
            elif isinstance(out, Reply):
                replies.append(out)
            elif isinstance(out, Notify):
                notifies.append(out)
            # RoleChanged / TopicsChanged are for NameServer registration: role changes
            # are read from the Raft node itself (_observe).
        # Held pulls are woken in the core's set order; answer in request order so the
        # run does not depend on PYTHONHASHSEED.
        replies.sort(key=lambda r: r.reply_to)
        for reply in replies:
            self.cluster.reply(self, reply.reply_to, reply.frame)
        for notify in notifies:
            self.cluster.notify(self, notify.connection, notify.frame)

    def _pump(self) -> None:
        epoch = self.epoch
        while self.up and self.epoch == epoch and not self.paused:
            core = self.core
            assert core is not None
            self._route()
            self._observe()
            if self._in_flight is not None or not self.up or self.epoch != epoch:
                return
            try:
                work = core.ready(self.now_ms())
            except InstallDiskFullError as exc:
                # A full disk during a snapshot install: fatal to the process (the log
                # on disk is the old one; a restart asks the leader again).
                self.disk_full_exits += 1
                self.crash(f"disk full during a snapshot install: {exc}")
                self._restart_later()
                return
            self._watch_log(core)
            if not self.up or self.epoch != epoch:
                return
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
            if syncs:
                self._persist_started(latency, True)
            self.loop.after(latency, self._work_done, epoch)
            return

    def _work_done(self, epoch: int) -> None:
        if epoch != self.epoch or self._in_flight is None:
            return
        if self.paused:
            self._deferred_done = True
            return
        work, self._in_flight = self._in_flight, None
        core = self.core
        assert core is not None
        if self.skip_fsync:
            # Plant: the fsync is skipped but reported done (a disk that lies).
            plan, work.plan = work.plan, None
            work.run()  # the hard state only (a full disk may refuse it, as for real)
            work.plan = plan
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
            if raft.role is Role.LEADER:
                self._leader_elected()
                if not self.up or self.core is not core:
                    return
        commit = raft.commit_index
        if commit != self._commit:
            self._commit = commit
            self.trace.emit(f"n{self.id} commit {commit}")
            self.on_commit(self)
            if raft.role is Role.LEADER:
                self._leader_committed(raft.term)
