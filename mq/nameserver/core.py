"""The NameServer's logic, sans-IO: registrations in, routes out, time as an argument.

As in RocketMQ, a NameServer is a soft-state registry. Brokers register with every
NameServer and re-register periodically; that re-registration is the only liveness
signal, and a node silent for `expire_ms` is forgotten (`expire`, driven by the caller's
clock). NameServers never talk to each other: each converges on the same view because
every broker tells each of them the same thing, and a restarted one is whole again after
one registration interval. Nothing is persisted.

Leadership follows Raft terms. A group's leader is the node that claims leadership with
the highest term any member of the group has reported: a new leader's claim (higher term)
replaces the old one at once, and a deposed leader that keeps registering with its stale
term is ignored. Once any member reports a term above the claimed leader's, the group has
no known leader until a node claims that term; clients then still read from any node.

`NameServerCore.handle` is the whole request surface; the trio server and the simulator
both drive it, and it emits `Event`s (drained with `take_events`) so they can log what
changed without the core logging itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from mq.fields import FieldError, get_int, get_name
from mq.protocol import ErrorCode, Frame, RequestCode, code_name
from mq.route import (
    BROKER_EXPIRE_MS_DEFAULT,
    BrokerRegistration,
    ClusterInfo,
    GroupInfo,
    GroupRoute,
    NodeInfo,
    Role,
    TopicConfig,
    TopicRoute,
)

EVENTS_MAX = 1024
"""Events kept for `take_events`; the oldest are dropped if the driver does not drain."""


@dataclass(frozen=True, slots=True)
class BrokerRegistered:
    """A node registered for the first time, or from a new address (a restart)."""

    cluster: str
    group: str
    node_id: int
    address: str
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    group: str
    old_address: str | None
    new_address: str | None
    term: int


@dataclass(frozen=True, slots=True)
class BrokerExpired:
    group: str
    node_id: int
    address: str
    silent_ms: int


@dataclass(frozen=True, slots=True)
class BrokerUnregistered:
    group: str
    node_id: int
    address: str


Event = BrokerRegistered | LeaderChanged | BrokerExpired | BrokerUnregistered


@dataclass(slots=True)
class _Node:
    node_id: int
    address: str
    role: Role
    term: int
    topics: Mapping[str, TopicConfig]
    last_seen_ms: int

    def info(self) -> NodeInfo:
        return NodeInfo(node_id=self.node_id, address=self.address, role=self.role, term=self.term)


@dataclass(slots=True)
class _Group:
    cluster: str
    name: str
    nodes: dict[int, _Node]
    term_max: int = 0
    """Highest term any member has reported while the group was known; a leader claim
    below it is stale (that node has been, or is being, deposed)."""

    def leader(self) -> _Node | None:
        claims = [
            n for n in self.nodes.values() if n.role is Role.LEADER and n.term >= self.term_max
        ]
        # Raft elects at most one leader per term, so there is at most one claim here;
        # should a broken node break that, the freshest registration wins.
        return max(claims, key=lambda n: (n.term, n.last_seen_ms), default=None)

    def topics(self) -> Mapping[str, TopicConfig]:
        """The group's topic table: the leader's, which has applied the most topic
        changes; without a leader, that of the node with the newest term."""
        source = self.leader() or max(self.nodes.values(), key=lambda n: (n.term, n.last_seen_ms))
        return source.topics

    def info(self) -> GroupInfo:
        leader = self.leader()
        return GroupInfo(
            cluster=self.cluster,
            group=self.name,
            leader_address=leader.address if leader else None,
            nodes=tuple(self.nodes[i].info() for i in sorted(self.nodes)),
        )


class NameServerCore:
    """Route registry. Every method is a pure state transition; `now_ms` is the caller's
    monotonic clock in milliseconds (only differences between its values matter)."""

    def __init__(self, *, expire_ms: int = BROKER_EXPIRE_MS_DEFAULT) -> None:
        assert expire_ms > 0
        self.expire_ms = expire_ms
        self._groups: dict[str, _Group] = {}
        self._events: deque[Event] = deque(maxlen=EVENTS_MAX)

    # --- state transitions -----------------------------------------------------------

    def register(self, registration: BrokerRegistration, now_ms: int) -> str | None:
        """Record (or refresh) a node; returns the group's leader address as now known."""
        r = registration
        group = self._groups.get(r.group)
        if group is None:
            group = self._groups[r.group] = _Group(cluster=r.cluster, name=r.group, nodes={})
        group.cluster = r.cluster
        leader_before = group.leader()
        previous = group.nodes.get(r.node_id)
        group.nodes[r.node_id] = _Node(
            node_id=r.node_id,
            address=r.address,
            role=r.role,
            term=r.term,
            topics=dict(r.topics),
            last_seen_ms=now_ms,
        )
        group.term_max = max(group.term_max, r.term)
        if previous is None or previous.address != r.address:
            self._events.append(
                BrokerRegistered(r.cluster, r.group, r.node_id, r.address, r.role, r.term)
            )
        leader = group.leader()
        self._note_leader_change(group, leader_before, leader)
        return leader.address if leader else None

    def unregister(self, group_name: str, node_id: int, address: str) -> bool:
        """Forget a node that is shutting down cleanly, so clients stop using it now
        rather than after `expire_ms`. The address must match: a late unregister from a
        node's previous incarnation must not remove its restarted successor."""
        group = self._groups.get(group_name)
        node = group.nodes.get(node_id) if group else None
        if group is None or node is None or node.address != address:
            return False
        self._events.append(BrokerUnregistered(group_name, node_id, address))
        self._remove_node(group, node_id)
        return True

    def expire(self, now_ms: int) -> list[BrokerExpired]:
        """Forget every node silent for more than `expire_ms`; returns what was forgotten."""
        expired: list[BrokerExpired] = []
        for group in list(self._groups.values()):
            for node in list(group.nodes.values()):
                silent_ms = now_ms - node.last_seen_ms
                if silent_ms > self.expire_ms:
                    event = BrokerExpired(group.name, node.node_id, node.address, silent_ms)
                    expired.append(event)
                    self._events.append(event)
                    self._remove_node(group, node.node_id)
        return expired

    def take_events(self) -> list[Event]:
        """What changed since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    # --- queries ---------------------------------------------------------------------

    def route(self, topic: str) -> TopicRoute | None:
        """Every group hosting `topic`, or None if no live group does."""
        groups = []
        for name in sorted(self._groups):
            group = self._groups[name]
            config = group.topics().get(topic)
            if config is not None:
                groups.append(GroupRoute(info=group.info(), topic=config))
        return TopicRoute(topic=topic, groups=tuple(groups)) if groups else None

    def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(groups=tuple(self._groups[name].info() for name in sorted(self._groups)))

    def all_topics(self) -> list[str]:
        topics: set[str] = set()
        for group in self._groups.values():
            topics.update(group.topics())
        return sorted(topics)

    # --- the request surface ---------------------------------------------------------

    def handle(self, request: Frame, now_ms: int) -> Frame:
        """Answer one request frame."""
        try:
            return self._handle(request, now_ms)
        except FieldError as exc:
            return request.make_error(ErrorCode.INVALID_REQUEST, str(exc))

    def _handle(self, request: Frame, now_ms: int) -> Frame:
        fields = request.fields
        code = request.code
        if code == RequestCode.PING:
            return request.make_response()
        if code == RequestCode.REGISTER_BROKER:
            leader = self.register(BrokerRegistration.from_fields(fields), now_ms)
            return request.make_response({"leader_address": leader})
        if code == RequestCode.UNREGISTER_BROKER:
            removed = self.unregister(
                get_name(fields, "group"), get_int(fields, "node_id"), get_name(fields, "address")
            )
            return request.make_response({"removed": removed})
        if code == RequestCode.GET_ROUTE:
            topic = get_name(fields, "topic")
            route = self.route(topic)
            if route is None:
                return request.make_error(
                    ErrorCode.TOPIC_NOT_EXIST, f"no route for topic {topic!r}"
                )
            return request.make_response(route.to_fields())
        if code == RequestCode.GET_CLUSTER_INFO:
            return request.make_response(self.cluster_info().to_fields())
        if code == RequestCode.GET_ALL_TOPICS:
            return request.make_response({"topics": self.all_topics()})
        return request.make_error(
            ErrorCode.REQUEST_CODE_NOT_SUPPORTED,
            f"the NameServer does not serve {code_name(code)}",
        )

    # --- internals -------------------------------------------------------------------

    def _remove_node(self, group: _Group, node_id: int) -> None:
        leader_before = group.leader()
        del group.nodes[node_id]
        if not group.nodes:
            del self._groups[group.name]
            self._note_leader_change(group, leader_before, None)
            return
        self._note_leader_change(group, leader_before, group.leader())

    def _note_leader_change(self, group: _Group, before: _Node | None, after: _Node | None) -> None:
        before_key = (before.node_id, before.address, before.term) if before else None
        after_key = (after.node_id, after.address, after.term) if after else None
        if before_key != after_key:
            self._events.append(
                LeaderChanged(
                    group=group.name,
                    old_address=before.address if before else None,
                    new_address=after.address if after else None,
                    term=after.term if after else group.term_max,
                )
            )
