"""The queue checkers have teeth: each deliberate bug of sim/broker_plants.py (on the
simulator's side of the broker core's API: the cores are never changed) is caught by
the checker that owns the guarantee it breaks, within a seed budget, with the default
faults and 10 s of virtual time per seed. Seeds stop at the first catch."""

from __future__ import annotations

import pytest

from sim.broker_plants import PLANTS
from sim.broker_run import BrokerSimConfig, run_broker

# plant -> (seed budget, checkers that may catch it)
BUDGETS: dict[str, tuple[int, set[str]]] = {
    "pull_uncommitted": (5, {"committed_only", "queue_order"}),
    "ack_unstored": (5, {"acked_durable"}),
    "offset_ack_unstored": (5, {"acked_durable"}),
    "fsync_lies": (40, {"acked_durable", "log_matching", "committed_only", "queue_order"}),
    "fresh_seq_retry": (5, {"no_duplicate"}),
    "swap_served": (5, {"queue_order"}),
    "unregister_ignored": (3, {"group_membership"}),
    "stale_generation_applied": (5, {"offset_generation"}),
}

# A disk that lies breaks what the Raft core assumes of its storage, so the core's own
# invariant assertions may fire before a checker sees the damage: such a seed is
# spent without a catch (the checkers must still catch it within the budget).
LYING_DISK = frozenset({"fsync_lies"})


def test_every_plant_has_a_budget() -> None:
    assert set(BUDGETS) == set(PLANTS)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_the_plant_is_caught_within_its_budget(plant: str) -> None:
    budget, checkers = BUDGETS[plant]
    cfg = BrokerSimConfig(duration_s=10.0, plant=plant)
    for seed in range(budget):
        result = run_broker(seed, cfg)
        if result.ok:
            continue
        if plant in LYING_DISK and result.checker == "exception" and "raft/" in result.message:
            continue
        assert result.checker in checkers, f"seed {seed}: {result.checker}: {result.message}"
        return
    pytest.fail(f"{plant} not caught in seeds 0-{budget - 1}")
