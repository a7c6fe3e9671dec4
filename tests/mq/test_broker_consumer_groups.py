"""Consumer groups in the broker core (issue #6): per-node membership with notifications,
offsets replicated through the log, admin resets, and long polls. Three cores over the
in-memory network of broker_cluster; time moves only by ticks."""

from __future__ import annotations

from typing import Any

import pytest

from mq.broker.core import Notify, Reply
from mq.broker.state import BrokerState
from mq.protocol import ErrorCode, Frame, RequestCode, request
from tests.mq.broker_cluster import TICK_MS, CoreCluster, send_request

EXPIRE_MS = 500


@pytest.fixture
def cluster() -> CoreCluster:
    return CoreCluster(consumer_expire_ms=EXPIRE_MS)


def heartbeat(
    cluster: CoreCluster, node: int, client_id: str, connection: int | None, group: str = "g"
) -> Frame:
    fields = {
        "client_id": client_id,
        "group": group,
        "model": "clustering",
        "topics": ["orders"],
        "consume_from": "last",
    }
    return cluster.request(node, request(RequestCode.HEARTBEAT, fields), connection=connection)


def notifications(
    cluster: CoreCluster, node: int | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(connection, fields) of every NOTIFY the nodes emitted since the last call."""
    out = [
        (e.connection, dict(e.frame.fields))
        for src, e in cluster.events
        if isinstance(e, Notify) and (node is None or src == node)
    ]
    cluster.events = [(s, e) for s, e in cluster.events if not isinstance(e, Notify)]
    return out


def members(cluster: CoreCluster, node: int, group: str = "g") -> list[str]:
    response = cluster.request(node, request(RequestCode.GET_CONSUMER_LIST, {"group": group}))
    assert response.ok, response.remark
    return list(response.fields["client_ids"])


def commit(cluster: CoreCluster, node: int, entries: list[list[Any]], group: str = "g") -> Frame:
    return cluster.request(
        node, request(RequestCode.UPDATE_CONSUMER_OFFSET, {"group": group, "offsets": entries})
    )


def query(cluster: CoreCluster, node: int, topic: str = "orders", **extra: Any) -> Frame:
    response = cluster.request(
        node,
        request(RequestCode.QUERY_CONSUMER_OFFSET, {"group": "g", "topic": topic, **extra}),
    )
    assert response.ok, response.remark
    return response


def reset(cluster: CoreCluster, node: int, to: str, **extra: Any) -> Frame:
    return cluster.request(
        node,
        request(
            RequestCode.RESET_CONSUMER_OFFSET, {"group": "g", "topic": "orders", "to": to, **extra}
        ),
    )


# ---------------------------------------------------------------------- membership


def test_a_new_member_is_announced_to_every_member_of_its_group_only(
    cluster: CoreCluster,
) -> None:
    node = cluster.elect()
    assert heartbeat(cluster, node, "a", connection=1).ok
    assert notifications(cluster) == [(1, {"group": "g"})]
    heartbeat(cluster, node, "x", connection=9, group="other")
    notifications(cluster)
    heartbeat(cluster, node, "b", connection=2)
    assert notifications(cluster) == [(1, {"group": "g"}), (2, {"group": "g"})]
    heartbeat(cluster, node, "a", connection=1)
    assert notifications(cluster) == [], "a refresh changes nothing"
    assert members(cluster, node) == ["a", "b"]
    for other in cluster.followers():
        assert members(cluster, other) == [], "membership is per node, not replicated"


def test_members_that_stop_heartbeating_expire_and_the_rest_are_told(
    cluster: CoreCluster,
) -> None:
    node = cluster.elect()
    heartbeat(cluster, node, "a", 1)
    heartbeat(cluster, node, "b", 2)
    heartbeat(cluster, node, "x", 9, group="other")
    notifications(cluster)
    for _ in range(5):
        cluster.tick(EXPIRE_MS // 4 // TICK_MS)  # a quarter of the expiry time
        heartbeat(cluster, node, "b", 2)
        heartbeat(cluster, node, "x", 9, group="other")
    assert notifications(cluster) == [(2, {"group": "g"})], "a expired; b alone is told"
    assert members(cluster, node) == ["b"]
    assert members(cluster, node, "other") == ["x"]


def test_a_closed_connection_takes_its_members_with_it(cluster: CoreCluster) -> None:
    node = cluster.elect()
    heartbeat(cluster, node, "a", 1)
    heartbeat(cluster, node, "a", 1, group="g2")
    heartbeat(cluster, node, "b", 2)
    heartbeat(cluster, node, "c", 3, group="g2")
    notifications(cluster)
    cluster.cores[node].connection_closed(1, cluster.now_ms)
    cluster.run()
    assert sorted(notifications(cluster)) == [(2, {"group": "g"}), (3, {"group": "g2"})]
    assert members(cluster, node) == ["b"] and members(cluster, node, "g2") == ["c"]
    cluster.cores[node].connection_closed(1, cluster.now_ms)
    cluster.run()
    assert notifications(cluster) == []


def test_unregister_client_leaves_and_the_rest_are_told(cluster: CoreCluster) -> None:
    node = cluster.elect()
    heartbeat(cluster, node, "a", 1)
    heartbeat(cluster, node, "b", 2)
    notifications(cluster)
    fields = {"group": "g", "client_id": "a"}
    assert cluster.request(node, request(RequestCode.UNREGISTER_CLIENT, fields)).ok
    assert notifications(cluster) == [(2, {"group": "g"})]
    assert cluster.request(node, request(RequestCode.UNREGISTER_CLIENT, fields)).ok
    assert notifications(cluster) == [], "unknown members are ignored"
    assert members(cluster, node) == ["b"]


@pytest.mark.parametrize(
    ("fields", "remark"),
    [
        ({"group": "g"}, "client_id"),
        ({"client_id": "a", "group": ""}, "group"),
        ({"client_id": "a", "group": "g", "model": "push"}, "model"),
        ({"client_id": "a", "group": "g", "topics": "orders"}, "topics"),
        ({"client_id": "a", "group": "g", "topics": [1]}, "topics"),
        ({"client_id": "a", "group": "g", "topics": ["t"] * 1025}, "topics"),
    ],
)
def test_a_bad_heartbeat_is_refused_with_a_reason(
    cluster: CoreCluster, fields: dict[str, Any], remark: str
) -> None:
    node = cluster.elect()
    response = cluster.request(node, request(RequestCode.HEARTBEAT, fields), connection=1)
    assert response.error == ErrorCode.INVALID_REQUEST
    assert remark in response.remark
    assert members(cluster, node) == []


# ---------------------------------------------------------------------- offsets


def test_offsets_commit_on_the_leader_and_every_replica_answers_the_same(
    cluster: CoreCluster,
) -> None:
    leader = cluster.elect()
    response = commit(cluster, leader, [["orders", 0, 5, 0], ["orders", 3, 7, 0], ["b", 0, 1, 0]])
    assert response.ok, response.remark
    assert response.fields == {"stale": []}
    cluster.settle()
    for node in cluster.ids:
        assert query(cluster, node).fields == {"offsets": [[0, 5], [3, 7]], "generation": 0}
        assert query(cluster, node, queue_id=3).fields["offsets"] == [[3, 7]]
        assert query(cluster, node, queue_id=1).fields["offsets"] == []
        assert query(cluster, node, "b").fields["offsets"] == [[0, 1]]


def test_followers_refuse_offset_writes_with_the_leader_address(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    follower = cluster.followers()[0]
    expected = {"leader": f"127.0.0.1:{20_000 + leader}", "group": "g1"}
    response = commit(cluster, follower, [["orders", 0, 5, 0]])
    assert (response.error, response.fields) == (ErrorCode.NOT_LEADER, expected)
    response = reset(cluster, follower, "first")
    assert (response.error, response.fields) == (ErrorCode.NOT_LEADER, expected)


def test_offsets_survive_a_leader_change_and_restarts(cluster: CoreCluster) -> None:
    old = cluster.elect()
    assert commit(cluster, old, [["orders", 0, 5, 0]]).ok
    cluster.settle()
    cluster.crash(old)
    new = cluster.elect()
    assert new != old
    assert query(cluster, new).fields["offsets"] == [[0, 5]]
    assert commit(cluster, new, [["orders", 0, 6, 0], ["orders", 1, 2, 0]]).ok
    cluster.start(old)  # from its disk: replays the offset commands of its log
    cluster.settle(20)
    assert query(cluster, old).fields["offsets"] == [[0, 6], [1, 2]]
    # A clean stop writes the state snapshot; the restart loads it.
    follower = next(i for i in cluster.followers() if i != old)
    cluster.stop(follower)
    assert cluster.fss[follower].read_bytes(f"/n{follower}/state") is not None
    cluster.start(follower)
    assert query(cluster, follower).fields["offsets"] == [[0, 6], [1, 2]]


@pytest.mark.parametrize(
    ("offsets", "remark"),
    [
        ("nope", "must be a list"),
        ([["orders", 0, 5]], "offsets[0] must be [topic, queue_id, offset, generation]"),
        ([["orders", 0, 5, 0], ["orders", "1", 5, 0]], "offsets[1]: queue_id"),
        ([["orders", 0, -1, 0]], "offsets[0]: offset"),
        ([["orders", 0, 1, -1]], "offsets[0]: generation"),
        ([["orders", 0, True, 0]], "offsets[0]: offset"),
        ([["bad topic!", 0, 1, 0]], "offsets[0]: invalid topic"),
        ([["orders", 0, 1, 0]] * 4097, "at most 4096"),
    ],
)
def test_a_bad_commit_is_refused_whole_with_a_reason(
    cluster: CoreCluster, offsets: Any, remark: str
) -> None:
    leader = cluster.elect()
    assert commit(cluster, leader, [["orders", 0, 3, 0]]).ok
    response = commit(cluster, leader, offsets)
    assert response.error == ErrorCode.INVALID_REQUEST
    assert remark in response.remark
    assert query(cluster, leader).fields["offsets"] == [[0, 3]], "nothing lost, nothing applied"


def test_a_commit_too_large_for_a_segment_is_refused() -> None:
    cluster = CoreCluster(segment_bytes=64 << 10)
    leader = cluster.elect()
    entries = [["t" * 127, q % 1024, 2**40, 0] for q in range(4096)]
    response = commit(cluster, leader, entries)
    assert response.error == ErrorCode.INVALID_REQUEST and "segment" in response.remark


# ---------------------------------------------------------------------- reset


def produce(cluster: CoreCluster, leader: int, count: int, queue_id: int = 0) -> None:
    response = cluster.request(
        leader, send_request("orders", [b"m%d" % i for i in range(count)], queue_id=queue_id)
    )
    assert response.ok, response.remark


def test_a_reset_moves_every_queue_and_refuses_commits_of_the_old_generation(
    cluster: CoreCluster,
) -> None:
    leader = cluster.elect()
    cluster.request(
        leader,
        request(RequestCode.CREATE_TOPIC, {"topic": "orders", "read_queues": 2, "write_queues": 2}),
    )
    produce(cluster, leader, 3, queue_id=0)
    produce(cluster, leader, 5, queue_id=1)
    heartbeat(cluster, leader, "a", 1)
    heartbeat(cluster, leader, "b", 2)
    notifications(cluster)
    assert commit(cluster, leader, [["orders", 0, 1, 0], ["orders", 1, 1, 0]]).ok

    response = reset(cluster, leader, "last")
    assert response.ok, response.remark
    assert response.fields == {"offsets": [[0, 3], [1, 5]], "generation": 1}
    expected = {"group": "g", "reset_topic": "orders"}
    assert notifications(cluster) == [(1, expected), (2, expected)], "members re-query"

    late = commit(cluster, leader, [["orders", 0, 2, 0], ["orders", 1, 2, 1]])
    assert late.ok and late.fields == {"stale": [["orders", 0]]}
    cluster.settle()
    for node in cluster.ids:
        assert query(cluster, node).fields == {"offsets": [[0, 3], [1, 2]], "generation": 1}

    first = reset(cluster, leader, "first")
    assert first.fields == {"offsets": [[0, 0], [1, 0]], "generation": 2}


def test_a_reset_by_timestamp_finds_the_first_message_stored_at_or_after_it(
    cluster: CoreCluster,
) -> None:
    leader = cluster.elect()
    cluster.request(
        leader, request(RequestCode.CREATE_TOPIC, {"topic": "orders", "read_queues": 1})
    )
    produce(cluster, leader, 2)
    cluster.tick(10)
    middle_ms = cluster.now_ms
    produce(cluster, leader, 3)
    response = reset(cluster, leader, "timestamp", timestamp_ms=middle_ms)
    assert response.fields == {"offsets": [[0, 2]], "generation": 1}
    after = reset(cluster, leader, "timestamp", timestamp_ms=cluster.now_ms + 10_000)
    assert after.fields["offsets"] == [[0, 5]], "all older: the end of the queue"


@pytest.mark.parametrize(
    ("fields", "error", "remark"),
    [
        ({"to": "middle"}, ErrorCode.INVALID_REQUEST, "first, last or timestamp"),
        ({"to": "timestamp"}, ErrorCode.INVALID_REQUEST, "timestamp_ms"),
        ({"to": "first", "topic": "nope"}, ErrorCode.TOPIC_NOT_EXIST, "nope"),
        ({"to": 3}, ErrorCode.INVALID_REQUEST, "'to'"),
    ],
)
def test_a_bad_reset_is_refused_with_a_reason(
    cluster: CoreCluster, fields: dict[str, Any], error: ErrorCode, remark: str
) -> None:
    leader = cluster.elect()
    produce(cluster, leader, 1)
    response = cluster.request(
        leader,
        request(RequestCode.RESET_CONSUMER_OFFSET, {"group": "g", "topic": "orders", **fields}),
    )
    assert response.error == error and remark in response.remark
    assert query(cluster, leader).fields == {"offsets": [], "generation": 0}


def test_consumer_groups_lists_members_and_groups_known_by_offsets(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    heartbeat(cluster, leader, "b", 2)
    heartbeat(cluster, leader, "a", 1)
    assert commit(cluster, leader, [["audit", 0, 1, 0]]).ok
    assert commit(cluster, leader, [["orders", 0, 1, 0]], group="offline").ok
    cluster.settle()
    response = cluster.request(leader, request(RequestCode.GET_CONSUMER_GROUPS))
    assert response.fields == {
        "groups": {
            "g": {"members": ["a", "b"], "model": "clustering", "topics": ["audit", "orders"]},
            "offline": {"members": [], "model": None, "topics": ["orders"]},
        }
    }
    follower = cluster.followers()[0]
    response = cluster.request(follower, request(RequestCode.GET_CONSUMER_GROUPS))
    assert response.fields["groups"] == {
        "g": {"members": [], "model": None, "topics": ["audit"]},
        "offline": {"members": [], "model": None, "topics": ["orders"]},
    }


# ---------------------------------------------------------------------- long polls


def test_a_held_pull_wakes_on_dispatch_and_its_wait_is_capped() -> None:
    cluster = CoreCluster(pull_suspend_ms_max=200)
    leader = cluster.elect()
    produce(cluster, leader, 1)
    cluster.settle()
    follower = cluster.followers()[0]
    pull = request(
        RequestCode.PULL_MESSAGE,
        {"topic": "orders", "queue_id": 0, "offset": 1, "suspend_ms": 60_000},
    )
    woken = cluster.call(follower, pull)
    capped = cluster.call(leader, pull)
    cluster.run()
    assert cluster.reply(woken) is None and cluster.reply(capped) is None, "held"
    produce(cluster, leader, 1)
    cluster.settle()
    answer = cluster.reply(woken)
    assert answer is not None and answer.fields["status"] == "FOUND", "woken by the dispatch"
    # The leader's copy was woken too; a pull past the end waits at most 200 ms.
    late = request(
        RequestCode.PULL_MESSAGE,
        {"topic": "orders", "queue_id": 0, "offset": 2, "suspend_ms": 60_000},
    )
    held = cluster.call(leader, late)
    cluster.tick(19)
    assert cluster.reply(held) is None
    cluster.tick(1)
    timed_out = cluster.reply(held)
    assert timed_out is not None and timed_out.fields["status"] == "NO_NEW_MSG"


def test_held_pulls_are_answered_when_the_node_closes(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    produce(cluster, leader, 1)
    follower = cluster.followers()[0]
    cluster.settle()
    held = cluster.call(
        follower,
        request(
            RequestCode.PULL_MESSAGE,
            {"topic": "orders", "queue_id": 0, "offset": 1, "suspend_ms": 10_000},
        ),
    )
    cluster.run()
    assert cluster.reply(held) is None
    core = cluster.cores[follower]
    cluster.stop(follower)
    answers = [o.frame for o in core.take_outputs() if isinstance(o, Reply) and o.reply_to == held]
    assert len(answers) == 1 and answers[0].fields["status"] == "NO_NEW_MSG"
    assert core.stats()["held_pulls"] == 0


def test_a_restart_loads_offsets_from_the_snapshot_and_reapplies_the_commits_logged_after_it() -> (
    None
):
    cluster = CoreCluster(
        consumer_expire_ms=EXPIRE_MS, checkpoint_interval_ms=50, state_snapshot_interval_ms=50
    )
    leader = cluster.elect()
    assert commit(cluster, leader, [["orders", 0, 5, 0]]).ok
    cluster.settle(20)  # checkpoints and snapshots on every node
    follower = cluster.followers()[0]
    path = f"/n{follower}/state"
    assert commit(cluster, leader, [["orders", 1, 8, 0]]).ok
    assert reset(cluster, leader, "first").ok is False  # no such topic yet: not logged
    cluster.run()
    snapshot = BrokerState.decode(cluster.fss[follower].read_bytes(path), 10)
    assert snapshot is not None
    assert snapshot[0].offsets == {("g", "orders"): {0: 5}}, "the second commit came later"
    cluster.crash(follower)
    cluster.start(follower)
    cluster.settle()  # its persisted commit index may lag: the leader tells it
    assert query(cluster, follower).fields == {"offsets": [[0, 5], [1, 8]], "generation": 0}
