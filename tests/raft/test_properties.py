"""Random schedules against three real nodes: the network delivers in any order, drops
and duplicates; nodes tick, crash and restart at random; proposals, transfers and log
compaction happen at random. Raft's safety properties are checked after every step."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft.config import Config
from raft.errors import RaftError
from raft.local_cluster import LocalCluster
from raft.node import Role
from tests.raft.safety import SafetyChecker

EXAMPLES = int(os.environ.get("RAFT_PROPERTY_EXAMPLES", "200"))

# Operation -> weight. Deliveries dominate so protocol exchanges complete between faults.
WEIGHTS = {
    "deliver": 8,
    "deliver_lazy": 2,
    "flush": 4,
    "process": 2,
    "tick": 4,
    "tick_all": 4,
    "drop": 2,
    "duplicate": 2,
    "propose": 4,
    "crash": 1,
    "crash_mid_ready": 1,
    "isolate": 1,
    "heal": 1,
    "transfer": 1,
    "compact": 1,
}
NODE_OPS = {"process", "tick", "crash", "crash_mid_ready", "isolate", "transfer", "compact"}


def make_schedule(seed: int, length: int) -> list[tuple[str, int]]:
    """A random schedule. Drawn from a seed rather than by hypothesis element by element:
    hypothesis spends far longer generating a 300-step list than the cluster running it."""
    rng = random.Random(seed)
    names = list(WEIGHTS)
    ops = rng.choices(names, weights=[WEIGHTS[n] for n in names], k=length)
    return [(op, rng.randrange(1, 4) if op in NODE_OPS else rng.randrange(1 << 16)) for op in ops]


def run_schedule(config: Config, seed: int, ops: list[tuple[str, int]]) -> LocalCluster:
    """Run `ops`; a delivery, tick or proposal is followed by processing the node's
    Ready, as a driver does, except `deliver_lazy`, which leaves it for a later
    `process` (so a crash can hit state that was not persisted yet)."""
    cluster = LocalCluster(3, config, seed=seed)
    checker = SafetyChecker(cluster)
    proposals = 0
    for op, arg in ops:
        net = cluster.network
        if op in ("deliver", "deliver_lazy") and net:
            env = net[arg % len(net)]
            del net[arg % len(net)]
            cluster.deliver(env)
            if op == "deliver":
                cluster.process(env.dst)
        elif op == "flush":
            # Everything queued now, in an order picked by `arg`.
            batch = list(net)
            net.clear()
            step = arg % len(batch) + 1 if batch else 1
            for k in range(len(batch)):
                env = batch[(k * step) % len(batch)] if _coprime(step, len(batch)) else batch[k]
                cluster.deliver(env)
                cluster.process(env.dst)
        elif op == "drop" and net:
            del net[arg % len(net)]
        elif op == "duplicate" and net:
            env = net[arg % len(net)]
            cluster.deliver(env)
            cluster.process(env.dst)
        elif op == "process":
            cluster.process(arg)
        elif op == "tick":
            cluster.node(arg).tick()
            cluster.process(arg)
        elif op == "tick_all":
            for i in cluster.ids:
                cluster.node(i).tick()
                cluster.process(i)
        elif op == "isolate":
            cluster.heal()
            cluster.isolate(arg)
        elif op == "heal":
            cluster.heal()
        elif op == "propose":
            leader = cluster.leader()
            if leader is not None:
                proposals += 1
                try:
                    cluster.node(leader).propose_batch([b"p%d" % proposals] * (arg % 3 + 1))
                except RaftError:
                    pass
                cluster.process(leader)
        elif op == "crash":
            cluster.crash(arg)
            cluster.restart(arg)
        elif op == "crash_mid_ready":
            cluster.crash_mid_ready(arg)
            cluster.restart(arg)
        elif op == "transfer":
            leader = cluster.leader()
            if leader is not None and leader != arg:
                try:
                    cluster.node(leader).transfer_leadership(arg)
                except RaftError:
                    pass
                cluster.process(leader)
        elif op == "compact":
            node = cluster.node(arg)
            node.compact(node.applied_index)
        checker.check()
    # Then a calm, lossless network: the cluster must converge.
    cluster.heal()
    for _ in range(60):
        cluster.tick()
        checker.check()
    leader = cluster.leader()
    assert leader is not None
    assert [cluster.node(i).role for i in cluster.ids].count(Role.LEADER) == 1
    entries = cluster.members[leader].sm.entries
    for i in cluster.ids:
        assert cluster.members[i].sm.entries == entries
    return cluster


def _coprime(a: int, b: int) -> bool:
    while b:
        a, b = b, a % b
    return a == 1


FAST = Config(election_ticks=4, heartbeat_ticks=1, append_bytes_max=64, inflight_msgs_max=3)


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(seed=st.integers(0, (1 << 32) - 1), length=st.integers(150, 400))
def test_random_schedules_keep_raft_safe(seed: int, length: int) -> None:
    run_schedule(FAST, seed, make_schedule(seed, length))


@settings(SETTINGS, max_examples=EXAMPLES // 3)
@given(seed=st.integers(0, (1 << 32) - 1), length=st.integers(150, 400))
def test_random_schedules_without_pre_vote_or_check_quorum(seed: int, length: int) -> None:
    config = Config(
        election_ticks=4,
        heartbeat_ticks=1,
        pre_vote=False,
        check_quorum=False,
        append_bytes_max=64,
    )
    run_schedule(config, seed, make_schedule(seed, length))


@pytest.mark.parametrize("plant", ["double_vote", "skip_truncate"])
def test_the_checker_catches_planted_bugs(plant: str) -> None:
    """The same schedules with a deliberate bug must fail: the checks have teeth."""
    config = replace(FAST, plants=frozenset({plant}))
    for seed in range(40):
        try:
            run_schedule(config, seed, make_schedule(seed, 300))
        except AssertionError:
            return
    raise AssertionError(f"{plant} went unnoticed in 40 schedules")
