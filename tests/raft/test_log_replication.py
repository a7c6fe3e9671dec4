"""Log replication: consistency check and conflict repair, fast backtracking, flow
control (probe / replicate, pipelining, windows), durability and the commit rule."""

from __future__ import annotations

import pytest

from raft.config import Config
from raft.local_cluster import LocalCluster, LocalNode, SplitMix64
from raft.log_store import MemoryLogStore
from raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    Envelope,
    HardState,
    VoteRequest,
    VoteResponse,
)
from raft.node import RaftNode, Role
from tests.raft.helpers import log_entries, log_terms, of_type, seed_log, take


def elect_node(cluster: LocalCluster, node_id: int, ticks_max: int = 200) -> None:
    """Tick only `node_id` until it leads (the others never time out)."""
    for _ in range(ticks_max):
        if cluster.leader() == node_id:
            cluster.run()
            return
        cluster.tick([node_id])
    raise AssertionError(f"{node_id} did not become leader")


# Figure 7 of the Raft paper: the leader's log and followers' logs (a)-(f).
LEADER_FIG7 = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FOLLOWERS_FIG7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FOLLOWERS_FIG7))
def test_figure_7_followers_converge_to_the_leaders_log(case: str) -> None:
    cluster = LocalCluster(3)
    seed_log(cluster, 1, LEADER_FIG7, term=7)
    seed_log(cluster, 2, FOLLOWERS_FIG7[case], term=7)
    seed_log(cluster, 3, LEADER_FIG7, term=7)
    elect_node(cluster, 1)
    leader_log = log_entries(cluster, 1)
    assert [e.term for e in leader_log] == [*LEADER_FIG7, 8]
    for i in (2, 3):
        assert log_entries(cluster, i) == leader_log
        assert cluster.node(i).commit_index == len(leader_log)


def count_rejections(cluster: LocalCluster, src: int) -> list[AppendResponse]:
    seen: list[AppendResponse] = []

    def observe(env: Envelope) -> bool:
        if env.src == src and isinstance(env.msg, AppendResponse) and not env.msg.success:
            seen.append(env.msg)
        return False

    cluster.drop_filter = observe
    return seen


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    leader_terms = [1] * 5 + [2] * 10 + [4] * 400
    follower_terms = [1] * 5 + [2] * 20 + [3] * 400
    cluster = LocalCluster(3)
    seed_log(cluster, 1, leader_terms, term=4)
    seed_log(cluster, 2, follower_terms, term=4)
    seed_log(cluster, 3, leader_terms, term=4)
    rejections = count_rejections(cluster, src=2)
    elect_node(cluster, 1)
    # One rejection per diverging follower term (3, then 2): not one per entry.
    assert [(r.conflict_term, r.conflict_index) for r in rejections] == [(3, 26), (2, 6)]
    assert log_entries(cluster, 2) == log_entries(cluster, 1)


def test_follower_that_is_too_short_says_where_its_log_ends() -> None:
    cluster = LocalCluster(3)
    seed_log(cluster, 1, [1] * 300, term=1)
    seed_log(cluster, 2, [1] * 3, term=1)
    seed_log(cluster, 3, [1] * 300, term=1)
    rejections = count_rejections(cluster, src=2)
    elect_node(cluster, 1)
    assert [(r.conflict_term, r.conflict_index) for r in rejections] == [(0, 4)]
    assert log_entries(cluster, 2) == log_entries(cluster, 1)


def follower(terms: list[int], term: int, commit: int = 0) -> tuple[RaftNode, MemoryLogStore]:
    log = MemoryLogStore()
    log.append([Entry(t, i, b"d%d" % i) for i, t in enumerate(terms, start=1)])
    log.sync()
    node = RaftNode(1, (1, 2, 3), log, HardState(term, None, commit), Config(), SplitMix64(1))
    return node, log


def replies(node: RaftNode) -> list[AppendResponse]:
    ready = node.ready()
    assert ready is not None
    node.advance(ready)
    return [e.msg for e in ready.persisted_messages + ready.messages]  # type: ignore[misc]


def test_a_stale_duplicate_append_never_truncates_matching_entries() -> None:
    node, log = follower([1] * 10, term=1)
    stale = AppendRequest(1, 3, 1, (Entry(1, 4, b"d4"), Entry(1, 5, b"d5")), 0)
    node.step(Envelope(2, 1, stale))
    assert log.last_index() == 10
    assert replies(node) == [AppendResponse(1, True, 5)]


def test_a_real_conflict_truncates_from_the_first_conflicting_entry() -> None:
    node, log = follower([1, 1, 2, 2, 2], term=3)
    node.step(Envelope(2, 1, AppendRequest(3, 1, 1, (Entry(1, 2, b"d2"), Entry(3, 3, b"n")), 0)))
    assert [log.term_at(i) for i in range(1, log.last_index() + 1)] == [1, 1, 3]
    [reply] = replies(node)
    assert reply == AppendResponse(3, True, 3)


def test_skip_truncate_plant_keeps_the_divergent_suffix() -> None:
    log = MemoryLogStore()
    log.append([Entry(t, i, b"") for i, t in enumerate([1, 1, 2, 2, 2], start=1)])
    node = RaftNode(
        1,
        (1, 2, 3),
        log,
        HardState(3),
        Config(plants=frozenset({"skip_truncate"})),
        SplitMix64(1),
    )
    node.step(Envelope(2, 1, AppendRequest(3, 1, 1, (Entry(1, 2, b""), Entry(3, 3, b"n")), 0)))
    assert [log.term_at(i) for i in range(1, 6)] == [1, 1, 2, 2, 2]
    assert replies(node) == [AppendResponse(3, True, 3)]


def test_follower_acks_only_after_persisting() -> None:
    node, _ = follower([1, 1], term=1)
    node.step(Envelope(2, 1, AppendRequest(1, 2, 1, (Entry(1, 3, b"x"),), 0)))
    ready = node.ready()
    assert ready is not None
    assert ready.sync_log
    assert not ready.messages
    assert [e.msg for e in ready.persisted_messages] == [AppendResponse(1, True, 3)]


def test_ack_before_fsync_plant_sends_the_ack_with_the_unpersisted_messages() -> None:
    log = MemoryLogStore()
    node = RaftNode(
        1,
        (1, 2, 3),
        log,
        HardState(1),
        Config(plants=frozenset({"ack_before_fsync"})),
        SplitMix64(1),
    )
    node.step(Envelope(2, 1, AppendRequest(1, 0, 0, (Entry(1, 1, b"x"),), 0)))
    ready = node.ready()
    assert ready is not None
    assert [e.msg for e in ready.messages] == [AppendResponse(1, True, 1)]
    assert not ready.persisted_messages


def test_rejection_carries_conflict_hints() -> None:
    node, _ = follower([1, 1, 2, 2, 2], term=3)
    node.step(Envelope(2, 1, AppendRequest(3, 4, 3, (), 0)))
    node.step(Envelope(2, 1, AppendRequest(3, 9, 3, (), 0)))
    assert replies(node) == [
        AppendResponse(3, False, 0, conflict_index=3, conflict_term=2, reject_index=4),
        AppendResponse(3, False, 0, conflict_index=6, conflict_term=0, reject_index=9),
    ]


def test_appends_from_an_older_term_are_refused_with_the_newer_term() -> None:
    node, log = follower([1, 1], term=3)
    node.step(Envelope(2, 1, AppendRequest(2, 2, 1, (Entry(2, 3, b"old"),), 0)))
    assert log.last_index() == 2
    assert replies(node) == [AppendResponse(3, False, 0)]


def test_accept_stale_term_plant_takes_them() -> None:
    log = MemoryLogStore()
    log.append([Entry(1, 1, b""), Entry(1, 2, b"")])
    node = RaftNode(
        1,
        (1, 2, 3),
        log,
        HardState(3),
        Config(plants=frozenset({"accept_stale_term"})),
        SplitMix64(1),
    )
    node.step(Envelope(2, 1, AppendRequest(2, 2, 1, (Entry(2, 3, b"old"),), 0)))
    assert log.last_index() == 3
    assert node.term == 3


def test_follower_commit_is_bounded_by_what_it_verified() -> None:
    node, _ = follower([1, 1, 1, 1, 1], term=1)
    # The leader committed 5, but this append only proves a match up to 2.
    node.step(Envelope(2, 1, AppendRequest(1, 2, 1, (), 5)))
    assert node.commit_index == 2


# ---------------------------------------------------------------- flow control


def fresh_leader(config: Config) -> tuple[LocalCluster, RaftNode]:
    """Node 1 wins an election; its first Ready is not processed yet."""
    cluster = LocalCluster(3, config)
    node = cluster.node(1)
    while node.role is not Role.CANDIDATE:
        node.tick()
    cluster.process(1)
    for env in take(cluster, of_type(VoteRequest)):
        cluster.deliver(env)
    for i in (2, 3):
        cluster.process(i)
    for env in take(cluster, of_type(VoteResponse)):
        cluster.deliver(env)
    assert node.role is Role.LEADER
    return cluster, node


def test_a_new_leader_probes_with_one_message_then_pipelines() -> None:
    config = Config(pre_vote=False, append_bytes_max=300, inflight_msgs_max=4)
    cluster, leader = fresh_leader(config)
    leader.propose_batch([b"x" * 100] * 40)
    cluster.process(1)
    appends = take(cluster, of_type(AppendRequest, dst=2))
    assert len(appends) == 1, "PROBE: one message until the follower's match is known"
    assert leader.status()["progress"][2]["state"] == "probe"  # type: ignore[index]
    cluster.deliver(appends[0])
    cluster.process(2)
    for env in take(cluster, of_type(AppendResponse, dst=1)):
        cluster.deliver(env)
    cluster.process(1)
    assert leader.status()["progress"][2]["state"] == "replicate"  # type: ignore[index]
    appends = take(cluster, of_type(AppendRequest, dst=2))
    assert len(appends) == 4, "REPLICATE: a full window in flight before any ack"
    assert all(
        sum(e.size_bytes() for e in env.msg.entries) <= 300  # type: ignore[union-attr]
        for env in appends
    )
    # Consecutive: each starts where the previous ended.
    prevs = [env.msg.prev_index for env in appends]  # type: ignore[union-attr]
    ends = [m.prev_index + len(m.entries) for m in (env.msg for env in appends)]  # type: ignore[union-attr]
    assert prevs[1:] == ends[:-1]
    # Acking the first one frees one slot.
    cluster.deliver(appends[0])
    cluster.process(2)
    for env in take(cluster, of_type(AppendResponse, dst=1)):
        cluster.deliver(env)
    cluster.process(1)
    assert len(take(cluster, of_type(AppendRequest, dst=2))) == 1


def test_in_flight_bytes_are_bounded() -> None:
    config = Config(
        pre_vote=False, append_bytes_max=1000, inflight_bytes_max=2500, inflight_msgs_max=64
    )
    cluster = LocalCluster(3, config)
    leader = cluster.node(cluster.elect())
    leader.propose_batch([b"y" * 476] * 40)  # 500 bytes each with the overhead
    cluster.process(leader.id)
    peer = next(i for i in cluster.ids if i != leader.id)
    appends = take(cluster, of_type(AppendRequest, dst=peer))
    assert [len(env.msg.entries) for env in appends] == [2, 2, 2]  # type: ignore[union-attr]


def test_a_batch_of_proposals_travels_in_as_few_messages_as_fit() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    leader.propose_batch([b"z" * 1000] * 500)
    for k in range(500):
        leader.propose(b"w%d" % k)
    cluster.process(leader.id)
    sizes = [len(env.msg.entries) for env in cluster.network]  # type: ignore[union-attr]
    assert sizes == [1000, 1000], "one message per follower carries everything"


def test_lost_appends_are_resent_and_everything_commits() -> None:
    config = Config(append_bytes_max=200, inflight_msgs_max=8)
    cluster = LocalCluster(3, config)
    leader = cluster.node(cluster.elect())
    rng = SplitMix64(7)
    cluster.drop_filter = lambda env: rng.randrange(0, 100) < 30
    for k in range(10):
        leader.propose_batch([b"e%d-%d" % (k, j) for j in range(10)])
        cluster.tick([leader.id])
    cluster.drop_filter = None
    cluster.tick(times=30)
    assert cluster.leader() == leader.id
    last = cluster.members[leader.id].log.last_index()
    for i in cluster.ids:
        assert cluster.members[i].sm.last_index == last
        assert cluster.members[i].sm.entries == cluster.members[leader.id].sm.entries


def test_heartbeats_carry_a_commit_no_higher_than_the_followers_match() -> None:
    cluster = LocalCluster(3)
    leader = cluster.node(cluster.elect())
    lagging = next(i for i in cluster.ids if i != leader.id)
    match_before = cluster.members[lagging].log.last_index()
    cluster.isolate(lagging)
    leader.propose_batch([b"a"] * 10)
    cluster.run()
    assert leader.commit_index == match_before + 10
    cluster.network.clear()
    leader.tick()
    cluster.process(leader.id)
    [hb] = [e.msg for e in take(cluster, of_type(AppendRequest, dst=lagging))]
    assert isinstance(hb, AppendRequest)
    assert hb.entries == () and hb.prev_index == match_before and hb.commit == match_before


def test_leader_counts_itself_only_up_to_its_durable_index() -> None:
    cluster = LocalCluster(3)
    leader_id = cluster.elect()
    leader = cluster.node(leader_id)
    cluster.isolate(next(i for i in cluster.ids if i != leader_id))
    index = leader.propose(b"x")
    ready = leader.ready()  # the driver has not synced the leader's log yet
    assert ready is not None and ready.sync_log
    cluster.network.extend(ready.messages)
    cluster.run()  # `a` acks; the leader's own copy is not durable
    assert leader.commit_index == index - 1
    cluster.members[leader_id].log.sync()
    leader.advance(ready)
    assert leader.commit_index == index


def test_ack_before_fsync_plant_counts_the_leaders_undurable_tail() -> None:
    cluster = LocalCluster(3, Config(plants=frozenset({"ack_before_fsync"})))
    leader_id = cluster.elect()
    leader = cluster.node(leader_id)
    index = leader.propose(b"x")
    ready = leader.ready()
    assert ready is not None
    cluster.network.extend(ready.messages)
    cluster.run()
    assert leader.commit_index == index


# ---------------------------------------------------------------- commit rule


def figure_8_s1_leads_term_4(plants: frozenset[str]) -> LocalCluster:
    """Figure 8 of the Raft paper. S1 led term 2 and wrote index 2 to S1 and S2 only;
    S5 led term 3 and wrote a different index 2 on itself. Now S1 leads term 4 and
    brings index 2 to a majority, but its own no-op (index 3) reaches nobody. Index 2
    must not count as committed: S5 can still win and overwrite it."""
    config = Config(pre_vote=False, check_quorum=False, append_bytes_max=1, plants=plants)
    cluster = LocalCluster(5, config)
    seed_log(cluster, 1, [1, 2], term=3, commit=1)
    seed_log(cluster, 2, [1, 2], term=3, commit=1)
    seed_log(cluster, 3, [1], term=3, commit=1)
    seed_log(cluster, 4, [1], term=3, commit=1)
    seed_log(cluster, 5, [1, 3], term=3, commit=1)
    cluster.blocked = {(1, 5), (5, 1)}
    # Only one entry fits in an append (append_bytes_max=1), and every append that
    # carries S1's no-op (index 3) is lost.
    noops_lost: set[int] = set()

    def lose_noop(env: Envelope) -> bool:
        msg = env.msg
        if env.src == 1 and isinstance(msg, AppendRequest) and msg.entries:
            noops_lost.add(env.dst)
            return msg.entries[0].index == 3
        return False

    cluster.drop_filter = lose_noop
    elect_node(cluster, 1)  # votes from S2, S3, S4; S5 is cut off (and would refuse)
    cluster.tick([1], times=2)  # heartbeat answers: replicate from each match
    assert cluster.node(1).term == 4
    assert noops_lost == {2, 3, 4}
    for i in (2, 3, 4):
        assert log_terms(cluster, i) == [1, 2]
    return cluster


def s5_takes_over(cluster: LocalCluster) -> None:
    """S1 crashes; S5 wins term 5 with S2, S3, S4 (its last term, 3, is newer than 2)."""
    cluster.crash(1)
    cluster.drop_filter = None
    cluster.heal()
    elect_node(cluster, 5)


def test_figure_8_an_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    cluster = figure_8_s1_leads_term_4(frozenset())
    assert cluster.node(1).commit_index == 1
    s5_takes_over(cluster)
    # Nothing committed is lost: S1 never applied the index 2 that S5 overwrites.
    assert cluster.members[1].sm.last_index == 1
    for i in (2, 3, 4, 5):
        assert log_terms(cluster, i) == [1, 3, 5]
        assert cluster.members[i].sm.entries[1].term == 3


def test_figure_8_commit_old_term_plant_commits_what_is_later_overwritten() -> None:
    cluster = figure_8_s1_leads_term_4(frozenset({"commit_old_term"}))
    assert cluster.node(1).commit_index == 2
    assert cluster.members[1].sm.entries[1].term == 2  # applied by S1
    s5_takes_over(cluster)
    cluster.tick(times=3)
    # State machine safety is broken: S1 applied (2, term 2), S5 applies (2, term 3).
    applied_at_2 = {
        i: cluster.members[i].sm.entries[1].term
        for i in cluster.ids
        if cluster.members[i].sm.last_index >= 2
    }
    assert applied_at_2[1] == 2 and applied_at_2[5] == 3


def test_a_new_leader_does_not_resend_the_log_its_followers_hold() -> None:
    """After a full restart every node holds 1000 entries and knows no commit. The new
    leader's first probes are lost, so heartbeat answers (match 0) arrive first: they
    must not make it replicate from index 1."""
    cluster = LocalCluster(3)
    for i in cluster.ids:
        seed_log(cluster, i, [1] * 1000, term=1)
    sent: list[int] = []
    probes_lost: set[int] = set()

    def lose_first_probe(env: Envelope) -> bool:
        if env.src == 1 and isinstance(env.msg, AppendRequest):
            if env.msg.entries and env.dst not in probes_lost:
                probes_lost.add(env.dst)
                return True
            sent.append(len(env.msg.entries))
        return False

    cluster.drop_filter = lose_first_probe
    elect_node(cluster, 1)
    cluster.tick([1], times=3)
    assert probes_lost == {2, 3}
    assert cluster.node(2).commit_index == cluster.node(3).commit_index == 1001
    assert sum(sent) == 2, "followers already hold the 1000 entries: only the no-op travels"


def test_lost_appends_to_a_follower_whose_match_was_compacted_are_recovered() -> None:
    """The follower acked entries but never learned they committed (commit < match);
    then the leader compacted past its match while the appends after it were lost."""
    config = Config(inflight_msgs_max=2, append_bytes_max=100)
    cluster = LocalCluster(3, config, compact_threshold=5)
    leader = cluster.node(cluster.elect())
    lagging = next(i for i in cluster.ids if i != leader.id)
    phase = {"drop": "empty"}

    def drop(env: Envelope) -> bool:
        msg = env.msg
        if env.dst != lagging or not isinstance(msg, AppendRequest):
            return False
        return phase["drop"] == "all" or (phase["drop"] == "empty" and not msg.entries)

    cluster.drop_filter = drop
    leader.propose_batch([b"a%d" % k for k in range(6)])
    cluster.run()
    match = cluster.members[lagging].log.last_index()
    assert cluster.node(lagging).commit_index < match
    phase["drop"] = "all"
    for k in range(6):
        leader.propose_batch([b"b%d-%d" % (k, j) for j in range(4)])
        cluster.run()
    assert cluster.members[leader.id].log.first_index() > match + 1
    phase["drop"] = "none"
    cluster.tick(times=10)
    assert cluster.members[lagging].sm.entries == cluster.members[leader.id].sm.entries


@pytest.mark.parametrize("eager", [True, False])
def test_followers_learn_a_commit_at_once_or_with_the_next_heartbeat(eager: bool) -> None:
    """eager_commit_notice off: a lone proposal commits on the leader with one round of
    appends and acks, and the followers learn it with the next heartbeat, not before."""
    cluster = LocalCluster(3, config=Config(eager_commit_notice=eager, heartbeat_ticks=5))
    elect_node(cluster, 1)
    cluster.tick([1], times=5)  # a heartbeat: everyone knows the no-op committed
    appends: list[AppendRequest] = []

    def count(env: Envelope) -> bool:
        if env.src == 1 and isinstance(env.msg, AppendRequest):
            appends.append(env.msg)
        return False

    cluster.drop_filter = count
    index = cluster.node(1).propose(b"x")
    cluster.run()
    assert cluster.node(1).commit_index == index
    followers = [cluster.node(2).commit_index, cluster.node(3).commit_index]
    if eager:
        assert followers == [index, index]
        assert len(appends) == 4, "the entry to each follower, then the commit to each"
    else:
        assert followers == [index - 1, index - 1]
        assert len(appends) == 2, "only the entry to each follower"
        cluster.tick([1], times=5)
        assert [cluster.node(2).commit_index, cluster.node(3).commit_index] == [index, index]


@pytest.mark.parametrize("quiet", [True, False])
def test_a_follower_that_lost_its_log_catches_up_under_the_same_leader(quiet: bool) -> None:
    """A node whose disk was replaced comes back empty. Its rejections say its log ends
    below the match the leader holds for it; the leader probes and starts over from
    where the log ends, without waiting for a new leader (a quiet leader learns it from
    a heartbeat's rejection, a busy one from an append's)."""
    cluster = LocalCluster(3, seed=4)
    leader = cluster.elect()
    for k in range(5):
        cluster.node(leader).propose_batch([b"a%d-%d" % (k, j) for j in range(4)])
        cluster.run()
    wiped = next(i for i in cluster.ids if i != leader)
    term = cluster.node(leader).term
    assert cluster.node(leader).match_index(wiped) == cluster.members[leader].log.last_index()
    cluster.crash(wiped)
    cluster.members[wiped] = LocalNode(wiped, record=True)
    cluster.restart(wiped)
    if not quiet:
        cluster.node(leader).propose(b"after")
        cluster.run()
    heartbeat = cluster.config.heartbeat_ticks
    for _ in range(3):
        cluster.tick([leader], times=heartbeat)
    assert cluster.leader() == leader and cluster.node(leader).term == term
    want = log_entries(cluster, leader)
    assert log_entries(cluster, wiped) == want
    assert cluster.node(leader).match_index(wiped) == want[-1].index


def test_a_stale_rejection_at_the_match_costs_a_probe_not_entries() -> None:
    """A duplicated old rejection that looks like a short log makes the leader probe at
    the match; the follower, which has its log, accepts the probe, and nothing is sent
    again."""
    cluster = LocalCluster(3, seed=5)
    leader = cluster.elect()
    cluster.node(leader).propose_batch([b"b%d" % j for j in range(6)])
    cluster.run()
    follower = next(i for i in cluster.ids if i != leader)
    node = cluster.node(leader)
    match = node.match_index(follower)
    assert match is not None and match > 2
    stale = AppendResponse(node.term, False, 0, conflict_index=2, reject_index=match)
    cluster.deliver(Envelope(follower, leader, stale))
    sent = []
    cluster.drop_filter = lambda env: sent.append(env) or False
    cluster.run()
    appends = [env.msg for env in sent if isinstance(env.msg, AppendRequest)]
    assert appends and all(not a.entries for a in appends), "a probe, no entries again"
    assert node.match_index(follower) == match
