"""Logs are compacted and lagging followers catch up by snapshot, so the core's
install-snapshot path runs under the same faults and checkers as the rest."""

from __future__ import annotations

import io

from raft.messages import Entry
from sim.run import SimConfig, run
from sim.state_machine import DedupStateMachine, encode_op


def test_a_state_machine_snapshot_restores_the_same_state() -> None:
    sm = DedupStateMachine()
    for index, (client, seq) in enumerate([(1, 1), (2, 1), (1, 1), (1, 2)], 1):
        sm.apply(Entry(1, index, encode_op(client, seq)))
    copy = DedupStateMachine()
    copy.install(sm.snapshot(), 4)
    assert (copy.applied_index, copy.ops, copy.duplicates) == (4, [(1, 1), (2, 1), (1, 2)], 1)
    assert copy.apply(Entry(1, 5, encode_op(2, 1))) == (2, 1)
    assert copy.ops == [(1, 1), (2, 1), (1, 2)]  # a retry after the snapshot is still a duplicate


def test_runs_compact_logs_and_install_snapshots() -> None:
    installs = compactions = chunks = 0
    for seed in range(6):
        out = io.StringIO()
        result = run(seed, SimConfig(duration_s=20.0), trace_file=out)
        assert result.ok, result.message
        text = out.getvalue()
        installs += text.count("install snapshot")
        compactions += text.count("compact to")
        chunks += text.count(" Snap t")
    assert compactions > 50
    assert installs >= 3
    assert chunks > installs  # snapshots travel in several chunks
