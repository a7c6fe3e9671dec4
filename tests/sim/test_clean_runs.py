"""The unplanted core passes many seeds, under every fault together and each alone, on
3 and 5 nodes: no checker fires, and after the heal a proposal commits everywhere
within the liveness bound."""

from __future__ import annotations

import pytest

from sim.faults import FAULTS
from sim.liveness import LIVENESS_BOUND_S
from sim.run import SimConfig, run


def assert_clean(seeds: range, cfg: SimConfig) -> None:
    failures = []
    for seed in seeds:
        result = run(seed, cfg)
        if not result.ok:
            failures.append((seed, result.checker, (result.message or "").splitlines()[0]))
        else:
            probe_ms = result.stats["heal_to_probe_ms"]
            assert probe_ms is not None and probe_ms <= LIVENESS_BOUND_S * 1000
    assert not failures, failures


def test_clean_core_passes_200_seeds_on_3_nodes_with_every_fault() -> None:
    assert_clean(range(1000, 1200), SimConfig(duration_s=10.0))


def test_clean_core_passes_40_seeds_on_5_nodes_with_every_fault() -> None:
    assert_clean(range(2000, 2040), SimConfig(duration_s=8.0, nodes=5))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_clean_core_passes_each_fault_alone(fault: str) -> None:
    assert_clean(range(3000, 3012), SimConfig(duration_s=8.0, faults=(fault,)))


def test_clean_core_passes_without_faults() -> None:
    assert_clean(range(4000, 4005), SimConfig(duration_s=10.0, faults=()))
