"""NameServerCore driven directly: registrations, routes, expiry, leadership, requests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mq.nameserver.core import (
    BrokerExpired,
    BrokerRegistered,
    BrokerUnregistered,
    LeaderChanged,
    NameServerCore,
)
from mq.protocol import ErrorCode, Frame, RequestCode, decode_frame, encode_frame, request
from mq.route import (
    BrokerRegistration,
    ClusterInfo,
    Perm,
    Role,
    TopicConfig,
    TopicRoute,
)

EXPIRE_MS = 120_000
ORDERS = TopicConfig(read_queues=4, write_queues=4)


def reg(
    group: str = "g1",
    node_id: int = 0,
    *,
    role: Role = Role.LEADER,
    term: int = 1,
    address: str | None = None,
    cluster: str = "c1",
    topics: dict[str, TopicConfig] | None = None,
) -> BrokerRegistration:
    return BrokerRegistration(
        cluster=cluster,
        group=group,
        node_id=node_id,
        address=address or f"10.0.{group[-1]}.{node_id}:10911",
        role=role,
        term=term,
        topics={"orders": ORDERS} if topics is None else topics,
    )


def three_nodes(core: NameServerCore, now_ms: int = 0, *, leader: int = 0, term: int = 1) -> None:
    for node_id in range(3):
        role = Role.LEADER if node_id == leader else Role.FOLLOWER
        core.register(reg(node_id=node_id, role=role, term=term), now_ms)


def leader_of(core: NameServerCore, group: str = "g1") -> str | None:
    return next(g.leader_address for g in core.cluster_info().groups if g.group == group)


def test_registered_topic_has_a_route_with_nodes_and_leader() -> None:
    core = NameServerCore()
    three_nodes(core)
    route = core.route("orders")
    assert route is not None
    (group,) = route.groups
    assert (group.info.cluster, group.group, group.leader_address) == ("c1", "g1", "10.0.1.0:10911")
    assert [(n.node_id, n.role) for n in group.info.nodes] == [
        (0, Role.LEADER),
        (1, Role.FOLLOWER),
        (2, Role.FOLLOWER),
    ]
    assert group.topic == ORDERS


def test_route_lists_every_group_hosting_the_topic() -> None:
    core = NameServerCore()
    core.register(reg("g2", topics={"orders": TopicConfig(8, 8, Perm.READ)}), 0)
    core.register(reg("g1"), 0)
    core.register(reg("g3", topics={"other": ORDERS}), 0)
    route = core.route("orders")
    assert route is not None
    assert [(g.group, g.topic.read_queues, g.topic.perm) for g in route.groups] == [
        ("g1", 4, Perm.READ | Perm.WRITE),
        ("g2", 8, Perm.READ),
    ]


def test_unknown_topic_has_no_route() -> None:
    core = NameServerCore()
    core.register(reg(), 0)
    assert core.route("nope") is None
    response = core.handle(
        Frame(code=RequestCode.GET_ROUTE, request_id=3, fields={"topic": "nope"}), 0
    )
    assert (response.request_id, response.error) == (3, ErrorCode.TOPIC_NOT_EXIST)


def test_reregistration_replaces_the_topic_table() -> None:
    core = NameServerCore()
    core.register(reg(topics={"orders": ORDERS, "audit": ORDERS}), 0)
    core.register(reg(topics={"audit": TopicConfig(2, 1)}), 1000)
    assert core.route("orders") is None
    route = core.route("audit")
    assert route is not None and route.groups[0].topic == TopicConfig(2, 1)
    assert core.all_topics() == ["audit"]


def test_silent_node_expires_after_expire_ms() -> None:
    core = NameServerCore(expire_ms=EXPIRE_MS)
    core.register(reg(), 5_000)
    assert core.expire(5_000 + EXPIRE_MS) == []
    assert core.route("orders") is not None
    expired = core.expire(5_000 + EXPIRE_MS + 1)
    assert expired == [BrokerExpired("g1", 0, "10.0.1.0:10911", EXPIRE_MS + 1)]
    assert core.route("orders") is None
    assert core.cluster_info().groups == ()


def test_reregistering_is_the_heartbeat() -> None:
    core = NameServerCore(expire_ms=EXPIRE_MS)
    for now_ms in range(0, 10 * EXPIRE_MS, 30_000):
        core.register(reg(), now_ms)
        assert core.expire(now_ms) == []
    assert core.route("orders") is not None


def test_expired_follower_leaves_the_group_and_its_leader() -> None:
    core = NameServerCore(expire_ms=EXPIRE_MS)
    three_nodes(core, 0)
    core.register(reg(node_id=0, role=Role.LEADER), 100_000)
    core.register(reg(node_id=1, role=Role.FOLLOWER), 100_000)
    assert [e.node_id for e in core.expire(EXPIRE_MS + 1)] == [2]
    (group,) = core.cluster_info().groups
    assert [n.node_id for n in group.nodes] == [0, 1]
    assert group.leader_address == "10.0.1.0:10911"


def test_new_leader_with_higher_term_replaces_the_old_leader() -> None:
    core = NameServerCore()
    three_nodes(core, leader=0, term=1)
    core.take_events()
    # Node 1 wins the election for term 2 and registers before the others do.
    assert core.register(reg(node_id=1, role=Role.LEADER, term=2), 1000) == "10.0.1.1:10911"
    assert leader_of(core) == "10.0.1.1:10911"
    assert core.take_events() == [LeaderChanged("g1", "10.0.1.0:10911", "10.0.1.1:10911", 2)]
    route = core.route("orders")
    assert route is not None and route.groups[0].leader_address == "10.0.1.1:10911"


def test_stale_leader_claim_is_ignored() -> None:
    core = NameServerCore()
    three_nodes(core, leader=0, term=1)
    core.register(reg(node_id=1, role=Role.LEADER, term=2), 1000)
    # The deposed leader, partitioned away, still believes it leads term 1.
    assert core.register(reg(node_id=0, role=Role.LEADER, term=1), 2000) == "10.0.1.1:10911"
    assert leader_of(core) == "10.0.1.1:10911"


def test_group_has_no_leader_while_a_member_reports_a_newer_term() -> None:
    core = NameServerCore()
    three_nodes(core, leader=0, term=1)
    core.take_events()
    core.register(reg(node_id=2, role=Role.FOLLOWER, term=2), 1000)  # an election is under way
    assert leader_of(core) is None
    route = core.route("orders")
    assert route is not None and route.groups[0].leader_address is None  # still readable
    assert core.register(reg(node_id=2, role=Role.LEADER, term=2), 2000) == "10.0.1.2:10911"
    assert [type(e) for e in core.take_events()] == [LeaderChanged, LeaderChanged]


def test_unregister_removes_the_node_only_from_its_own_address() -> None:
    core = NameServerCore()
    three_nodes(core)
    assert not core.unregister("g1", 1, "10.9.9.9:1")  # a previous incarnation's address
    assert not core.unregister("nope", 1, "10.0.1.1:10911")
    assert core.unregister("g1", 1, "10.0.1.1:10911")
    assert BrokerUnregistered("g1", 1, "10.0.1.1:10911") in core.take_events()
    (group,) = core.cluster_info().groups
    assert [n.node_id for n in group.nodes] == [0, 2]
    for node_id in (0, 2):
        core.unregister("g1", node_id, f"10.0.1.{node_id}:10911")
    assert core.cluster_info().groups == ()


def test_unregistering_the_leader_leaves_the_group_leaderless() -> None:
    core = NameServerCore()
    three_nodes(core)
    core.unregister("g1", 0, "10.0.1.0:10911")
    assert leader_of(core) is None


def test_restart_on_a_new_address_is_reported() -> None:
    core = NameServerCore()
    core.register(reg(), 0)
    core.register(reg(), 1000)
    core.register(reg(address="10.0.1.99:10911"), 2000)
    registered = [e for e in core.take_events() if isinstance(e, BrokerRegistered)]
    assert [e.address for e in registered] == ["10.0.1.0:10911", "10.0.1.99:10911"]
    assert leader_of(core) == "10.0.1.99:10911"


def test_cluster_info_groups_by_cluster() -> None:
    core = NameServerCore()
    core.register(reg("g1", cluster="east"), 0)
    core.register(reg("g2", cluster="west"), 0)
    core.register(reg("g3", cluster="east"), 0)
    assert core.cluster_info().clusters() == {"east": ["g1", "g3"], "west": ["g2"]}


def test_requests_over_the_wire_round_trip() -> None:
    """What a broker sends and a client reads, through encode/decode, as real peers do."""
    core = NameServerCore()

    def call(frame: Frame, now_ms: int = 0) -> Frame:
        sent = decode_frame(encode_frame(frame))
        return decode_frame(encode_frame(core.handle(sent, now_ms)))

    registration = reg(topics={"orders": ORDERS, "audit": TopicConfig(1, 1, Perm.READ)})
    response = call(
        Frame(code=RequestCode.REGISTER_BROKER, request_id=1, fields=registration.to_fields())
    )
    assert (response.ok, response.fields) == (True, {"leader_address": "10.0.1.0:10911"})
    assert BrokerRegistration.from_fields(registration.to_fields()) == registration

    route = call(Frame(code=RequestCode.GET_ROUTE, request_id=2, fields={"topic": "audit"}))
    assert TopicRoute.from_fields(route.fields) == core.route("audit")

    info = call(Frame(code=RequestCode.GET_CLUSTER_INFO, request_id=3))
    assert ClusterInfo.from_fields(info.fields) == core.cluster_info()

    topics = call(Frame(code=RequestCode.GET_ALL_TOPICS, request_id=4))
    assert topics.fields == {"topics": ["audit", "orders"]}

    assert call(Frame(code=RequestCode.PING, request_id=5)).ok

    fields = {"group": "g1", "node_id": 0, "address": "10.0.1.0:10911"}
    gone = call(Frame(code=RequestCode.UNREGISTER_BROKER, request_id=6, fields=fields))
    assert gone.fields == {"removed": True}
    assert call(
        Frame(code=RequestCode.GET_ROUTE, request_id=7, fields={"topic": "audit"})
    ).error == (ErrorCode.TOPIC_NOT_EXIST)


def test_invalid_requests_are_answered_invalid_request() -> None:
    core = NameServerCore()
    good = reg().to_fields()
    bad_fields = [
        {},
        {**good, "role": "king"},
        {**good, "term": -1},
        {**good, "node_id": "zero"},
        {**good, "group": ""},
        {**good, "topics": {"orders": {"read_queues": 5000, "write_queues": 1}}},
        {**good, "topics": {"orders": "four"}},
        {**good, "topics": [1]},
    ]
    for fields in bad_fields:
        response = core.handle(request(RequestCode.REGISTER_BROKER, fields), 0)
        assert response.error == ErrorCode.INVALID_REQUEST, fields
    assert core.cluster_info().groups == ()
    response = core.handle(request(RequestCode.GET_ROUTE, {"topic": 7}), 0)
    assert response.error == ErrorCode.INVALID_REQUEST
    assert "topic" in response.remark


def test_requests_for_other_components_are_not_supported() -> None:
    core = NameServerCore()
    for code in (RequestCode.SEND_MESSAGE, RequestCode.PULL_MESSAGE, 9999):
        assert core.handle(request(code), 0).error == ErrorCode.REQUEST_CODE_NOT_SUPPORTED


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("register"),
            st.sampled_from(["g1", "g2"]),
            st.integers(0, 2),
            st.sampled_from(list(Role)),
            st.integers(0, 4),
        ),
        st.tuples(st.just("expire")),
        st.tuples(st.just("unregister"), st.sampled_from(["g1", "g2"]), st.integers(0, 2)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(operations, st.lists(st.integers(0, 60_000), min_size=40, max_size=40))
def test_routes_only_name_live_nodes_and_believable_leaders(
    ops: list[tuple], steps_ms: list[int]
) -> None:  # type: ignore[type-arg]
    """Whatever happens, expiry keeps exactly the nodes heard from within expire_ms, and
    a group reports a leader iff a node claims leadership at the highest term the group
    has reported (and then it is that node)."""
    core = NameServerCore(expire_ms=EXPIRE_MS)
    now_ms = 0
    last_seen: dict[tuple[str, int], int] = {}
    term_max: dict[str, int] = {}
    for op, step_ms in zip(ops, steps_ms, strict=False):
        now_ms += step_ms
        if op[0] == "register":
            _, group, node_id, role, term = op
            core.register(reg(group, node_id, role=role, term=term), now_ms)
            last_seen[group, node_id] = now_ms
            term_max[group] = max(term_max.get(group, 0), term)
        elif op[0] == "expire":
            core.expire(now_ms)
        else:
            _, group, node_id = op
            if core.unregister(group, node_id, f"10.0.{group[-1]}.{node_id}:10911"):
                del last_seen[group, node_id]
        groups = {info.group: info for info in core.cluster_info().groups}
        for group in set(term_max) - set(groups):
            del term_max[group]  # a group that vanished starts afresh
        for info in groups.values():
            claims = [
                n for n in info.nodes if n.role is Role.LEADER and n.term >= term_max[info.group]
            ]
            assert len(claims) <= 1 or len({n.term for n in claims}) == 1
            if claims:
                assert info.leader_address in {n.address for n in claims}
            else:
                assert info.leader_address is None
        if op[0] == "expire":
            live = {(g, n.node_id) for g, info in groups.items() for n in info.nodes}
            assert live == {key for key, seen in last_seen.items() if now_ms - seen <= EXPIRE_MS}
            for key in set(last_seen) - live:
                del last_seen[key]
