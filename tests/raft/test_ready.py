"""The Ready / advance hand-off: what is reported, when, and within which bounds."""

from __future__ import annotations

import pytest

from raft.config import Config
from raft.errors import BacklogFullError
from raft.local_cluster import LocalCluster, SplitMix64
from raft.log_store import MemoryLogStore
from raft.messages import Entry, HardState
from raft.node import RaftNode


def test_hard_state_is_reported_only_when_it_changed() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    leader.propose(b"x")
    first = leader.ready()
    assert first is not None and first.hard_state is None  # term, vote, commit unchanged
    assert first.sync_log and first.messages
    cluster.members[leader.id].log.sync()
    leader.advance(first)
    cluster.network.extend(first.messages)
    cluster.run()
    assert cluster.members[leader.id].hard_state.commit == leader.commit_index


def test_committed_entries_are_handed_out_in_bounded_readies() -> None:
    config = Config(ready_committed_bytes_max=1000)
    cluster = LocalCluster(3, config)
    leader = cluster.node(cluster.elect())
    sm = cluster.members[leader.id].sm
    sizes: list[int] = []
    apply = sm.apply
    sm.apply = lambda entries: (sizes.append(len(entries)), apply(entries))[1]  # type: ignore[method-assign]
    leader.propose_batch([b"q" * 176] * 20)  # 200 bytes each with the overhead
    cluster.run()
    assert sum(sizes) == 20
    assert max(sizes) == 5


def test_one_oversized_committed_entry_still_gets_out() -> None:
    cluster = LocalCluster(3, Config(ready_committed_bytes_max=10))
    leader = cluster.node(cluster.elect())
    index = leader.propose(b"big" * 100)
    cluster.run()
    assert cluster.members[leader.id].sm.last_index == index


def test_applied_advances_with_advance() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    index = leader.propose(b"x")
    cluster.run()
    assert leader.commit_index == index and leader.applied_index == index


def test_proposals_beyond_the_uncommitted_backlog_are_refused() -> None:
    cluster = LocalCluster(3, Config(uncommitted_entries_max=10))
    leader = cluster.node(cluster.elect())
    for follower in cluster.ids:
        if follower != leader.id:
            cluster.isolate(follower)
    leader.propose_batch([b"x"] * 10)
    with pytest.raises(BacklogFullError):
        leader.propose(b"one too many")
    cluster.heal()
    cluster.tick(times=3)
    leader.propose(b"accepted")


def test_compaction_drops_applied_entries_only() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    leader.propose_batch([b"c"] * 5)
    cluster.run()
    leader.compact(4)
    log = cluster.members[leader.id].log
    assert log.first_index() == 5 and log.term_at(4) == leader.term
    with pytest.raises(AssertionError):
        leader.compact(leader.applied_index + 1)


def test_a_restarted_node_clamps_a_commit_that_ran_ahead_of_its_log() -> None:
    log = MemoryLogStore()
    log.append([Entry(1, 1, b""), Entry(1, 2, b"")])
    node = RaftNode(1, (1, 2, 3), log, HardState(1, None, 9), Config(), SplitMix64(0))
    assert node.commit_index == 2


def test_status_describes_the_leader_and_its_followers() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    status = leader.status()
    assert status["role"] == "leader" and status["leader"] == leader.id
    progress = status["progress"]
    assert isinstance(progress, dict) and set(progress) == set(cluster.ids) - {leader.id}
    assert all(p["state"] == "replicate" for p in progress.values())


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Config(plants=frozenset({"no_such_bug"}))
    with pytest.raises(ValueError):
        Config(inflight_msgs_max=0)
    with pytest.raises(ValueError):
        Config(election_ticks=3, heartbeat_ticks=3)
