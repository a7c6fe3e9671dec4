"""Liveness: after every fault heals, a leader is elected and a new proposal commits on
every node within the bound; and the check fails a run where that cannot happen."""

from __future__ import annotations

import pytest

from sim.faults import FaultSchedule
from sim.run import SimConfig, run


def test_a_new_proposal_commits_everywhere_soon_after_the_heal() -> None:
    for seed in range(5):
        result = run(seed, SimConfig(duration_s=10.0))
        assert result.ok, result.message
        assert result.stats["heal_to_leader_ms"] is not None
        assert result.stats["heal_to_probe_ms"] < 2_000


def test_liveness_fails_when_the_network_never_heals(monkeypatch: pytest.MonkeyPatch) -> None:
    heal_all = FaultSchedule.heal_all

    def heal_then_cut_everyone_off(self: FaultSchedule) -> None:
        heal_all(self)
        net = self.cluster.network
        net.one_way([(a, b) for a in net.node_ids for b in net.node_ids if a != b])

    monkeypatch.setattr(FaultSchedule, "heal_all", heal_then_cut_everyone_off)
    result = run(1, SimConfig(duration_s=2.0, liveness_bound_s=3.0))
    assert result.checker == "liveness"
    assert "no leader" in (result.message or "") or "no proposal" in (result.message or "")


def test_liveness_fails_when_a_majority_stays_down(monkeypatch: pytest.MonkeyPatch) -> None:
    heal_all = FaultSchedule.heal_all

    def heal_then_crash_a_majority(self: FaultSchedule) -> None:
        heal_all(self)
        for node_id in self.cluster.node_ids[:2]:
            self.cluster.hosts[node_id].crash("kept down")

    monkeypatch.setattr(FaultSchedule, "heal_all", heal_then_crash_a_majority)
    result = run(2, SimConfig(duration_s=2.0, liveness_bound_s=3.0))
    assert result.checker == "liveness"
