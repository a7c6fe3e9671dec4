"""What every client object owns: a task group, a connection pool and a route table.

`Producer`, `PullConsumer` and `Admin` each hold one `ClientInstance` and enter it in
their own `async with`. The task group runs the connection readers and the route
refresh loop; closing cancels them and closes every connection, so nothing the client
started outlives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.abc

from mq.client.errors import ClientClosedError
from mq.client.pool import ConnectionPool
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT, RouteTable
from mq.protocol import FRAME_BYTES_MAX
from mq.rpc.client import RequestHandler

REQUEST_TIMEOUT_MS_DEFAULT = 3_000
CONNECT_TIMEOUT_MS_DEFAULT = 3_000


class ClientInstance:
    def __init__(
        self,
        namesrv: Sequence[str] | str,
        *,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS_DEFAULT,
        route_refresh_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        on_request: RequestHandler | None = None,
    ) -> None:
        if isinstance(namesrv, str):
            namesrv = [a.strip() for a in namesrv.split(";") if a.strip()]
        if not namesrv:
            raise ValueError("at least one NameServer address is needed")
        if request_timeout_ms <= 0 or connect_timeout_ms <= 0 or route_refresh_ms <= 0:
            raise ValueError("timeouts and intervals must be positive")
        self.namesrv = list(namesrv)
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.route_refresh_ms = route_refresh_ms
        self.frame_bytes_max = frame_bytes_max
        self.on_request = on_request
        """Serves requests brokers push to us (see `ConnectionPool`)."""
        self._task_group: anyio.abc.TaskGroup | None = None
        self._pool: ConnectionPool | None = None
        self._routes: RouteTable | None = None
        self._closed = False

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise ClientClosedError("not started: use `async with`")
        return self._pool

    @property
    def routes(self) -> RouteTable:
        if self._routes is None:
            raise ClientClosedError("not started: use `async with`")
        return self._routes

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000

    async def start(self) -> None:
        if self._task_group is not None or self._closed:
            raise ClientClosedError("a client can be started once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._pool = ConnectionPool(
            task_group,
            connect_timeout_s=self.connect_timeout_ms / 1000,
            frame_bytes_max=self.frame_bytes_max,
            on_request=self.on_request,
        )
        self._routes = RouteTable(
            self._pool,
            self.namesrv,
            refresh_interval_ms=self.route_refresh_ms,
            request_timeout_s=self.request_timeout_s,
        )
        await task_group.start(self._routes.run)

    async def aclose(self) -> None:
        """Cancel the background tasks and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task_group = self._task_group
        if task_group is None:
            return
        try:
            if self._pool is not None:
                await self._pool.aclose()
        finally:
            task_group.cancel_scope.cancel()
            # Exited without the caller's exception: that one propagates on its own,
            # unwrapped, instead of inside an ExceptionGroup from the task group.
            await task_group.__aexit__(None, None, None)
