"""Topic routes from the NameServers: fetched on demand, cached, kept fresh.

A route says which groups host a topic, their nodes and their leaders. It goes stale
when a leader changes, a node dies or a topic is created, so the table refreshes every
cached topic every `refresh_interval_ms` (30 s, RocketMQ's pollNameServerInterval) and
at once when a request reveals a stale route (`request_refresh`: NOT_LEADER, a
connection failure, TOPIC_NOT_EXIST). A refresh that fails keeps the old route: a stale
route is more useful than none while NameServers are unreachable.

NameServers are independent and equivalent. Requests go to the last one that answered;
on a connection failure or timeout the next is tried (failover). A NameServer that says
TOPIC_NOT_EXIST may have just restarted and not heard from the brokers yet, so the others
are asked too before the topic is declared unknown.

Leader hints: a NOT_LEADER answer names the new leader before the NameServers know it.
The hint is used instead of the route's leader until it is confirmed by a refresh, is
contradicted by the node itself (NOT_LEADER again, or a connection failure), or is older
than one refresh interval.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.abc
import structlog

from mq.client.errors import MQClientError, MQConnectionError, MQTimeoutError, NoRouteError
from mq.client.pool import ConnectionPool
from mq.fields import FieldError
from mq.protocol import ErrorCode, Frame, RequestCode, error_name, request
from mq.route import ClusterInfo, GroupInfo, GroupRoute, TopicConfig, TopicRoute

REFRESH_INTERVAL_MS_DEFAULT = 30_000
TOPICS_MAX = 4096
"""Routes cached; the least recently used is dropped past this."""

_log = structlog.get_logger("mq.client")


AUTO_CREATE_QUEUES = 8
"""Queues a producer assumes for a topic the broker will auto-create (the broker's default)."""


@dataclass(slots=True)
class _Cached:
    route: TopicRoute
    fetch_number: int
    """Which fetch produced it: fetches are numbered as they start."""
    provisional: bool = False
    """Built from the cluster's groups for a topic no NameServer knows yet."""


class RouteTable:
    def __init__(
        self,
        pool: ConnectionPool,
        namesrv: Sequence[str],
        *,
        refresh_interval_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
        request_timeout_s: float = 3.0,
    ) -> None:
        if isinstance(namesrv, str):
            namesrv = [a.strip() for a in namesrv.split(";") if a.strip()]
        if not namesrv:
            raise ValueError("at least one NameServer address is needed")
        assert refresh_interval_ms > 0
        self.namesrv = list(namesrv)
        self.refresh_interval_ms = refresh_interval_ms
        self.request_timeout_s = request_timeout_s
        self._pool = pool
        self._current = 0
        self._routes: OrderedDict[str, _Cached] = OrderedDict()
        self._fetch_locks: dict[str, anyio.Lock] = {}
        self._fetches_started = 0
        self._pending: set[str] = set()
        self._wake = anyio.Event()
        self._hints: dict[str, tuple[str, float]] = {}

    # --- routes ----------------------------------------------------------------------

    async def get(self, topic: str) -> TopicRoute:
        """The topic's route: cached, else fetched now (NoRouteError if none)."""
        cached = self._routes.get(topic)
        if cached is not None:
            self._routes.move_to_end(topic)
            return cached.route
        return await self.refresh(topic)

    async def get_for_send(self, topic: str, queues: int = AUTO_CREATE_QUEUES) -> TopicRoute:
        """A producer's route: as `get`, but a topic no NameServer knows yet goes to every
        group that has a leader, with `queues` queues — RocketMQ's auto-create: the broker
        creates the topic on the first send and registers it, and the next refresh
        replaces this provisional route with the real one."""
        try:
            return await self.get(topic)
        except NoRouteError:
            route = await self._provisional(topic, queues)
            if route is None:
                raise
            return route

    async def refresh_for_send(self, topic: str, queues: int = AUTO_CREATE_QUEUES) -> None:
        """`refresh`, except that a provisional route (a topic no NameServer knew) is
        rebuilt from the cluster's groups, whose leaders may have changed, while the
        NameServers still do not know the topic. A failure keeps the old route."""
        try:
            await self.refresh(topic)
        except NoRouteError as exc:
            cached = self._routes.get(topic)
            try:
                if (cached is None or cached.provisional) and await self._provisional(
                    topic, queues
                ) is not None:
                    return
            except NoRouteError:
                pass
            _log.info("route_refresh_failed", topic=topic, error=str(exc))

    async def _provisional(self, topic: str, queues: int) -> TopicRoute | None:
        """A route to every group that has a leader (None: none has), stored."""
        info = await self.cluster_info()
        groups = tuple(
            GroupRoute(group, TopicConfig(queues, queues))
            for group in info.groups
            if group.leader_address
        )
        if not groups:
            return None
        route = TopicRoute(topic, groups)
        self._store(topic, route, self._fetches_started, provisional=True)
        return route

    def cached(self, topic: str) -> TopicRoute | None:
        cached = self._routes.get(topic)
        return cached.route if cached else None

    async def refresh(self, topic: str) -> TopicRoute:
        """Fetch the topic's route now. Callers that arrive while a fetch is running
        wait for it and then share the next one (the running one may predate what
        made them ask)."""
        asked_after = self._fetches_started
        lock = self._fetch_locks.setdefault(topic, anyio.Lock())
        async with lock:
            cached = self._routes.get(topic)
            if cached is not None and cached.fetch_number > asked_after:
                return cached.route  # a fetch that started after we asked
            self._fetches_started += 1
            number = self._fetches_started
            route = await self._fetch_route(topic)
            self._store(topic, route, number)
        return route

    def request_refresh(self, topic: str) -> None:
        """Ask the background loop to refresh `topic` soon; returns at once."""
        self._pending.add(topic)
        self._wake.set()

    def forget(self, topic: str) -> None:
        self._routes.pop(topic, None)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Refresh every cached route every interval, and requested ones at once."""
        task_status.started()
        next_all_s = anyio.current_time() + self.refresh_interval_ms / 1000
        while True:
            with anyio.move_on_after(max(0.0, next_all_s - anyio.current_time())):
                await self._wake.wait()
            self._wake = anyio.Event()
            if anyio.current_time() >= next_all_s:
                topics = set(self._routes) | self._pending
                next_all_s = anyio.current_time() + self.refresh_interval_ms / 1000
            else:
                topics = set(self._pending)
            self._pending.clear()
            for topic in sorted(topics):
                try:
                    await self.refresh(topic)
                except MQClientError as exc:
                    _log.info("route_refresh_failed", topic=topic, error=str(exc))

    # --- leaders ---------------------------------------------------------------------

    def leader_of(self, group: GroupInfo) -> str | None:
        hint = self._hints.get(group.group)
        if hint is not None:
            address, set_at_s = hint
            if anyio.current_time() - set_at_s < self.refresh_interval_ms / 1000:
                return address
            del self._hints[group.group]
        return group.leader_address

    def note_leader(self, group: str, address: str | None) -> None:
        """A node said `address` leads `group` (None: it knows no leader)."""
        if address is None:
            self._hints.pop(group, None)
        else:
            self._hints[group] = (address, anyio.current_time())

    def note_write_queues(self, topic: str, group: str, write_queues: int) -> None:
        """`group` said `topic` has `write_queues` queues there: a provisional (auto-create)
        or stale route had more. Correct the cached route until the next fetch."""
        cached = self._routes.get(topic)
        if cached is None:
            return
        groups = tuple(
            replace(g, topic=replace(g.topic, write_queues=write_queues))
            if g.group == group and g.topic.write_queues > write_queues
            else g
            for g in cached.route.groups
        )
        self._store(
            topic, replace(cached.route, groups=groups), cached.fetch_number, cached.provisional
        )

    def forget_leader(self, group: str, address: str) -> None:
        """`address` failed as `group`'s leader: stop preferring it over the route."""
        hint = self._hints.get(group)
        if hint is not None and hint[0] == address:
            del self._hints[group]

    # --- NameServer requests ---------------------------------------------------------

    async def cluster_info(self) -> ClusterInfo:
        response = await self._ask_any(request(RequestCode.GET_CLUSTER_INFO), "cluster info")
        try:
            return ClusterInfo.from_fields(response.fields)
        except FieldError as exc:
            raise NoRouteError(f"malformed cluster info from a NameServer: {exc}") from exc

    async def _fetch_route(self, topic: str) -> TopicRoute:
        response = await self._ask_any(
            request(RequestCode.GET_ROUTE, {"topic": topic}),
            f"the route of topic {topic!r}",
            keep_asking_on=ErrorCode.TOPIC_NOT_EXIST,
        )
        try:
            return TopicRoute.from_fields(response.fields)
        except FieldError as exc:
            raise NoRouteError(f"malformed route of topic {topic!r}: {exc}") from exc

    async def _ask_any(
        self, frame: Frame, what: str, *, keep_asking_on: int | None = None
    ) -> Frame:
        """Ask the NameServers in turn, from the last good one, until one answers.
        An answer with error `keep_asking_on` also moves on to the next one."""
        failures: list[str] = []
        last_error: Exception | None = None
        count = len(self.namesrv)
        for i in range(count):
            index = (self._current + i) % count
            address = self.namesrv[index]
            try:
                response = await self._pool.request(
                    address, frame, timeout_s=self.request_timeout_s
                )
            except (MQConnectionError, MQTimeoutError) as exc:
                failures.append(f"{address}: {exc}")
                last_error = exc
                continue
            if response.ok:
                self._current = index
                return response
            failures.append(f"{address}: {error_name(response.error)} {response.remark}".strip())
            if response.error != keep_asking_on:
                break
        raise NoRouteError(f"no NameServer gave {what}: " + "; ".join(failures)) from last_error

    def _store(self, topic: str, route: TopicRoute, number: int, provisional: bool = False) -> None:
        self._routes[topic] = _Cached(route, number, provisional)
        self._routes.move_to_end(topic)
        while len(self._routes) > TOPICS_MAX:
            self._routes.popitem(last=False)
        for group in route.groups:
            hint = self._hints.get(group.group)
            if hint is not None and group.leader_address == hint[0]:
                del self._hints[group.group]  # confirmed: the route says the same now
