"""The checkers have teeth: each deliberate bug in the core (raft/config.py PLANTS) is
caught by a safety checker within its stated seed budget, with the default fault mix
on 3 nodes and 10 s of virtual time per seed. The budgets are also in
docs/simulations.md; the seeds tried stop at the first catch, so a test costs only the
seeds up to it."""

from __future__ import annotations

import pytest

from raft.config import PLANTS
from sim.run import SimConfig, run

# plant -> (seeds budget, checkers that may catch it)
SAFETY = {
    "election_safety",
    "leader_append_only",
    "log_matching",
    "leader_completeness",
    "state_machine_safety",
    "durability",
}
BUDGETS: dict[str, tuple[int, set[str]]] = {
    "commit_old_term": (
        150,
        {"leader_completeness", "log_matching", "state_machine_safety", "durability"},
    ),
    "ack_before_fsync": (
        100,
        {"leader_completeness", "log_matching", "state_machine_safety", "durability"},
    ),
    "double_vote": (30, {"election_safety"} | SAFETY),
    "skip_truncate": (30, SAFETY),
    "accept_stale_term": (150, SAFETY),
    "forget_vote": (150, {"election_safety"} | SAFETY),
}


def test_every_plant_has_a_budget() -> None:
    assert set(BUDGETS) == set(PLANTS)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_plant_is_caught_within_its_seed_budget(plant: str) -> None:
    budget, checkers = BUDGETS[plant]
    cfg = SimConfig(duration_s=10.0, plant=plant)
    tried = []
    for seed in range(budget):
        result = run(seed, cfg)
        tried.append((seed, result.checker))
        if result.checker in SAFETY:
            assert result.checker in checkers, (seed, result.checker, result.message)
            return
    pytest.fail(f"{plant} not caught by a safety checker in {budget} seeds: {tried}")
