"""A simulated process hosting one `raft.node.RaftNode`: the driver loop of raft/ready.py,
run against a simulated disk, network and clock.

The Ready contract, step by step, as this host follows it:

1. After every `step`, `propose` and `tick` (but a follower's tick that changed nothing,
   see `tick`), call `node.ready()` unless a Ready is still being persisted (the core
   hands out one Ready at a time, like etcd's RawNode).
2. Send `ready.messages` at once; they need no fsync.
3. If the Ready has a hard state or `sync_log`, start a persist: the fsync covers the
   log writes issued so far (`SimDiskLog.begin_sync`) and completes after a simulated
   disk latency. Meanwhile the node keeps stepping messages and ticking.
4. When the persist completes: the log writes become durable, then the hard state file
   is replaced (`write_atomic`), in that order, as a WAL would order them.
5. Only then send `ready.persisted_messages` (votes, acknowledgements), apply
   `ready.committed` in order, and call `node.advance(ready)`.

A crash during step 3-4 loses the persist: the hard state file keeps its old contents
and the log keeps only its durable image plus what the PRNG lets land (sim/disk_log.py).
A paused process stops ticking and receiving: messages wait in its socket buffer (up to
`inbox_max`) and a persist that completes while it is paused is handled when it resumes,
with whatever stale view it had.

The host reports everything the checkers need (role, term, commit, appends, truncations,
applies) as it happens, and writes one trace line per thing that happened.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raft.config import Config
from raft.errors import NotLeaderError, RaftError
from raft.messages import Entry, Envelope, VoteResponse
from raft.node import RaftNode, Role
from raft.ready import Ready, ReceivedSnapshot, SnapshotMeta
from sim.checkers import Checkers, Violation
from sim.node_disk import NodeDisk
from sim.process import TICK_NS, SimProcess
from sim.state_machine import DedupStateMachine

if TYPE_CHECKING:
    from sim.cluster import Cluster

# (client id, seq, attempt, data) of a proposal on its way to a node
ClientRequest = tuple[int, int, int, bytes]
_FOLLOWER = Role.FOLLOWER


class ObservedLog:
    """A LogStore that tells the checkers about appends and truncations.

    Reads are bound straight to the inner store's methods, so the wrapper costs nothing
    on the core's hot read path; only writes go through here."""

    def __init__(self, inner: Any, host: NodeHost) -> None:
        self.inner = inner
        self._host = host
        self._checkers = host.checkers
        self._node_id = host.id
        self.first_index = inner.first_index
        self.last_index = inner.last_index
        self.term_at = inner.term_at
        self.entries = inner.entries
        self.sync = inner.sync
        self.durable_index = inner.durable_index
        self.compact = inner.compact

    def append(self, entries: Sequence[Entry]) -> None:
        self.inner.append(entries)
        self._checkers.on_append(self._node_id, entries)

    def truncate_suffix(self, index: int) -> None:
        node = self._host.node
        is_leader = node is not None and node.role is Role.LEADER
        term = node.term if node is not None else 0
        self._checkers.on_truncate(self._node_id, index, is_leader, term)
        self.inner.truncate_suffix(index)
        if index <= self.inner.last_index() + 1:
            self._host.trace.emit(f"n{self._node_id} truncate from {index}")

    def reset(self, index: int, term: int) -> None:
        self.inner.reset(index, term)
        self._checkers.on_log_snapshot(self._node_id, index)
        self._host.trace.emit(f"n{self._node_id} log reset after snapshot {index}/{term}")


class NodeHost(SimProcess[ClientRequest]):
    cluster: Cluster

    def __init__(
        self,
        cluster: Cluster,
        node_id: int,
        voters: Sequence[int],
        config: Config,
        rng: random.Random,
    ) -> None:
        super().__init__(cluster, node_id, rng)
        self.voters = tuple(voters)
        self.config = config
        self.checkers: Checkers = cluster.checkers
        self.disk = NodeDisk(node_id, random.Random(rng.getrandbits(64)))
        self.log = ObservedLog(self.disk.log, self)
        self.node: RaftNode | None = None
        self.sm = DedupStateMachine(self.disk.applied_ops)
        self.persisting = False
        self._deferred: tuple[int, Ready, int | None] | None = None
        # index -> (term, client id, seq, attempt) of proposals accepted here
        self.pending: dict[int, tuple[int, int, int, int]] = {}
        self.compact_every = cluster.compact_every
        self.compact_keep = cluster.compact_keep
        # The role and term last reported to the checkers.
        self.seen_role: Role | None = None
        self.seen_term = -1
        self._commit = 0

    # -- life cycle (the rest is SimProcess's)

    def _boot(self) -> None:
        hs = self.disk.load_hard_state()
        self.sm = DedupStateMachine(self.disk.applied_ops, self.disk.load_checkpoint())
        applied = self.sm.applied_index
        if applied > self.log.last_index():
            raise Violation(
                "durability",
                f"n{self.id} restarts with entries up to {applied} applied, but its log "
                f"ends at {self.log.last_index()}: applied entries were lost",
            )
        self.up = True
        self.paused = False
        self.checkers.on_restart(self.id, applied)
        self.seen_role, self.seen_term, self._commit = None, -1, 0
        self.trace.emit(
            f"n{self.id} start t{hs.term} vote={hs.vote} commit={hs.commit} "
            f"applied={applied} last={self.log.last_index()}"
        )
        self.node = RaftNode(
            self.id,
            self.voters,
            self.log,
            hs,
            self.config,
            random.Random(self._rng.getrandbits(64)),
            applied=applied,
            snapshot_source=self,
        )
        self._observe()

    def _crashed(self, reason: str) -> None:
        self.node = None
        self.persisting = False
        self._deferred = None
        self.pending.clear()
        durable = self.disk.log.durable_index()
        base = self.disk.log.first_index() - 1
        lost = self.disk.crash()
        self.trace.emit(
            f"n{self.id} CRASH ({reason}): {lost} unsynced log writes lost, "
            f"log now ends at {self.log.last_index()}"
        )
        self.checkers.on_role(self.id, False, 0)
        log = self.disk.log
        if log.first_index() - 1 == base:
            self.checkers.on_log_reset(self.id, durable, log.all_entries()[durable - base :])
        else:
            self.checkers.on_log_reset(self.id, 0, log.all_entries(), base=log.first_index() - 1)
        self.seen_role = None

    def _resume_io(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._persisted(deferred)

    def _step_buffered(self, env: Envelope) -> None:
        self._step(env)

    def _serve_buffered(self, req: ClientRequest) -> None:
        self._client_request(req)

    @property
    def on_grid(self) -> bool:
        """Ticked by the cluster's shared 10 ms grid (see Cluster._grid_tick)."""
        return self.tick_ns == TICK_NS

    # -- inputs

    def tick(self) -> None:
        """One tick of this node's clock.

        A tick moves timers only: it can change the role and term, never the commit. A
        follower whose tick changed neither only advanced its election timer, so there
        is nothing to poll `ready()` for (it times out by becoming a pre-candidate or
        candidate, a role change); skipping that poll is most of what an idle follower
        costs. Leaders and candidates are polled after every tick (heartbeats, retries)."""
        node = self.node
        assert node is not None
        node.tick()
        self.after_tick()

    def after_tick(self) -> None:
        node = self.node
        assert node is not None
        role = node.role
        if role is not self.seen_role or node.term != self.seen_term:
            self._observe()
        elif role is _FOLLOWER:
            return
        self._pump()

    def receive(self, env: Envelope) -> None:
        if not self.up:
            self.trace.emit(f"n{self.id} down: message lost")
            return
        if self.paused:
            self._buffer(env)
            return
        # _step, inlined: this is the path of every message delivered.
        node = self.node
        assert node is not None
        node.step(env)
        if (
            node.role is not self.seen_role
            or node.term != self.seen_term
            or node.commit_index != self._commit
        ):
            self._observe()
        self._pump()

    def _step(self, env: Envelope) -> None:
        node = self.node
        assert node is not None
        node.step(env)
        self._observe()
        self._pump()

    def client_request(self, req: ClientRequest) -> None:
        """A client's proposal arrived over its link to this node."""
        if not self.up:
            self.trace.emit(f"c{req[0]}:s{req[1]} to n{self.id} lost (node down)")
            return
        if self.paused:
            self._buffer(req)
            return
        self._client_request(req)

    def _client_request(self, req: ClientRequest) -> None:
        client, seq, attempt, data = req
        node = self.node
        assert node is not None
        reply = self.cluster.client_reply
        try:
            index = node.propose(data)
        except NotLeaderError as exc:
            leader = exc.leader_id if exc.leader_id is not None else 0
            self.trace.emit(f"n{self.id} reject c{client}:s{seq} leader={leader}")
            reply(client, ("redirect", seq, attempt, leader, 0))
            return
        except RaftError as exc:  # backlog full: the client backs off and retries
            self.trace.emit(f"n{self.id} refuse c{client}:s{seq}: {type(exc).__name__}")
            reply(client, ("busy", seq, attempt, 0, 0))
            return
        term = node.term
        old = self.pending.get(index)
        if old is not None:
            reply(old[1], ("lost", old[2], old[3], index, old[0]))
        self.pending[index] = (term, client, seq, attempt)
        self.trace.emit(f"n{self.id} propose c{client}:s{seq} -> {index}/{term}")
        reply(client, ("accepted", seq, attempt, index, term))
        self._observe()
        self._pump()

    # -- the Ready loop

    def _observe(self) -> None:
        """Report role, term and commit changes to the trace, the checkers and the
        fault schedule (which may crash or cut off this node on the spot)."""
        node = self.node
        if node is None:
            return
        role = node.role
        term = node.term
        if role is not self.seen_role or term != self.seen_term:
            self.seen_role = role
            self.seen_term = term
            self.trace.emit(f"n{self.id} {role.name} t{term} leader={node.leader_id}")
            self.checkers.on_role(self.id, role is Role.LEADER, term)
            if role is Role.LEADER:
                self._leader_elected()
                if self.node is None:
                    return
        commit = node.commit_index
        if commit != self._commit:
            if commit < self._commit:
                raise Violation(
                    "state_machine_safety",
                    f"n{self.id} commit index went back from {self._commit} to {commit}",
                )
            self._commit = commit
            self.trace.emit(f"n{self.id} commit {commit}")
            self.checkers.on_commit(self.id, commit, term)
            if role is Role.LEADER:
                self._leader_committed(term)

    def _pump(self) -> None:
        """Poll `ready()` and act on it until the node has nothing more or a persist is
        under way (the next Ready waits for its advance)."""
        node = self.node
        while node is not None and not self.persisting and not self.paused:
            rd = node.ready()
            if rd is None:
                return
            if rd.messages:
                send = self.network.send
                for env in rd.messages:
                    send(env)
            if rd.hard_state is not None or rd.sync_log:
                self._start_persist(rd)
                return
            self._complete(rd)
            node = self.node

    def _start_persist(self, rd: Ready) -> None:
        self.persisting = True
        token = self.disk.begin_sync() if rd.sync_log else None
        rng = self._rng.random
        if rng() < self.disk_slow_p:
            lo, hi = self.disk_latency_max_ns, self.disk_slow_max_ns
        else:
            lo, hi = self.disk_latency_min_ns, self.disk_latency_max_ns
        latency = lo + int(rng() * (hi - lo))
        hs = rd.hard_state
        what = "" if hs is None else f" hs=t{hs.term}/v{hs.vote}/c{hs.commit}"
        if token is not None:
            what += f" log..{self.log.last_index()}"
        self.trace.emit(f"n{self.id} persist{what} +{latency // 1000}us")
        self.loop.after(latency, self._persisted, (self.epoch, rd, token))
        self._persist_started(latency, token is not None)

    def _persisted(self, item: tuple[int, Ready, int | None]) -> None:
        epoch, rd, token = item
        if epoch != self.epoch:
            return
        if self.paused:
            self._deferred = item
            return
        if token is not None:
            self.disk.finish_sync(token)
        if rd.hard_state is not None:
            self.disk.save_hard_state(rd.hard_state)
        self.trace.emit(f"n{self.id} persisted")
        self.persisting = False
        self._complete(rd)
        self._pump()

    def _complete(self, rd: Ready) -> None:
        node = self.node
        assert node is not None
        if rd.persisted_messages:
            send = self.network.send
            for env in rd.persisted_messages:
                send(env)
        if rd.snapshot is not None:
            self._install(rd.snapshot)
        if rd.committed:
            apply = self._apply
            for entry in rd.committed:
                apply(entry)
        node.advance(rd)
        faults = self.cluster.faults
        if faults is not None and faults.watch_votes and rd.persisted_messages:
            for env in rd.persisted_messages:
                msg = env.msg
                if type(msg) is VoteResponse and msg.granted and not msg.pre_vote:
                    self._vote_granted()
                    break
        # advance() may move a leader's commit index (its own entries became durable);
        # it changes nothing else the checkers watch.
        if node.commit_index != self._commit:
            self._observe()
        if self.compact_every and self.node is node:
            self._maybe_compact(node)

    # -- snapshots

    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """SnapshotSource: the state machine as it is, for a follower the leader's log
        no longer covers."""
        index = self.sm.applied_index
        term = self.log.term_at(index)
        assert term is not None
        return SnapshotMeta(index, term), self.sm.snapshot()

    def _maybe_compact(self, node: RaftNode) -> None:
        """Keep the log short: once `compact_every` entries are applied past the
        snapshot boundary, checkpoint the state machine and compact all but the last
        `compact_keep` applied entries (a follower further behind gets a snapshot)."""
        boundary = self.log.first_index() - 1
        applied = node.applied_index
        if applied - boundary < self.compact_every + self.compact_keep:
            return
        upto = min(applied, self.log.durable_index()) - self.compact_keep
        if upto <= boundary:
            return
        self.disk.save_checkpoint(self.sm.checkpoint())
        node.compact(upto)
        self.trace.emit(f"n{self.id} compact to {upto}")

    def _install(self, snapshot: ReceivedSnapshot) -> None:
        index = snapshot.meta.last_index
        self.sm.install(snapshot.data, index)
        self.disk.save_checkpoint(self.sm.checkpoint())
        self.checkers.on_snapshot_installed(self.id, index)
        self.trace.emit(f"n{self.id} install snapshot {index}/{snapshot.meta.last_term}")

    def _apply(self, entry: Entry) -> None:
        self.checkers.on_apply(self.id, entry)
        sm = self.sm
        op = sm.apply(entry)
        if sm.checkpoint_due():
            self.disk.save_checkpoint(sm.checkpoint())
        self.trace.emit(
            f"n{self.id} apply {entry.index}/{entry.term}"
            + ("" if op is None else f" c{op[0]}:s{op[1]}")
        )
        pending = self.pending.pop(entry.index, None)
        if pending is not None:
            term, client, seq, attempt = pending
            verdict = "acked" if entry.term == term else "lost"
            self.cluster.client_reply(client, (verdict, seq, attempt, entry.index, term))
