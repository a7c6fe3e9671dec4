"""Election and replication on a healthy cluster: the smoke tests of the core."""

from __future__ import annotations

import pytest

from raft.config import Config
from raft.errors import NotLeaderError
from raft.local_cluster import LocalCluster
from raft.messages import EntryKind
from raft.node import Role


@pytest.mark.parametrize("size", [3, 5])
def test_a_cluster_elects_exactly_one_leader(size: int) -> None:
    cluster = LocalCluster(size)
    leader = cluster.elect()
    roles = [cluster.node(i).role for i in cluster.ids]
    assert roles.count(Role.LEADER) == 1
    term = cluster.node(leader).term
    assert all(cluster.node(i).leader_id == leader for i in cluster.ids)
    assert all(cluster.node(i).term == term for i in cluster.ids)


def test_new_leader_commits_a_noop_of_its_term() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    for i in cluster.ids:
        applied = cluster.members[i].sm.entries
        assert [e.kind for e in applied] == [EntryKind.NOOP]
        assert applied[0].term == cluster.node(leader).term


def test_proposals_are_committed_and_applied_in_order_everywhere() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    indexes = [leader.propose(b"p%d" % k) for k in range(20)]
    indexes += leader.propose_batch([b"b%d" % k for k in range(30)])
    assert indexes == list(range(2, 52))
    cluster.run()
    expected = [b"p%d" % k for k in range(20)] + [b"b%d" % k for k in range(30)]
    for i in cluster.ids:
        assert cluster.node(i).commit_index == 51
        assert [e.data for e in cluster.members[i].sm.entries[1:]] == expected


def test_followers_refuse_proposals_and_name_the_leader() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    follower = next(i for i in cluster.ids if i != leader)
    with pytest.raises(NotLeaderError) as caught:
        cluster.node(follower).propose(b"x")
    assert caught.value.leader_id == leader


def test_a_healthy_leader_keeps_its_term_for_a_long_time() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    term = cluster.node(leader).term
    cluster.tick(times=200)
    assert cluster.leader() == leader
    assert cluster.node(leader).term == term


def test_ready_is_none_when_quiet() -> None:
    cluster = LocalCluster(3, Config())
    cluster.elect()
    for i in cluster.ids:
        assert cluster.node(i).ready() is None


def test_drive_load_commits_everything_on_every_node() -> None:
    cluster = LocalCluster(3, Config(append_bytes_max=4096), record=False)
    messages = cluster.drive_load(5000, batch=100, data=b"x" * 100, backlog_max=1000)
    assert messages > 0
    assert all(cluster.members[i].sm.applied_count == 5001 for i in cluster.ids)
