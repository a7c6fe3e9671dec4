"""The seeds on which `mq sim broker` found bugs in storage and the broker core pass
now that they are fixed (main, f5f8461; the few-line reproductions are in
tests/storage/test_sim_found.py and tests/mq/test_broker_sim_found.py).

Seed 1: a crash tore the last ConsumeQueue unit after its commit offset and size;
recovery kept it with a wrong tag hash, and a consumer subscribed to that tag never got
an acknowledged message from that replica. Seed 82: a follower truncated an entry placed
after a segment-end filler and kept the filler; the replicas' CommitLog layouts (and
ConsumeQueue commit offsets) differed. Seed 61: a state snapshot at an entry end 6
bytes before a segment end; the node could not restart. Seed 68: a crash tore an entry
placed at a segment start behind the previous segment's blank filler; recovery kept the
filler, so the node's next entry landed at the next segment's start while the others
placed it at the old tail.

The seeds name runs of today's simulator: a change to its random streams (another
workload) moves them, and then these tests prove less, not nothing. Retention and the
`lag` fault (branch sim-retention) moved them again."""

from __future__ import annotations

import pytest

from sim.broker_run import BrokerSimConfig, run_broker
from sim.faults import BROKER_FAULTS_KNOWN, parse_faults


@pytest.mark.parametrize("seed", [1, 82, 61, 68])
def test_a_seed_that_found_a_bug_passes(seed: int) -> None:
    result = run_broker(seed, BrokerSimConfig())
    assert result.ok, f"{result.checker}: {result.message}"


@pytest.mark.parametrize("seed", [2, 7])
def test_a_single_node_group_survives_a_not_leader_without_a_hint(seed: int) -> None:
    """With one node there is no other node to try: the admin's NOT_LEADER retry picked
    from an empty list (IndexError) after a restart; it now retries the same node."""
    result = run_broker(seed, BrokerSimConfig(nodes=1, duration_s=20, faults=("crash",)))
    assert result.ok, f"{result.checker}: {result.message}"


def test_a_replaced_disk_does_not_elect_a_leader_without_committed_entries() -> None:
    """Seed 300010 with the `wipe` fault: node 2's disk was replaced; a lossy network had
    just cost the leader its quorum, so no leader caught node 2 up, and node 2 gave its
    vote to node 3, whose log lacked entries committed with node 2's old disk. Node 3
    then committed other entries at those indexes (log_matching). A node that started
    empty now votes only for a candidate with an empty log until a leader has caught it
    up (raft/node.py, `_caught_up`)."""
    cfg = BrokerSimConfig(faults=("drop", "delay", "wipe"))
    result = run_broker(300010, cfg)
    assert result.ok, f"{result.checker}: {result.message}"
    assert result.stats["disks_replaced"] >= 2


def test_a_replaced_disk_started_with_join_does_not_elect_another_empty_log() -> None:
    """Seed 400042 with `all,wipe`: node 1 restarted empty after a power cut and had a
    full disk since, so it stored nothing; node 3's disk was replaced. The two empty
    logs looked like a brand-new group and elected node 3, which overwrote the entries
    nodes 2 and 3 had committed (log_matching). The wipe fault now starts the node with
    `join` (Config.join_existing): no vote or campaign until a leader caught it up."""
    faults = parse_faults("all,wipe", BROKER_FAULTS_KNOWN)
    result = run_broker(400042, BrokerSimConfig(faults=faults))
    assert result.ok, f"{result.checker}: {result.message}"
    assert result.stats["disks_replaced"] >= 1
