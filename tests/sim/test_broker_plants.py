"""The queue checkers have teeth: each deliberate bug of sim/broker_plants.py (on the
simulator's side of the broker core's API: the cores are never changed) is caught by
the checker that owns the guarantee it breaks, within a seed budget, with the default
faults and 10 s of virtual time per seed. Seeds stop at the first catch."""

from __future__ import annotations

import pytest

from sim import broker_plants
from sim.broker_host import BrokerHost, SnapshotOut
from sim.broker_plants import PLANTS
from sim.broker_run import BrokerSimConfig, run_broker

# plant -> (seed budget, checkers that may catch it)
BUDGETS: dict[str, tuple[int, set[str]]] = {
    "pull_uncommitted": (5, {"committed_only", "queue_order"}),
    "ack_unstored": (5, {"acked_durable"}),
    "offset_ack_unstored": (5, {"acked_durable"}),
    "fsync_lies": (
        40,
        {"acked_durable", "log_matching", "committed_only", "queue_order", "liveness"},
    ),
    "fresh_seq_retry": (5, {"no_duplicate"}),
    "swap_served": (5, {"queue_order"}),
    "unregister_ignored": (3, {"group_membership"}),
    "stale_generation_applied": (5, {"offset_generation"}),
    # A follower must need a snapshot (the `lag` fault), and for the first plant the
    # leader must hold a segment snapshot past where its log begins.
    "snapshot_from_later_segment": (5, {"retention"}),
    "snapshot_queue_offsets_off": (5, {"queue_order"}),
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


@pytest.mark.parametrize(
    ("plant", "function"),
    [
        ("snapshot_from_later_segment", "_newest_snapshot"),
        ("snapshot_queue_offsets_off", "_queue_offset_off"),
    ],
)
def test_a_snapshot_plant_that_changes_nothing_is_not_caught(
    plant: str, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What catches a snapshot plant is what it changes, not the wrapping of the core's
    `snapshot()`: with the plant's function sending what the core gave, the first seed
    the plant is caught on passes (and installs a snapshot)."""

    def unchanged(host: BrokerHost, sent: SnapshotOut) -> SnapshotOut:
        return sent

    budget, _checkers = BUDGETS[plant]
    cfg = BrokerSimConfig(duration_s=10.0, plant=plant)
    first = next(seed for seed in range(budget) if not run_broker(seed, cfg).ok)
    monkeypatch.setattr(broker_plants, function, unchanged)
    result = run_broker(first, cfg)
    assert result.ok, f"{result.checker}: {result.message}"
    assert result.stats["snapshots_installed"] > 0
