"""Same seed, same run: the trace hash is a pure function of the seed and the config,
within a process and across processes (whatever PYTHONHASHSEED says)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

from sim.run import SimConfig, run

CFG = SimConfig(duration_s=5.0)


def test_same_seed_gives_the_same_trace_hash() -> None:
    first = run(11, CFG)
    second = run(11, CFG)
    assert first.trace_hash == second.trace_hash
    assert first.events == second.events
    assert first.stats == second.stats


def test_different_seeds_give_different_runs() -> None:
    hashes = {run(seed, CFG).trace_hash for seed in range(4)}
    assert len(hashes) == 4


def test_the_trace_file_is_what_the_hash_covers() -> None:
    out = io.StringIO()
    result = run(5, CFG, trace_file=out)
    text = out.getvalue()
    assert hashlib.sha256(text.encode()).hexdigest() == result.trace_hash
    assert text.splitlines()[-len(result.tail) :] == result.tail
    assert len(result.tail) == 30


def test_a_subprocess_with_another_hash_seed_replays_the_same_run() -> None:
    here = run(7, CFG)
    env = dict(os.environ, PYTHONHASHSEED="4242")
    proc = subprocess.run(
        [sys.executable, "-m", "mq.cli", "sim", "raft", "--seed", "7", "--duration", "5", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    there = json.loads(proc.stdout)
    assert there["trace_hash"] == here.trace_hash
    assert there["events"] == here.events
