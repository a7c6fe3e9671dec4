"""Administration: create topics, look at the cluster, a route, a broker.

Topic creation goes to each target group's leader, which replicates it through the
group's log (docs/broker-api.md, CREATE_TOPIC); a NOT_LEADER answer is followed to the
leader it names. The NameServers learn about the topic when the brokers next register.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mq.client.broker_requests import request_any_node, request_leader
from mq.client.errors import (
    BrokerError,
    MQClientError,
    NoRouteError,
)
from mq.client.instance import ClientInstance
from mq.client.offset_store import offset_pairs
from mq.client.queues import MessageQueue
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT
from mq.fields import FieldError, get_int, get_map, get_str
from mq.protocol import Frame, RequestCode, request
from mq.route import PERM_READ_WRITE, QUEUES_MAX, ClusterInfo, GroupInfo, TopicConfig, TopicRoute
from storage.record import validate_topic

_log = structlog.get_logger("mq.client.admin")


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """GET_BROKER_STATUS of one node. `raw` holds every field, known or not."""

    cluster: str
    group: str
    node_id: int
    address: str
    role: str
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    commit_offset: int
    max_offset: int
    pid: int
    raw: Mapping[str, Any]

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> BrokerStatus:
        leader = fields.get("leader")
        return cls(
            cluster=get_str(fields, "cluster", default=""),
            group=get_str(fields, "group", default=""),
            node_id=get_int(fields, "node_id", default=0),
            address=get_str(fields, "address", default=""),
            role=get_str(fields, "role", default=""),
            term=get_int(fields, "term", default=0),
            leader=leader if isinstance(leader, str) else None,
            commit_index=get_int(fields, "commit_index", default=0),
            applied_index=get_int(fields, "applied_index", default=0),
            commit_offset=get_int(fields, "commit_offset", default=0),
            max_offset=get_int(fields, "max_offset", default=0),
            pid=get_int(fields, "pid", default=0),
            raw=dict(fields),
        )


@dataclass(frozen=True, slots=True)
class ConsumerGroupInfo:
    """A consumer group as the brokers know it: members (merged over every node: each
    node knows the members that heartbeat it), model, and subscribed topics (or topics
    with committed offsets)."""

    group: str
    members: tuple[str, ...]
    model: str | None
    topics: tuple[str, ...]

    def to_fields(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "members": list(self.members),
            "model": self.model,
            "topics": list(self.topics),
        }


@dataclass(frozen=True, slots=True)
class QueueLag:
    """One queue of a consumer group: how far the broker is, how far the group is."""

    queue: MessageQueue
    broker_offset: int
    """The queue's max offset (one past its last message)."""
    consumer_offset: int | None
    """The group's committed offset, None when it has none for this queue."""

    @property
    def lag(self) -> int | None:
        """Messages not yet consumed by the group (None without a committed offset)."""
        if self.consumer_offset is None:
            return None
        return max(0, self.broker_offset - self.consumer_offset)

    def to_fields(self) -> dict[str, Any]:
        return {
            "topic": self.queue.topic,
            "group": self.queue.group,
            "queue_id": self.queue.queue_id,
            "broker_offset": self.broker_offset,
            "consumer_offset": self.consumer_offset,
            "lag": self.lag,
        }


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group: str
    model: str | None
    members: tuple[str, ...]
    queues: tuple[QueueLag, ...]

    @property
    def lag(self) -> int:
        return sum(q.lag or 0 for q in self.queues)

    def to_fields(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "model": self.model,
            "members": list(self.members),
            "lag": self.lag,
            "queues": [q.to_fields() for q in self.queues],
        }


class Admin:
    """`async with Admin(namesrv=[...]) as admin:`"""

    def __init__(
        self,
        namesrv: Sequence[str] | str,
        *,
        request_timeout_ms: int = 3_000,
        connect_timeout_ms: int = 3_000,
        route_refresh_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
    ) -> None:
        self._client = ClientInstance(
            namesrv,
            request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            route_refresh_ms=route_refresh_ms,
        )

    async def __aenter__(self) -> Admin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        await self._client.start()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def cluster_info(self) -> ClusterInfo:
        return await self._client.routes.cluster_info()

    async def topic_route(self, topic: str) -> TopicRoute:
        """The topic's route, fetched from a NameServer now (NoRouteError)."""
        return await self._client.routes.refresh(topic)

    async def create_topic(
        self,
        topic: str,
        queues: int = 8,
        *,
        group: str | None = None,
        read_queues: int | None = None,
        write_queues: int | None = None,
        perm: int = int(PERM_READ_WRITE),
    ) -> list[str]:
        """Create (or update) `topic` on every group of the cluster, or on `group` only.
        Returns the groups that applied it. Raises NoRouteError (no such group, no group
        at all), BrokerError, MQConnectionError / MQTimeoutError."""
        validate_topic(topic)
        config = TopicConfig(
            read_queues=queues if read_queues is None else read_queues,
            write_queues=queues if write_queues is None else write_queues,
            perm=perm,
        )
        for count in (config.read_queues, config.write_queues):
            if not 0 < count <= QUEUES_MAX:
                raise ValueError(f"queue counts must be within [1, {QUEUES_MAX}]")
        groups = (await self.cluster_info()).groups
        if group is not None:
            groups = tuple(g for g in groups if g.group == group)
            if not groups:
                raise NoRouteError(f"no NameServer knows group {group!r}")
        if not groups:
            raise NoRouteError("the NameServers know no broker group")
        frame = request(RequestCode.CREATE_TOPIC, {"topic": topic} | config.to_fields())
        for info in groups:
            await self._to_leader(info, frame)
        self._client.routes.forget(topic)
        return [g.group for g in groups]

    async def broker_status(self, address: str) -> BrokerStatus:
        response = await self._ask(address, request(RequestCode.GET_BROKER_STATUS))
        try:
            return BrokerStatus.from_fields(response.fields)
        except FieldError as exc:
            raise MQClientError(f"malformed broker status from {address}: {exc}") from exc

    async def all_topics(self, address: str) -> dict[str, TopicConfig]:
        """The topic table of the node at `address`."""
        response = await self._ask(address, request(RequestCode.GET_ALL_TOPICS))
        try:
            topics = get_map(response.fields, "topics")
            return {str(name): TopicConfig.from_fields(c) for name, c in topics.items()}
        except (FieldError, AttributeError) as exc:
            raise MQClientError(f"malformed topic table from {address}: {exc}") from exc

    # --- consumer groups ---------------------------------------------------------------

    async def consumer_groups(self) -> list[ConsumerGroupInfo]:
        """Every consumer group some broker node knows (GET_CONSUMER_GROUPS to every
        node: membership is per node), by name. Unreachable nodes are skipped."""
        merged: dict[str, tuple[set[str], str | None, set[str]]] = {}
        info = await self.cluster_info()
        frame = request(RequestCode.GET_CONSUMER_GROUPS)
        for group in info.groups:
            for node in group.nodes:
                try:
                    response = await self._ask(node.address, frame)
                    groups = get_map(response.fields, "groups")
                except (MQClientError, FieldError) as exc:
                    _log.info("consumer_groups_unavailable", address=node.address, error=str(exc))
                    continue
                for name, entry in groups.items():
                    if not isinstance(name, str) or not isinstance(entry, Mapping):
                        continue
                    members, model, topics = merged.setdefault(name, (set(), None, set()))
                    members.update(m for m in entry.get("members", ()) if isinstance(m, str))
                    topics.update(t for t in entry.get("topics", ()) if isinstance(t, str))
                    if model is None and isinstance(entry.get("model"), str):
                        merged[name] = (members, entry["model"], topics)
        return [
            ConsumerGroupInfo(name, tuple(sorted(m)), model, tuple(sorted(t)))
            for name, (m, model, t) in sorted(merged.items())
        ]

    async def describe_group(
        self, group: str, topics: Sequence[str] | None = None
    ) -> GroupDescription:
        """Members, and per queue of each topic (the group's topics by default): the
        broker's max offset, the group's committed offset, the lag."""
        known = {g.group: g for g in await self.consumer_groups()}.get(group)
        if topics is None:
            topics = known.topics if known is not None else ()
        queues: list[QueueLag] = []
        for topic in sorted(topics):
            route = await self._client.routes.refresh(topic)
            for group_route in route.groups:
                committed = await self._committed_offsets(group, topic, group_route.info)
                for queue_id in range(group_route.topic.read_queues):
                    mq = MessageQueue(topic, group_route.group, queue_id)
                    fields = {"topic": topic, "queue_id": queue_id}
                    response, address = await request_any_node(
                        self._client, group_route.info, request(RequestCode.GET_MAX_OFFSET, fields)
                    )
                    try:
                        broker_offset = get_int(response.fields, "offset")
                    except FieldError as exc:
                        raise MQClientError(f"malformed offset from {address}: {exc}") from exc
                    queues.append(QueueLag(mq, broker_offset, committed.get(queue_id)))
        return GroupDescription(
            group,
            known.model if known is not None else None,
            known.members if known is not None else (),
            tuple(queues),
        )

    async def reset_offset(
        self, group: str, topic: str, to: str, *, timestamp_ms: int | None = None
    ) -> dict[MessageQueue, int]:
        """Reset `group`'s offsets of `topic` on every broker group hosting it: to the
        "first" or "last" message, or to the first stored at or after `timestamp_ms`
        ("timestamp"). The brokers notify the group's members, which drop what they
        cached and continue from the new offsets. Returns the new offsets."""
        if to not in ("first", "last", "timestamp"):
            raise ValueError("reset to 'first', 'last' or 'timestamp'")
        fields: dict[str, Any] = {"group": group, "topic": topic, "to": to}
        if to == "timestamp":
            if timestamp_ms is None:
                raise ValueError("a reset to 'timestamp' needs timestamp_ms")
            fields["timestamp_ms"] = timestamp_ms
        route = await self._client.routes.refresh(topic)
        offsets: dict[MessageQueue, int] = {}
        for group_route in route.groups:
            response = await request_leader(
                self._client, group_route.info, request(RequestCode.RESET_CONSUMER_OFFSET, fields)
            )
            try:
                for queue_id, offset in offset_pairs(response.fields):
                    offsets[MessageQueue(topic, group_route.group, queue_id)] = offset
            except FieldError as exc:
                raise MQClientError(
                    f"malformed reset answer from {group_route.group}: {exc}"
                ) from exc
        return offsets

    async def _committed_offsets(self, group: str, topic: str, info: GroupInfo) -> dict[int, int]:
        frame = request(RequestCode.QUERY_CONSUMER_OFFSET, {"group": group, "topic": topic})
        response, address = await request_any_node(self._client, info, frame, topic=topic)
        try:
            return dict(offset_pairs(response.fields))
        except FieldError as exc:
            raise MQClientError(f"malformed offsets from {address}: {exc}") from exc

    # --- internals -------------------------------------------------------------------

    async def _ask(self, address: str, frame: Frame) -> Frame:
        response = await self._client.pool.request(
            address, frame, timeout_s=self._client.request_timeout_s
        )
        if not response.ok:
            raise BrokerError(response.error, response.remark, address=address)
        return response

    async def _to_leader(self, info: GroupInfo, frame: Frame) -> Frame:
        return await request_leader(self._client, info, frame)
