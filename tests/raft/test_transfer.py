"""Leadership transfer: catch the target up, TimeoutNow, campaign past the lease."""

from __future__ import annotations

import pytest

from raft.config import Config
from raft.errors import NotLeaderError, TransferInProgressError
from raft.local_cluster import LocalCluster
from raft.messages import TimeoutNow, VoteRequest
from raft.node import Role
from tests.raft.helpers import log_entries, of_type, take


def test_transfer_to_a_caught_up_follower_makes_it_leader_at_once() -> None:
    cluster = LocalCluster(3)
    old = cluster.elect()
    term = cluster.node(old).term
    target = next(i for i in cluster.ids if i != old)
    cluster.node(old).transfer_leadership(target)
    cluster.run()  # no ticks: the target campaigns on TimeoutNow, voters ignore their lease
    assert cluster.leader() == target
    assert cluster.node(target).term == term + 1
    assert cluster.node(old).role is Role.FOLLOWER
    assert cluster.node(old).leader_id == target


def test_the_target_campaigns_without_pre_vote_and_flags_the_transfer() -> None:
    cluster = LocalCluster(3)
    old = cluster.elect()
    target = next(i for i in cluster.ids if i != old)
    cluster.node(old).transfer_leadership(target)
    cluster.process(old)
    [timeout_now] = take(cluster, of_type(TimeoutNow))
    cluster.deliver(timeout_now)
    cluster.process(target)
    requests = [e.msg for e in take(cluster, of_type(VoteRequest, src=target))]
    assert len(requests) == 2
    assert all(r.transfer and not r.pre_vote for r in requests)  # type: ignore[union-attr]


def test_a_lagging_target_is_caught_up_before_timeout_now() -> None:
    cluster = LocalCluster(3)
    old = cluster.elect()
    target = next(i for i in cluster.ids if i != old)
    cluster.isolate(target)
    cluster.node(old).propose_batch([b"m%d" % k for k in range(50)])
    cluster.run()
    cluster.heal()
    cluster.node(old).transfer_leadership(target)
    with pytest.raises(TransferInProgressError) as caught:
        cluster.node(old).propose(b"refused")
    assert isinstance(caught.value, NotLeaderError) and caught.value.leader_id is None
    cluster.tick([old], times=3)  # heartbeats find the gap; appends catch the target up
    assert cluster.leader() == target
    assert log_entries(cluster, target)[:51] == log_entries(cluster, old)[:51]
    assert cluster.members[target].sm.last_index == 52  # the 51 entries and its no-op


def test_a_transfer_that_does_not_complete_is_aborted_after_an_election_timeout() -> None:
    config = Config(election_ticks=10)
    cluster = LocalCluster(3, config)
    old = cluster.elect()
    target = next(i for i in cluster.ids if i != old)
    cluster.crash(target)
    leader = cluster.node(old)
    leader.transfer_leadership(target)
    with pytest.raises(TransferInProgressError):
        leader.propose(b"x")
    cluster.tick([old], times=config.election_ticks)
    assert leader.role is Role.LEADER
    index = leader.propose(b"accepted again")
    cluster.run()
    assert leader.commit_index == index


def test_only_the_leader_transfers() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    follower = next(i for i in cluster.ids if i != leader)
    with pytest.raises(NotLeaderError):
        cluster.node(follower).transfer_leadership(leader)
    with pytest.raises(ValueError):
        cluster.node(leader).transfer_leadership(42)
