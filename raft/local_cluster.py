"""A cluster of RaftNodes in one process, wired by an in-memory network.

It is the smallest faithful driver of the Ready contract (persist the hard state,
sync the log, send, install a snapshot, apply, advance), so unit tests, property tests
and the raft benchmark share it. It is deterministic: messages are delivered in the
order the test asks for (FIFO by default), and each node's randomness is seeded.

What it models: a crash loses log entries that were appended but not synced (and a
log reset that was not synced), and keeps the persisted hard state and the state
machine (as a broker's dispatched CommitLog would). What it does not model: time (ticks are explicit), torn writes, slow disks —
that is the simulator's job.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from raft.config import Config, RandomSource
from raft.log_store import LogStore, MemoryLogStore
from raft.messages import Entry, EntryKind, Envelope, HardState
from raft.node import RaftNode, Role
from raft.ready import Ready, ReceivedSnapshot, SnapshotMeta

_MASK64 = (1 << 64) - 1
_RECORD = struct.Struct(">QQBI")  # index, term, kind, data length


class SplitMix64:
    """A tiny seeded PRNG satisfying RandomSource (raft/ may not import `random`)."""

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def _next(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        if stop is None:
            start, stop = 0, start
        assert step == 1 and stop > start
        return start + self._next() % (stop - start)


class StateMachine:
    """Applies committed entries. With `record` it keeps every applied entry (so tests
    can compare replicas and snapshots carry real state); without, it only counts."""

    def __init__(self, record: bool) -> None:
        self.record = record
        self.entries: list[Entry] = []  # entries[i] has index i + 1 when recording
        self.last_index = 0
        self.last_term = 0
        self.applied_count = 0

    def apply(self, entries: list[Entry]) -> None:
        assert entries[0].index == self.last_index + 1, "apply in order, without gaps"
        if self.record:
            self.entries.extend(entries)
        last = entries[-1]
        self.last_index = last.index
        self.last_term = last.term
        self.applied_count += len(entries)

    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        meta = SnapshotMeta(self.last_index, self.last_term)
        if not self.record:
            return meta, b""
        parts = []
        for e in self.entries:
            parts.append(_RECORD.pack(e.index, e.term, e.kind, len(e.data)))
            parts.append(e.data)
        return meta, b"".join(parts)

    def install(self, snapshot: ReceivedSnapshot) -> None:
        assert snapshot.meta.last_index > self.last_index
        if self.record:
            entries: list[Entry] = []
            data = snapshot.data
            pos = 0
            while pos < len(data):
                index, term, kind, size = _RECORD.unpack_from(data, pos)
                pos += _RECORD.size
                entries.append(Entry(term, index, data[pos : pos + size], EntryKind(kind)))
                pos += size
            assert len(entries) == snapshot.meta.last_index
            self.entries = entries
        self.last_index = snapshot.meta.last_index
        self.last_term = snapshot.meta.last_term


class LocalNode:
    """One member: its durable state (log, hard state, state machine) and the core."""

    def __init__(self, node_id: int, record: bool, log: LogStore | None = None) -> None:
        self.id = node_id
        self.log: LogStore = log if log is not None else MemoryLogStore()
        self.hard_state = HardState()
        self.sm = StateMachine(record)
        self.raft: RaftNode | None = None

    @property
    def node(self) -> RaftNode:
        assert self.raft is not None, f"node {self.id} is down"
        return self.raft


class LocalCluster:
    def __init__(
        self,
        size: int = 3,
        config: Config | None = None,
        seed: int = 0,
        record: bool = True,
        rng_factory: Callable[[int], RandomSource] | None = None,
        compact_threshold: int | None = None,
        log_factory: Callable[[int], LogStore] | None = None,
    ) -> None:
        """`compact_threshold`: once a node applied that many entries past its log's
        snapshot boundary, it compacts its log up to its applied index. `log_factory`
        gives each node its LogStore (default: in memory; the benchmark passes the
        CommitLog-backed one)."""
        self.ids = tuple(range(1, size + 1))
        self.config = config or Config()
        self.seed = seed
        self.compact_threshold = compact_threshold
        self._rng_factory = rng_factory or (lambda node_id: SplitMix64(seed * 1000 + node_id))
        self.members = {
            i: LocalNode(i, record, None if log_factory is None else log_factory(i))
            for i in self.ids
        }
        self.network: deque[Envelope] = deque()
        self.blocked: set[tuple[int, int]] = set()  # (src, dst) links that drop messages
        self.drop_filter: Callable[[Envelope], bool] | None = None
        self.delivered = 0
        for i in self.ids:
            self.restart(i)

    # ------------------------------------------------------------------ members

    def node(self, node_id: int) -> RaftNode:
        return self.members[node_id].node

    def up(self) -> list[int]:
        return [i for i in self.ids if self.members[i].raft is not None]

    def crash(self, node_id: int) -> None:
        """Stop the node; log entries it had not synced are lost."""
        member = self.members[node_id]
        member.raft = None
        assert isinstance(member.log, MemoryLogStore), "crashes are modelled on the in-memory log"
        member.log.crash()

    def crash_mid_ready(self, node_id: int) -> None:
        """Crash while a Ready is half done: its `messages` were sent (the contract
        allows that before persistence completes) but nothing was persisted, and no
        `persisted_messages` left."""
        member = self.members[node_id]
        if member.raft is None:
            return
        ready = member.raft.ready()
        if ready is not None:
            self.network.extend(ready.messages)
        self.crash(node_id)

    def restart(self, node_id: int, config: Config | None = None) -> None:
        """Start the node again on what it persisted; `config` replaces the cluster's
        for this start (a replaced disk started with `join_existing`)."""
        member = self.members[node_id]
        assert member.raft is None
        log, sm = member.log, member.sm
        if log.term_at(sm.last_index) != sm.last_term:
            # The snapshot was installed but the log reset that goes with it was lost.
            assert sm.last_index >= log.first_index() - 1, "state machine behind the log"
            log.reset(sm.last_index, sm.last_term)
            log.sync()
        member.raft = RaftNode(
            node_id,
            self.ids,
            member.log,
            member.hard_state,
            config or self.config,
            self._rng_factory(node_id),
            applied=member.sm.last_index,
            snapshot_source=member.sm,
        )

    def leader(self) -> int | None:
        """The leader of the highest term among live nodes, if any."""
        best: RaftNode | None = None
        for i in self.up():
            node = self.node(i)
            if node.role is Role.LEADER and (best is None or node.term > best.term):
                best = node
        return best.id if best is not None else None

    # ------------------------------------------------------------------ network

    def isolate(self, node_id: int) -> None:
        for other in self.ids:
            if other != node_id:
                self.blocked.add((node_id, other))
                self.blocked.add((other, node_id))

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes in the same group can talk."""
        side = {i: g for g, group in enumerate(groups) for i in group}
        self.blocked = {
            (a, b) for a in self.ids for b in self.ids if a != b and side.get(a) != side.get(b)
        }

    def heal(self) -> None:
        self.blocked.clear()

    def deliver(self, env: Envelope) -> None:
        """Hand one message to its destination (dropped if it is down or cut off)."""
        member = self.members[env.dst]
        if member.raft is None or (env.src, env.dst) in self.blocked:
            return
        if self.drop_filter is not None and self.drop_filter(env):
            return
        self.delivered += 1
        member.raft.step(env)

    # ------------------------------------------------------------------ driving

    def process(self, node_id: int) -> Ready | None:
        """Run one Ready of `node_id` through the driver contract."""
        member = self.members[node_id]
        node = member.raft
        if node is None:
            return None
        ready = node.ready()
        if ready is None:
            return None
        if ready.hard_state is not None:
            member.hard_state = ready.hard_state
        if ready.snapshot is not None:
            member.sm.install(ready.snapshot)
        if ready.sync_log:
            member.log.sync()
        self.network.extend(ready.messages)
        self.network.extend(ready.persisted_messages)
        if ready.committed:
            member.sm.apply(ready.committed)
        node.advance(ready)
        threshold = self.compact_threshold
        if threshold is not None:
            applied = node.applied_index
            if applied - member.log.first_index() + 1 >= threshold:
                node.compact(applied)
        return ready

    def process_all(self) -> bool:
        progressed = False
        for i in self.ids:
            while self.process(i) is not None:
                progressed = True
        return progressed

    def pump(self) -> bool:
        """Process every node's Ready, then deliver the messages queued so far."""
        progressed = self.process_all()
        count = len(self.network)
        for _ in range(count):
            self.deliver(self.network.popleft())
        return progressed or count > 0

    def run(self, rounds_max: int = 10_000) -> int:
        """Pump until nothing is left to do; returns the rounds it took."""
        for rounds in range(rounds_max):
            if not self.pump():
                return rounds
        raise AssertionError(f"no quiescence after {rounds_max} rounds")

    def tick(self, ids: Sequence[int] | None = None, times: int = 1) -> None:
        """Tick nodes (all live ones by default), running the cluster after each tick."""
        for _ in range(times):
            for i in ids if ids is not None else self.ids:
                member = self.members[i]
                if member.raft is not None:
                    member.raft.tick()
            self.run()

    def elect(self, ticks_max: int = 1000) -> int:
        """Tick until a leader exists and the cluster is quiet; returns its id."""
        for _ in range(ticks_max):
            leader = self.leader()
            if leader is not None:
                self.run()
                return leader
            self.tick()
        raise AssertionError("no leader elected")

    def drive_load(
        self, entries_total: int, batch: int, data: bytes, backlog_max: int = 16384
    ) -> int:
        """Propose `entries_total` entries of `data` in batches on the leader and run
        until every live node applied them; returns the number of messages delivered.
        The benchmark times this call (raft/ has no clock); keeping at most
        `backlog_max` entries uncommitted is the client-side flow control."""
        leader_id = self.elect()
        leader = self.node(leader_id)
        log = self.members[leader_id].log
        datas = [data] * batch
        target = log.last_index() + entries_total
        delivered_before = self.delivered
        while log.last_index() < target or leader.commit_index < target:
            last = log.last_index()
            if last < target and last - leader.commit_index < backlog_max:
                leader.propose_batch(datas[: target - last])
            if not self.pump():
                raise AssertionError("the cluster stalled under load")
        self.run()
        assert all(self.members[i].sm.last_index == target for i in self.up())
        return self.delivered - delivered_before
