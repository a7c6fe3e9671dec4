"""Sending a request to a broker group: to its leader (writes), or to any node (reads).

Writes (topic creation, offset commits, resets) are replicated through the group's
Raft log, so only the leader takes them; any other node answers NOT_LEADER naming the
leader it knows, and we follow that. Reads are served by every node (followers hold
committed data), so a read goes to the leader first (freshest, and where the route
says writes go) and then to the other nodes in turn: a dead or partitioned leader
costs one failed attempt, not the read. Both return error answers to the caller as
`BrokerError` unless told to let a code through.
"""

from __future__ import annotations

from mq.client.errors import (
    BrokerError,
    MQClientError,
    MQConnectionError,
    MQTimeoutError,
    NoRouteError,
)
from mq.client.instance import ClientInstance
from mq.protocol import ErrorCode, Frame
from mq.route import GroupInfo, TopicRoute

REDIRECTS_MAX = 3
"""NOT_LEADER answers followed per request before giving up (a leader changing faster
than this is an election storm: report it rather than chase it)."""


async def group_info(client: ClientInstance, topic: str, group_name: str) -> GroupInfo:
    """Broker group `group_name` as `topic`'s route names it; the route is refreshed once
    if the cached one lacks it (the group is new, or the route is old). NoRouteError if
    the fresh route lacks it too."""

    def find(route: TopicRoute) -> GroupInfo | None:
        return next((g.info for g in route.groups if g.group == group_name), None)

    info = find(await client.routes.get(topic)) or find(await client.routes.refresh(topic))
    if info is None:
        raise NoRouteError(f"topic {topic!r} has no group {group_name!r}")
    return info


def read_order(info: GroupInfo, leader: str | None) -> list[str]:
    """The leader first, then the other nodes by id."""
    addresses = [n.address for n in info.nodes]
    if leader is not None:
        addresses = [leader] + [a for a in addresses if a != leader]
    return addresses


async def request_any_node(
    client: ClientInstance,
    info: GroupInfo,
    frame: Frame,
    *,
    timeout_s: float | None = None,
    allow: frozenset[int] = frozenset(),
    topic: str | None = None,
) -> tuple[Frame, str]:
    """Send a read to the group's leader, else to its other nodes in turn, until one
    answers. Returns (response, address). An error answer raises BrokerError unless its
    code is in `allow`; when no node answers, MQConnectionError or MQTimeoutError.
    A node that fails stops being preferred as leader, and `topic`'s route (if given)
    is refreshed in the background."""
    routes = client.routes
    timeout = client.request_timeout_s if timeout_s is None else timeout_s
    failures: list[str] = []
    last: MQClientError | None = None
    for address in read_order(info, routes.leader_of(info)):
        try:
            response = await client.pool.request(address, frame, timeout_s=timeout)
        except (MQConnectionError, MQTimeoutError) as exc:
            failures.append(str(exc))
            last = exc
            routes.forget_leader(info.group, address)
            if topic is not None:
                routes.request_refresh(topic)
            continue
        if not response.ok and response.error not in allow:
            if response.error == ErrorCode.TOPIC_NOT_EXIST and topic is not None:
                routes.request_refresh(topic)
            raise BrokerError(response.error, response.remark, address=address)
        return response, address
    if last is None:
        raise NoRouteError(f"group {info.group!r} has no nodes")
    message = f"no node of group {info.group!r} answered: " + "; ".join(failures)
    if isinstance(last, MQTimeoutError):
        raise MQTimeoutError(message) from last
    raise MQConnectionError(message) from last


async def request_leader(
    client: ClientInstance, info: GroupInfo, frame: Frame, *, timeout_s: float | None = None
) -> Frame:
    """Send a write to the group's leader: the known one first, else each node in turn,
    following NOT_LEADER redirects (at most REDIRECTS_MAX). Returns the successful
    answer; raises BrokerError for any other error answer, MQConnectionError /
    MQTimeoutError / NotLeader's BrokerError when no leader could be reached."""
    timeout = client.request_timeout_s if timeout_s is None else timeout_s
    routes = client.routes
    candidates = read_order(info, routes.leader_of(info))
    redirects = 0
    last: Exception | None = None
    tried: set[str] = set()
    while candidates:
        address = candidates.pop(0)
        if address in tried:
            continue
        tried.add(address)
        try:
            response = await client.pool.request(address, frame, timeout_s=timeout)
        except (MQConnectionError, MQTimeoutError) as exc:
            last = exc
            routes.forget_leader(info.group, address)
            continue
        if response.ok:
            return response
        if response.error == ErrorCode.NOT_LEADER:
            last = BrokerError(response.error, response.remark, address=address)
            leader = response.fields.get("leader")
            if isinstance(leader, str) and leader and redirects < REDIRECTS_MAX:
                redirects += 1
                routes.note_leader(info.group, leader)
                tried.discard(leader)
                candidates.insert(0, leader)
            continue
        raise BrokerError(response.error, response.remark, address=address)
    if isinstance(last, MQClientError):
        raise last
    raise NoRouteError(f"no leader of group {info.group!r} could be reached")
