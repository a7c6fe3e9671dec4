"""Leader election: pre-vote, check-quorum and the leader lease, and the vote rules."""

from __future__ import annotations

import pytest

from raft.config import Config
from raft.local_cluster import LocalCluster, LocalNode
from raft.messages import (
    AppendRequest,
    Envelope,
    HardState,
    VoteRequest,
    VoteResponse,
    make_entries,
)
from raft.node import RaftNode, Role
from tests.raft.helpers import of_type, seed_log, take


def follower_of(cluster: LocalCluster, leader: int) -> int:
    return next(i for i in cluster.ids if i != leader)


def test_pre_vote_keeps_a_partitioned_node_from_disrupting_a_healthy_cluster() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    term = cluster.node(leader).term
    lonely = follower_of(cluster, leader)
    cluster.isolate(lonely)
    cluster.tick(times=100)
    # It pre-campaigned many times but never raised its term.
    assert cluster.node(lonely).term == term
    assert cluster.node(lonely).role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    cluster.heal()
    cluster.tick(times=30)
    assert cluster.leader() == leader
    assert all(cluster.node(i).term == term for i in cluster.ids)
    assert all(cluster.node(i).leader_id == leader for i in cluster.ids)


def test_without_pre_vote_a_rejoining_node_does_disrupt() -> None:
    """The contrast that shows what pre-vote buys."""
    cluster = LocalCluster(3, Config(pre_vote=False, check_quorum=False))
    leader = cluster.elect()
    term = cluster.node(leader).term
    lonely = follower_of(cluster, leader)
    cluster.isolate(lonely)
    cluster.tick(times=100)
    assert cluster.node(lonely).term > term + 1
    cluster.heal()
    cluster.tick(times=30)
    assert all(cluster.node(i).term > term + 1 for i in cluster.ids)


def test_pre_candidate_that_wins_becomes_candidate_then_leader_with_one_term_bump() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    assert cluster.node(leader).term == 1


def test_leader_without_a_quorum_steps_down_after_an_election_timeout() -> None:
    config = Config(election_ticks=10)
    cluster = LocalCluster(3, config)
    leader = cluster.elect()
    cluster.isolate(leader)
    cluster.tick([leader], times=config.election_ticks * 2)
    assert cluster.node(leader).role is Role.FOLLOWER
    assert cluster.node(leader).leader_id is None
    # Meanwhile the majority elects someone else.
    cluster.tick([i for i in cluster.ids if i != leader], times=config.election_ticks * 3)
    new_leader = cluster.leader()
    assert new_leader is not None and new_leader != leader


def test_leader_with_a_quorum_stays_leader() -> None:
    config = Config(election_ticks=10)
    cluster = LocalCluster(5, config)
    leader = cluster.elect()
    others = [i for i in cluster.ids if i != leader]
    cluster.isolate(others[0])
    cluster.isolate(others[1])
    cluster.tick([leader, *others[2:]], times=config.election_ticks * 5)
    assert cluster.node(leader).role is Role.LEADER


def test_follower_in_lease_ignores_a_higher_term_vote_request() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    follower = follower_of(cluster, leader)
    node = cluster.node(follower)
    term = node.term
    last = cluster.members[follower].log.last_index()
    node.step(Envelope(leader, follower, VoteRequest(term + 5, last + 10, term + 5)))
    cluster.process(follower)
    assert node.term == term
    assert not cluster.network
    # Unless the campaign comes from a leadership transfer.
    node.step(Envelope(leader, follower, VoteRequest(term + 5, last + 10, term, transfer=True)))
    cluster.process(follower)
    assert node.term == term + 5
    [reply] = take(cluster, of_type(VoteResponse))
    assert reply.msg == VoteResponse(term + 5, True)


def test_follower_out_of_lease_grants_a_higher_term_vote() -> None:
    config = Config(election_ticks=10)
    cluster = LocalCluster(3, config, rng_factory=lambda i: FixedTimeout(10 if i == 1 else 19))
    leader = cluster.elect()
    assert leader == 1
    follower = follower_of(cluster, leader)
    cluster.isolate(follower)
    cluster.tick([follower], times=config.election_ticks)  # lease expired, timeout not yet
    node = cluster.node(follower)
    last = cluster.members[follower].log.last_index()
    term = node.term
    node.step(Envelope(leader, follower, VoteRequest(term + 1, last, term)))
    ready = cluster.process(follower)
    assert ready is not None
    assert ready.hard_state == HardState(term + 1, leader, node.commit_index)
    assert [e.msg for e in ready.persisted_messages] == [VoteResponse(term + 1, True)]
    assert not ready.messages


class FixedTimeout:
    """A RandomSource whose randomized election timeout is always `ticks`."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        assert stop is not None and start <= self.ticks < stop
        return self.ticks


def lone_node(config: Config, hard_state: HardState, node_id: int = 1) -> RaftNode:
    from raft.log_store import MemoryLogStore

    return RaftNode(node_id, (1, 2, 3), MemoryLogStore(), hard_state, config, FixedTimeout(10))


def answers(node: RaftNode, *requests: Envelope) -> list[object]:
    """Step `requests` into `node`, then what it sends once its state is persisted."""
    for env in requests:
        node.step(env)
    ready = node.ready()
    assert ready is not None
    node.advance(ready)
    return [e.msg for e in ready.persisted_messages]


def test_a_node_votes_at_most_once_per_term() -> None:
    node = lone_node(Config(), HardState(term=3))
    node.step(Envelope(2, 1, VoteRequest(4, 0, 0)))
    node.step(Envelope(3, 1, VoteRequest(4, 0, 0)))
    node.step(Envelope(2, 1, VoteRequest(4, 0, 0)))  # a retry by the one it voted for
    ready = node.ready()
    assert ready is not None
    assert ready.hard_state == HardState(4, 2, 0)
    assert [(e.dst, e.msg.granted) for e in ready.persisted_messages] == [  # type: ignore[union-attr]
        (2, True),
        (3, False),
        (2, True),
    ]
    assert not ready.messages, "votes are sent only after the vote is persisted"


def test_double_vote_plant_grants_a_second_vote() -> None:
    node = lone_node(Config(plants=frozenset({"double_vote"})), HardState(term=3))
    node.step(Envelope(2, 1, VoteRequest(4, 0, 0)))
    node.step(Envelope(3, 1, VoteRequest(4, 0, 0)))
    ready = node.ready()
    assert ready is not None
    assert [e.msg.granted for e in ready.persisted_messages] == [True, True]  # type: ignore[union-attr]


def test_a_restarted_node_remembers_its_vote() -> None:
    node = lone_node(Config(), HardState(term=4, vote=2))
    node.step(Envelope(3, 1, VoteRequest(4, 0, 0)))
    ready = node.ready()
    assert ready is not None
    assert [e.msg for e in ready.persisted_messages] == [VoteResponse(4, False)]


def test_forget_vote_plant_forgets_it() -> None:
    node = lone_node(Config(plants=frozenset({"forget_vote"})), HardState(term=4, vote=2))
    node.step(Envelope(3, 1, VoteRequest(4, 0, 0)))
    ready = node.ready()
    assert ready is not None
    assert [e.msg for e in ready.persisted_messages] == [VoteResponse(4, True)]


def test_vote_is_refused_to_a_candidate_with_a_less_up_to_date_log() -> None:
    cluster = LocalCluster(3, Config(pre_vote=False))
    seed_log(cluster, 1, [1, 1, 2], term=2)
    seed_log(cluster, 2, [1, 1, 1, 1], term=2)  # longer, but older last term
    seed_log(cluster, 3, [1, 1], term=2)
    # Node 2 campaigns first: node 1 refuses (its last term is newer), node 3 grants.
    node2 = cluster.node(2)
    for _ in range(40):
        node2.tick()
        if node2.role is Role.CANDIDATE:
            break
    cluster.process(2)
    requests = take(cluster, of_type(VoteRequest, src=2))
    for env in requests:
        cluster.deliver(env)
    cluster.process(1)
    cluster.process(3)
    answers = {e.src: e.msg.granted for e in take(cluster, of_type(VoteResponse, dst=2))}  # type: ignore[union-attr]
    assert answers == {1: False, 3: True}


def test_a_node_missing_entries_the_others_hold_never_wins() -> None:
    for seed in range(10):
        cluster = LocalCluster(3, seed=seed)
        seed_log(cluster, 1, [1, 1, 2])
        seed_log(cluster, 2, [1, 1])
        seed_log(cluster, 3, [1])
        leader = cluster.elect()
        assert leader in (1, 2)
        cluster.run()
        assert cluster.members[3].log.last_index() >= 3


def test_candidate_steps_down_on_an_append_from_the_leader_of_its_term() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    follower = follower_of(cluster, leader)
    cluster.isolate(follower)
    cluster.tick([follower], times=40)
    assert cluster.node(follower).role is Role.PRE_CANDIDATE
    cluster.heal()
    cluster.tick(times=2)
    assert cluster.node(follower).role is Role.FOLLOWER
    assert cluster.node(follower).leader_id == leader


def test_stale_vote_responses_are_ignored() -> None:
    node = lone_node(Config(pre_vote=False), HardState(term=5))
    for _ in range(30):
        node.tick()
        if node.role is Role.CANDIDATE:
            break
    assert node.term == 6
    node.step(Envelope(2, 1, VoteResponse(5, True)))
    node.step(Envelope(3, 1, VoteResponse(5, True)))
    assert node.role is Role.CANDIDATE
    node.step(Envelope(2, 1, VoteResponse(6, True)))
    assert node.role is Role.LEADER


def test_a_higher_term_response_makes_a_leader_step_down() -> None:
    cluster = LocalCluster(3)
    leader = cluster.elect()
    node = cluster.node(leader)
    from raft.messages import AppendResponse

    node.step(
        Envelope(follower_of(cluster, leader), leader, AppendResponse(node.term + 3, False, 0))
    )
    assert node.role is Role.FOLLOWER
    assert node.term == 4
    assert node.vote is None


def test_a_node_that_starts_with_nothing_durable_holds_its_vote() -> None:
    """Config.fresh_vote_hold_ticks: a replaced disk forgot the node's vote, so for a
    while it neither votes nor campaigns; pre-votes (which change nothing) it answers."""
    node = lone_node(Config(fresh_vote_hold_ticks=20), HardState())
    assert answers(
        node,
        Envelope(2, 1, VoteRequest(1, 0, 0)),
        Envelope(3, 1, VoteRequest(2, 0, 0, pre_vote=True)),
    ) == [VoteResponse(1, False), VoteResponse(2, True, pre_vote=True)]
    for _ in range(19 + 10):  # the hold, then a whole election timeout: no campaign
        node.tick()
    assert node.role is Role.FOLLOWER and node.status()["vote_hold"] == 0
    node.tick()  # the election timeout (10 ticks) after the hold ended
    assert node.role is Role.PRE_CANDIDATE
    node.step(Envelope(3, 1, VoteRequest(5, 0, 0)))  # steps down; votes again
    ready = node.ready()
    assert ready is not None
    assert [e.msg for e in ready.persisted_messages][-1] == VoteResponse(5, True)


def test_a_replaced_disk_cannot_vote_twice_in_the_term_it_voted_in() -> None:
    """Node 3 voted for node 1 in term 5, then lost its disk and came back at once. Node
    2, a candidate of the same term, asks it: without the hold it would grant a second
    vote in term 5, and nodes 1 and 2 could both win it."""
    before = lone_node(Config(), HardState(term=5, vote=1), node_id=3)
    before.step(Envelope(2, 3, VoteRequest(5, 0, 0)))
    ready = before.ready()
    assert ready is not None and ready.persisted_messages[-1].msg == VoteResponse(5, False)

    unprotected = lone_node(Config(), HardState(), node_id=3)
    unprotected.step(Envelope(2, 3, VoteRequest(5, 0, 0)))
    ready = unprotected.ready()
    assert ready is not None and ready.persisted_messages[-1].msg == VoteResponse(5, True)

    replaced = lone_node(Config(fresh_vote_hold_ticks=20), HardState(), node_id=3)
    replaced.step(Envelope(2, 3, VoteRequest(5, 0, 0)))
    ready = replaced.ready()
    assert ready is not None and ready.persisted_messages[-1].msg == VoteResponse(5, False)


def test_a_node_with_a_durable_term_is_not_held() -> None:
    node = lone_node(Config(fresh_vote_hold_ticks=20), HardState(term=3))
    assert answers(node, Envelope(2, 1, VoteRequest(4, 0, 0))) == [VoteResponse(4, True)]


@pytest.mark.parametrize("hold", [0, 20])
def test_a_voter_whose_disk_is_wiped_elects_two_leaders_in_one_term_unless_it_holds(
    hold: int,
) -> None:
    """Nodes 1 and 2 campaign in term 1; node 3 votes for node 1, which wins. Node 3's
    disk is then replaced and node 2's request reaches it. Without the hold node 3
    grants it, and node 2 becomes a second leader of term 1."""
    cluster = LocalCluster(3, Config(pre_vote=False, fresh_vote_hold_ticks=hold))
    for _ in range(hold):  # every node starts fresh: let the first holds pass
        for i in cluster.ids:
            cluster.node(i).tick()
    for i in (1, 2):
        while cluster.node(i).role is not Role.CANDIDATE:
            cluster.node(i).tick()
        cluster.process(i)
    assert cluster.node(1).term == cluster.node(2).term == 1
    to_3 = {env.src: env for env in take(cluster, of_type(VoteRequest, dst=3))}
    take(cluster, of_type(VoteRequest))  # 1 and 2 refuse each other: they voted
    cluster.deliver(to_3[1])
    cluster.process(3)
    for env in take(cluster, of_type(VoteResponse, src=3, dst=1)):
        cluster.deliver(env)
    cluster.process(1)
    assert cluster.node(1).role is Role.LEADER and cluster.node(1).term == 1
    cluster.network.clear()  # node 1's appends are late: node 2 still campaigns

    cluster.members[3].raft = None  # the disk is replaced: log, term and vote are gone
    cluster.members[3] = LocalNode(3, record=True)
    cluster.restart(3)
    cluster.deliver(to_3[2])
    cluster.process(3)
    answer = take(cluster, of_type(VoteResponse, src=3, dst=2))
    for env in answer:
        cluster.deliver(env)
    cluster.process(2)
    two_leaders = cluster.node(2).role is Role.LEADER and cluster.node(2).term == 1
    assert two_leaders == (hold == 0)


@pytest.mark.parametrize("hold", [0, 20])
def test_a_wiped_voter_that_heard_a_commit_index_votes_only_once_it_holds_that_much(
    hold: int,
) -> None:
    """The leader commits entries with one follower alone (the other is cut off). That
    follower's disk is replaced; it hears one heartbeat, and the leader dies. The other
    follower, which lacks those committed entries, asks it for its vote: granting it
    would elect a leader without acknowledged entries. A node that started empty and
    heard a commit index sits elections out until its log reaches it."""
    cluster = LocalCluster(3, Config(fresh_vote_hold_ticks=hold))
    cluster.tick(times=hold)
    leader = cluster.elect()
    wiped, behind = (i for i in cluster.ids if i != leader)
    cluster.blocked |= {(leader, behind), (behind, leader)}
    for i in range(5):
        cluster.node(leader).propose(b"acked %d" % i)
    cluster.run()
    committed = cluster.node(leader).commit_index
    assert committed > cluster.members[behind].log.last_index(), "it lacks committed entries"

    cluster.members[wiped].raft = None  # its disk is replaced
    cluster.members[wiped] = LocalNode(wiped, record=True)
    cluster.restart(wiped)
    cluster.tick([wiped], times=hold)  # its hold passes
    cluster.node(leader).tick()  # a heartbeat tells it the commit index ...
    cluster.process(leader)
    for env in take(cluster, of_type(AppendRequest, src=leader, dst=wiped)):
        cluster.deliver(env)
    cluster.crash(leader)  # ... and the leader dies before it has caught up
    cluster.network.clear()
    cluster.blocked.clear()
    cluster.tick([behind, wiped], times=200)
    new_leader = cluster.leader()
    if hold:
        assert new_leader is None, "the wiped node sits out until it holds what was committed"
        assert cluster.node(wiped).status()["catch_up_to"] == committed
    else:
        assert new_leader == behind and cluster.members[behind].log.last_index() < committed


def test_a_node_that_started_empty_votes_only_for_empty_logs_until_a_leader_caught_it_up() -> None:
    """Past its hold, a node that started empty and has not been caught up by a leader
    grants a vote only to a candidate whose log is empty too (a brand-new group): a
    candidate with entries means the group ran before, and this node's disk may have
    held entries that candidate lacks."""
    node = lone_node(Config(fresh_vote_hold_ticks=2), HardState())
    node.tick()
    node.tick()  # the hold is over
    assert answers(
        node,
        Envelope(2, 1, VoteRequest(3, 7, 2)),  # a group that ran before
        Envelope(3, 1, VoteRequest(4, 0, 0)),  # a brand-new group
    ) == [VoteResponse(3, False), VoteResponse(4, True)]


def test_every_node_of_a_new_group_counts_as_caught_up_once_it_has_a_leader() -> None:
    """The leader by its election (a majority had its log), the followers by its
    appends; before, every node of a new group started empty."""
    cluster = LocalCluster(3, Config(fresh_vote_hold_ticks=2))
    assert not any(cluster.node(i).status()["synced"] for i in cluster.ids)
    cluster.tick(times=2)
    leader = cluster.elect()
    cluster.node(leader).propose(b"x")
    cluster.tick(times=3)
    assert all(cluster.node(i).status()["synced"] for i in cluster.ids)


def test_a_joining_node_votes_and_campaigns_only_once_a_leader_caught_it_up() -> None:
    """Config.join_existing: a replaced disk started as such refuses every real vote,
    even an empty-log candidate's, and never campaigns, until a leader has brought its
    log up to that leader's commit index; then it is an ordinary voter."""
    joining = Config(fresh_vote_hold_ticks=2, join_existing=True)
    node = lone_node(joining, HardState())
    for _ in range(2 + 50):  # the hold, then five election timeouts: no campaign
        node.tick()
    assert node.role is Role.FOLLOWER and node.status()["joining"]
    assert answers(
        node,
        Envelope(2, 1, VoteRequest(1, 0, 0)),  # an empty log: a new group?
        Envelope(3, 1, VoteRequest(2, 0, 0, pre_vote=True)),
    ) == [VoteResponse(1, False), VoteResponse(2, True, pre_vote=True)]

    # Leader 3 of term 3 has committed index 2; its appends bring this node there.
    node.step(Envelope(3, 1, AppendRequest(3, 0, 0, (), 2)))
    node.step(Envelope(3, 1, AppendRequest(3, 0, 0, tuple(make_entries(3, 1, [b"a", b"b"])), 2)))
    while (ready := node.ready()) is not None:
        node.advance(ready)
    status = node.status()
    assert status["synced"] and not status["joining"]
    for _ in range(30):  # the leader fell silent: now it campaigns like any node
        node.tick()
    assert node.role is not Role.FOLLOWER


def test_join_has_no_effect_on_a_node_with_a_durable_term() -> None:
    node = lone_node(Config(fresh_vote_hold_ticks=2, join_existing=True), HardState(term=3))
    assert not node.status()["joining"]
    assert answers(node, Envelope(2, 1, VoteRequest(4, 0, 0))) == [VoteResponse(4, True)]


@pytest.mark.parametrize("join", [False, True])
def test_a_replaced_disk_and_a_node_that_never_stored_anything_elect_no_one_if_it_joins(
    join: bool,
) -> None:
    """(Sim seed 400042 of `--faults all,wipe`.) Node 1 never stored anything; nodes 2
    and 3 committed entries. The follower of the two loses its disk while the leader
    is cut off. Two empty logs look like a brand-new group: without `join_existing`
    they elect each other, and a leader without the committed entries would overwrite
    them. Started as joining, the replaced disk votes for no one until caught up."""
    cluster = LocalCluster(3, Config(fresh_vote_hold_ticks=2))
    cluster.isolate(1)
    cluster.tick(times=2)
    leader = cluster.elect()
    assert leader != 1
    for i in range(5):
        cluster.node(leader).propose(b"acked %d" % i)
    cluster.run()
    committed = cluster.node(leader).commit_index
    assert committed >= 5
    wiped = next(i for i in (2, 3) if i != leader)

    for blank in (1, wiped):  # node 1 never had anything; the other disk is replaced
        cluster.members[blank].raft = None
        cluster.members[blank] = LocalNode(blank, record=True)
    cluster.restart(1)
    cluster.restart(wiped, Config(fresh_vote_hold_ticks=2, join_existing=join))
    cluster.blocked.clear()
    cluster.isolate(leader)
    cluster.tick([1, wiped], times=300)
    elected = [i for i in (1, wiped) if cluster.node(i).role is Role.LEADER]
    if join:
        assert elected == [], "the group waits for the node with the entries"
        assert cluster.node(wiped).status()["joining"]
    else:
        assert elected and cluster.members[elected[0]].log.last_index() < committed
