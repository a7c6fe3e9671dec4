"""`mq sim raft`: one run, many runs, plants, traces and the replay command."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from mq.cli import main
from raft.config import PLANTS
from sim.report import draw_progress


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["sim", "raft", *argv])
    return code, capsys.readouterr().out


def test_list_plants_names_and_describes_every_plant(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--list-plants")
    assert code == 0
    for name, description in PLANTS.items():
        assert name in out and description in out


def test_one_seed_prints_its_verdict_and_trace_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--seed", "3", "--duration", "3")
    assert code == 0
    assert out.startswith("seed 3: OK")
    assert "trace hash " in out


def test_a_failure_prints_checker_last_events_and_the_replay_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = run_cli(capsys, "--seed", "1", "--duration", "5", "--plant", "double_vote")
    assert code == 1
    assert "seed 1: FAILED" in out
    assert "checker election_safety:" in out
    assert "last 30 events:" in out
    replay = next(line for line in out.splitlines() if line.startswith("replay: "))
    assert "mq sim raft --seed 1 --nodes 3 --duration 5 --faults all --plant double_vote" in replay
    trace = tmp_path / "trace.txt"
    code, again = run_cli(
        capsys, "--seed", "1", "--duration", "5", "--plant", "double_vote", "--trace", str(trace)
    )
    assert code == 1
    digest = hashlib.sha256(trace.read_bytes()).hexdigest()
    assert f"trace hash {digest}" in again
    assert f"trace hash {digest}" in out  # the replay is the same run


def test_many_seeds_print_a_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--seeds", "3", "--start", "5", "--duration", "2", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["seeds"] == 3 and summary["failures"] == []
    for key in ("sim_seconds", "wall_seconds", "sim_speed", "events", "events_per_s"):
        assert summary[key] > 0


def test_many_seeds_list_the_failing_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(
        capsys, "--seeds", "3", "--duration", "5", "--plant", "double_vote", "--json"
    )
    summary = json.loads(out)
    assert code == 1
    assert summary["failures"] and set(summary["failures"]) <= {0, 1, 2}


def test_faults_can_be_chosen_and_bad_names_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _ = run_cli(capsys, "--seed", "2", "--duration", "2", "--faults", "crash,partition")
    assert code == 0
    assert main(["sim", "raft", "--faults", "crash,meteor"]) == 2


def test_the_progress_bar_counts_seeds_and_failures() -> None:
    out = io.StringIO()
    draw_progress(out, 3, 10, 1)
    assert out.getvalue().endswith("3/10 seeds, 1 failed")
