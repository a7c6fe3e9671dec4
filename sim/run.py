"""One `mq sim raft` run: a seed in, a verdict and a trace hash out.

A run has the three phases of sim/phases.py, all in virtual time:

1. `duration_s` of workload under the fault schedule, checkers watching every event;
2. heal: every fault ends at once (sim/faults.py `heal_all`), clients stop sending;
3. liveness: a probe client proposes one operation through whoever leads. Within
   `liveness_bound_s` (10 s of virtual time by default) a leader must be elected, the
   probe must be acknowledged (applied on the node that accepted it) and every node
   must have applied it. Otherwise the run fails with the `liveness` checker.

Then durability is checked against the final state: every operation a client saw
acknowledged is in the committed log at its index and term, and once in the applied
state of the node with the highest commit index.

Everything random derives from one `random.Random(seed)`: each component takes its own
stream from it, in a fixed order, at start-up. Nothing reads the wall clock except to
report how fast the run went.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TextIO

from raft.config import PLANTS, Config
from sim.checkers import Checkers, Violation
from sim.cluster import Cluster
from sim.events import NS_PER_MS, NS_PER_S, EventLoop
from sim.faults import FaultSchedule
from sim.liveness import Liveness
from sim.phases import run_phases, world_stats
from sim.result import RunResult
from sim.run_config import RunConfig
from sim.state_machine import decode_op
from sim.trace import Trace
from sim.workload import Client, Workload


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig(RunConfig):
    """What a run simulates. The defaults are what `mq sim raft` runs."""

    plants: ClassVar[Mapping[str, str]] = PLANTS

    clients: int = 3
    think_ms: float = 150.0
    pad_bytes: int = 64
    # Raft tunables, in 10 ms ticks: 100-200 ms election timeouts, 50 ms heartbeats.
    # Short timeouts pack many elections into little virtual time; heartbeats are the
    # bulk of an idle cluster's messages, so they are no more frequent than needed.
    election_ticks: int = 10
    heartbeat_ticks: int = 5
    # One entry per append, as DLedger's entry pusher sends them: a catch-up takes
    # several round trips, so an acknowledgement can cover old-term entries without
    # the new leader's no-op, which the Figure 8 history needs.
    append_bytes_max: int = 1
    # Every node compacts its log once this many entries are applied past its snapshot,
    # keeping the last `compact_keep`; a follower further behind gets a snapshot, sent
    # in chunks of `snapshot_chunk_bytes`. 0 turns compaction off.
    compact_every: int = 30
    compact_keep: int = 2
    snapshot_chunk_bytes: int = 512

    def _validate(self) -> None:
        if self.clients < 0 or self.think_ms <= 0 or self.duration_s < 0:
            raise ValueError("clients must be >= 0, think_ms > 0 and duration >= 0")

    def raft_config(self) -> Config:
        return Config(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            append_bytes_max=self.append_bytes_max,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
            plants=frozenset() if self.plant is None else frozenset({self.plant}),
        )


def run(seed: int, cfg: SimConfig | None = None, trace_file: TextIO | None = None) -> RunResult:
    cfg = cfg or SimConfig()
    wall_start = time.perf_counter()
    root = random.Random(seed)
    loop = EventLoop()
    trace = Trace(loop, file=trace_file)
    node_ids = list(range(1, cfg.nodes + 1))
    checkers = Checkers(node_ids)
    trace.emit(f"run seed={seed} {cfg.describe()} clients={cfg.clients} think={cfg.think_ms}ms")
    cluster = Cluster(
        loop,
        trace,
        random.Random(root.getrandbits(64)),
        node_ids,
        cfg.raft_config(),
        checkers,
        compact_every=cfg.compact_every,
        compact_keep=cfg.compact_keep,
    )
    faults = FaultSchedule(
        cluster,
        random.Random(root.getrandbits(64)),
        cfg.faults,
        mean_gap_ns=int(cfg.mean_fault_gap_ms * NS_PER_MS),
    )
    workload = Workload(
        cluster,
        random.Random(root.getrandbits(64)),
        cfg.clients,
        int(cfg.think_ms * NS_PER_MS),
        cfg.pad_bytes,
    )
    probe_rng = random.Random(root.getrandbits(64))
    liveness = Liveness(
        cluster, _RaftProbe(cluster, probe_rng), int(cfg.liveness_bound_s * NS_PER_S)
    )
    verdict = run_phases(
        loop,
        trace,
        cfg.duration_s,
        cluster,
        workload,
        faults,
        liveness,
        lambda: _check_durability(cluster, checkers),
        traceback_limit=8,
    )
    stats = {
        "max_term": max(checkers.leaders, default=0),
        "leaders": len(checkers.leaders),
        "committed": len(checkers.committed),
        "acked": len(checkers.acks),
        **world_stats(cluster, faults, liveness),
    }
    return RunResult.of(seed, verdict, loop, trace, time.perf_counter() - wall_start, stats)


class _RaftProbe:
    """The Raft probe: one client operation, settled once every node applied it."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self._index = 0
        self._client = Client(
            cluster,
            0,
            rng,
            think_mean_ns=NS_PER_MS,
            timeout_ns=300 * NS_PER_MS,
            ops_max=1,
            on_ack=self._acked,
        )

    def _acked(self, seq: int, index: int, term: int) -> None:
        self._index = index

    def start(self) -> None:
        self._client.start()

    def settled(self) -> bool:
        index = self._index
        hosts = self.cluster.hosts
        return bool(index) and all(
            hosts[n].sm.applied_index >= index for n in self.cluster.node_ids
        )

    def diagnose(self, leader_ms: float, bound_s: float) -> str:
        if not self._index:
            return (
                f"a leader was elected {leader_ms:.0f} ms after the heal, but no proposal "
                f"committed within {bound_s:g} s"
            )
        behind = [
            f"n{n}@{self.cluster.hosts[n].sm.applied_index}"
            for n in self.cluster.node_ids
            if self.cluster.hosts[n].sm.applied_index < self._index
        ]
        return (
            f"the probe committed at index {self._index}, but within {bound_s:g} s "
            f"after the heal these nodes had not applied it: {' '.join(behind)}"
        )


def _check_durability(cluster: Cluster, checkers: Checkers) -> None:
    best = None
    for node_id in cluster.node_ids:
        host = cluster.hosts[node_id]
        if host.node is None:
            continue
        if best is None or host.node.commit_index > best.node.commit_index:  # type: ignore[union-attr]
            best = host
    if best is None or best.node is None:
        raise Violation("durability", "no node is up at the end of the run")
    checkers.check_durability(
        best.disk.log.all_entries(),
        best.node.commit_index,
        best.sm.ops,
        best.sm.applied_index,
        decode_op,
        first_index=best.disk.log.first_index(),
    )
