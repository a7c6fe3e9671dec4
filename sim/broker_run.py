"""One `mq sim broker` run: a seed in, a verdict and a trace hash out.

The phases are those of `mq sim raft` (sim/run.py), in virtual time:

1. `duration_s` of workload (idempotent producers, a consumer group) under the fault
   schedule of sim/faults.py; the queue checkers (sim/queue_checkers.py) compare every
   acknowledgement, every pull response and, every second and after every restart,
   every node's ConsumeQueues with the model of what was committed;
2. heal: every fault ends at once, producers and consumers stop;
3. liveness: a probe producer sends one batch through whoever leads. Within
   `liveness_bound_s` (10 s) a leader must acknowledge it and every node must have
   dispatched it (and everything before it: all nodes at the same commit index).
   Then the final check: every node serves exactly the committed history through
   PULL_MESSAGE, with identical ConsumeQueue units; and, after a settle period of
   `SETTLE_NS` (three heartbeat rounds) in which the running consumers keep
   heartbeating, every node lists exactly them as the group's members
   (sim/group_checkers.py, which also checks every Notify during the run).

Everything random derives from one `random.Random(seed)`, each component taking its
own stream in a fixed order at start-up; nothing reads the wall clock but the report
of how fast the run went.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TextIO

from mq.protocol import Frame
from sim.broker_cluster import BrokerCluster, broker_configs
from sim.broker_host import BrokerHost
from sim.broker_plants import PLANTS, install
from sim.broker_workload import (
    GROUP,
    HEARTBEAT_NS,
    SUBSCRIPTIONS,
    TOPIC,
    BrokerWorkload,
    Producer,
    ReplyIds,
)
from sim.events import NS_PER_MS, NS_PER_S, EventLoop
from sim.faults import BROKER_FAULTS, BROKER_FAULTS_KNOWN, FaultSchedule
from sim.group_checkers import MembershipChecker
from sim.liveness import Liveness
from sim.phases import run_phases, world_stats
from sim.queue_checkers import QueueCheckers
from sim.result import RunResult
from sim.run_config import RunConfig
from sim.trace import Trace

SCAN_INTERVAL_NS = NS_PER_S
SETTLE_NS = 3 * HEARTBEAT_NS
FINAL_TAGS = next(tags for tags in SUBSCRIPTIONS if tags is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSimConfig(RunConfig):
    """What a broker run simulates. The defaults are what `mq sim broker` runs."""

    plants: ClassVar[Mapping[str, str]] = PLANTS
    known_faults: ClassVar[Mapping[str, str]] = BROKER_FAULTS_KNOWN

    faults: tuple[str, ...] = tuple(BROKER_FAULTS)
    producers: int = 3
    consumers: int = 2
    queues: int = 4
    think_ms: float = 100.0

    def _validate(self) -> None:
        if self.producers < 0 or self.consumers < 0 or self.think_ms <= 0:
            raise ValueError("producers and consumers must be >= 0, think_ms > 0")
        if self.queues < 1 or self.duration_s < 0:
            raise ValueError("queues must be >= 1 and duration >= 0")


def run_broker(
    seed: int, cfg: BrokerSimConfig | None = None, trace_file: TextIO | None = None
) -> RunResult:
    cfg = cfg or BrokerSimConfig()
    wall_start = time.perf_counter()
    root = random.Random(seed)
    loop = EventLoop()
    trace = Trace(loop, file=trace_file)
    node_ids = tuple(range(1, cfg.nodes + 1))
    trace.emit(
        f"broker run seed={seed} {cfg.describe()} "
        f"producers={cfg.producers} consumers={cfg.consumers} queues={cfg.queues} "
        f"think={cfg.think_ms}ms"
    )
    configs = broker_configs(node_ids, default_queues=cfg.queues)
    checkers = QueueCheckers(node_ids, TOPIC, retention_ms=configs[node_ids[0]].retention_ms)
    checkers.final_tags = FINAL_TAGS
    cluster = BrokerCluster(loop, trace, random.Random(root.getrandbits(64)), configs)
    checkers.hosts = cluster.hosts
    faults = FaultSchedule(
        cluster,  # type: ignore[arg-type]
        random.Random(root.getrandbits(64)),
        cfg.faults,
        mean_gap_ns=int(cfg.mean_fault_gap_ms * NS_PER_MS),
    )
    faults.full_room_max = 2 * configs[node_ids[0]].segment_bytes
    workload = BrokerWorkload(
        cluster,
        checkers,
        random.Random(root.getrandbits(64)),
        cfg.producers,
        cfg.consumers,
        cfg.queues,
        cfg.think_ms,
        plant=cfg.plant,
    )
    install(cfg.plant, cluster, random.Random(root.getrandbits(64)))
    probe = _BrokerProbe(
        cluster, checkers, random.Random(root.getrandbits(64)), cfg.queues, workload.reply_ids
    )
    liveness = Liveness(cluster, probe, int(cfg.liveness_bound_s * NS_PER_S))
    membership = MembershipChecker(cluster)

    replaced = dict.fromkeys(node_ids, 0)

    def on_host_start(host: BrokerHost) -> None:
        if host.disk_replacements != replaced[host.id]:
            replaced[host.id] = host.disk_replacements
            checkers.on_disk_replaced(host)
        checkers.on_restart(host, installed=host.installed_at_boot)
        membership.on_restart(host)

    def final_check() -> None:
        hosts = [cluster.hosts[n] for n in node_ids]
        checkers.check_final(hosts)
        loop.run_until(loop.now_ns + SETTLE_NS)
        membership.check_final(hosts, GROUP, workload.live_consumers())

    cluster.on_host_start = on_host_start
    cluster.on_reply = checkers.on_reply
    cluster.on_request = membership.on_request
    cluster.on_notify = membership.on_notify
    cluster.on_response = lambda host, frame: checkers.catch_up(host)
    for host in cluster.hosts.values():
        host.on_commit = checkers.catch_up
        host.on_log_start = checkers.on_log_start
        host.on_snapshot_sent = lambda h, out: checkers.on_snapshot_sent(h, out[0])
    verdict = run_phases(
        loop,
        trace,
        cfg.duration_s,
        cluster,
        workload,
        faults,
        liveness,
        final_check,
        start_watchers=lambda: loop.after(SCAN_INTERVAL_NS, _scan, (cluster, checkers)),
        traceback_limit=12,
    )
    model = checkers.model
    stats = {
        "max_term": max(
            (h.core.raft.term for h in cluster.hosts.values() if h.core is not None), default=0
        ),
        "committed_entries": model.committed,
        "messages_committed": sum(len(q) for q in model.queues.values()),
        "batches_acked": sum(p.acked for p in workload.producers),
        "send_attempts": sum(p.attempts for p in workload.producers),
        "messages_served": sum(c.served for c in workload.consumers),
        "consumer_restarts": sum(c.restarts for c in workload.consumers),
        "offset_commits_acked": sum(c.commits_acked for c in workload.consumers),
        "consumer_clean_stops": sum(c.clean_stops for c in workload.consumers),
        "notifies": membership.notifies,
        "resets_acked": workload.admin.acked,
        "consumer_requeries": sum(c.requeries for c in workload.consumers),
        "scans": checkers.scans,
        "segments_deleted": sum(h.segments_deleted for h in cluster.hosts.values()),
        "snapshots_installed": sum(h.snapshots_installed for h in cluster.hosts.values()),
        "disk_full_exits": sum(h.disk_full_exits for h in cluster.hosts.values()),
        "disks_replaced": sum(h.disk_replacements for h in cluster.hosts.values()),
        "messages_expired": checkers.expired,
        "messages_lost_to_installs": checkers.lost_to_installs,
        "consumer_skips": sum(c.skips for c in workload.consumers),
        **world_stats(cluster, faults, liveness),
    }
    return RunResult.of(seed, verdict, loop, trace, time.perf_counter() - wall_start, stats)


def _scan(item: tuple[BrokerCluster, QueueCheckers]) -> None:
    """Every second: each running node's ConsumeQueues are a prefix of the model."""
    cluster, checkers = item
    for node_id in cluster.node_ids:
        host = cluster.hosts[node_id]
        if host.up and not host.paused:
            checkers.scan(host)
    cluster.loop.after(SCAN_INTERVAL_NS, _scan, item)


class _BrokerProbe:
    """The broker probe: one batch from a probe producer, settled once a leader
    acknowledged it and every node is at the same commit index with it dispatched."""

    def __init__(
        self,
        cluster: BrokerCluster,
        checkers: QueueCheckers,
        rng: random.Random,
        queues: int,
        reply_ids: ReplyIds,
    ) -> None:
        self.cluster = cluster
        self._acked_offset: int | None = None
        self._producer = Producer(
            "probe",
            cluster,
            checkers,
            rng,
            reply_ids,
            queues,
            think_mean_ns=NS_PER_MS,
            timeout_ns=500 * NS_PER_MS,
            batches_max=1,
            on_ack=self._acked,
        )

    def _acked(self, frame: Frame) -> None:
        offset = frame.fields.get("commit_offset")
        self._acked_offset = offset if isinstance(offset, int) else 0

    def start(self) -> None:
        self._producer.start()

    def settled(self) -> bool:
        acked = self._acked_offset
        if acked is None:
            return False
        hosts = [self.cluster.hosts[n] for n in self.cluster.node_ids]
        commits = {h.core.raft.commit_index for h in hosts if h.core is not None}
        return len(commits) == 1 and all(
            h.core is not None
            and not h.paused
            and h.core.store.dispatcher.dispatched_offset > acked
            and h.core.applied_index == h.core.raft.commit_index
            for h in hosts
        )

    def diagnose(self, leader_ms: float, bound_s: float) -> str:
        if self._acked_offset is None:
            return (
                f"a leader was elected {leader_ms:.0f} ms after the heal, but no send "
                f"was acknowledged within {bound_s:g} s"
            )
        states = " ".join(_state(self.cluster.hosts[n]) for n in self.cluster.node_ids)
        return (
            f"the probe was acknowledged (commit offset {self._acked_offset}), but within "
            f"{bound_s:g} s after the heal not every node dispatched it: {states}"
        )


def _state(host: BrokerHost) -> str:
    core = host.core
    if core is None:
        return f"n{host.id}:down"
    return (
        f"n{host.id}:commit={core.raft.commit_index},applied={core.applied_index},"
        f"dispatched={core.store.dispatcher.dispatched_offset}"
    )
