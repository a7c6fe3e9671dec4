"""Administration: create topics, look at the cluster, a route, a broker.

Topic creation goes to each target group's leader, which replicates it through the
group's log (docs/broker-api.md, CREATE_TOPIC); a NOT_LEADER answer is followed to the
leader it names. The NameServers learn about the topic when the brokers next register.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mq.client.broker_requests import request_leader
from mq.client.errors import (
    BrokerError,
    MQClientError,
    NoRouteError,
)
from mq.client.instance import ClientInstance
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT
from mq.fields import FieldError, get_int, get_map, get_str
from mq.protocol import Frame, RequestCode, request
from mq.route import PERM_READ_WRITE, QUEUES_MAX, ClusterInfo, GroupInfo, TopicConfig, TopicRoute
from storage.record import validate_topic


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
