"""Connections to brokers and NameServers, one per address, shared by every request.

A `Connection` multiplexes requests, so one per address is all a client needs. The pool
opens it on first use (concurrent first users wait for the one connect), runs its reader
in the owner's task group, and forgets it once it has failed: the next request opens a
fresh one. Transport failures come out as the client's own `MQConnectionError` /
`MQTimeoutError`; error answers are returned as frames for the caller to interpret.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import anyio
import anyio.abc

from mq.client.errors import ClientClosedError, MQConnectionError, MQTimeoutError
from mq.protocol import FRAME_BYTES_MAX, Frame
from mq.rpc.address import parse_address
from mq.rpc.client import Connection, RequestHandler
from mq.rpc.errors import ConnectError, ConnectionClosedError, RequestTimeoutError

CONNECTIONS_MAX_DEFAULT = 256
"""Open connections one pool keeps; past this the least recently used is closed."""


class ConnectionPool:
    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        *,
        connect_timeout_s: float = 3.0,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        on_request: RequestHandler | None = None,
    ) -> None:
        """`on_request` answers what servers send us unasked on any of the pool's
        connections (NOTIFY_CONSUMER_IDS_CHANGED to a push consumer); without it such
        requests are refused as not supported."""
        assert connections_max > 0
        self._task_group = task_group
        self.connect_timeout_s = connect_timeout_s
        self.connections_max = connections_max
        self.frame_bytes_max = frame_bytes_max
        self._on_request = on_request
        self._connections: OrderedDict[str, Connection] = OrderedDict()
        self._connecting: dict[str, anyio.Lock] = {}
        self._closed = False

    async def get(self, address: str) -> Connection:
        """The open connection to `address`, connecting if needed (MQConnectionError)."""
        conn = self._live(address)
        if conn is not None:
            return conn
        lock = self._connecting.setdefault(address, anyio.Lock())
        async with lock:
            conn = self._live(address)
            if conn is None:
                conn = await self._connect(address)
        return conn

    async def request(
        self,
        address: str,
        frame: Frame,
        *,
        timeout_s: float,
        on_queued: Callable[[], None] | None = None,
    ) -> Frame:
        """Send `frame` to `address` and return the response, error answers included.
        Raises MQConnectionError or MQTimeoutError; on either the connection is dropped
        from the pool only if it is broken (a timeout leaves it usable). `on_queued` is
        called once the request's place in the write order is fixed (see
        `Connection.request`)."""
        conn = await self.get(address)
        try:
            return await conn.request(frame, timeout=timeout_s, check=False, on_queued=on_queued)
        except RequestTimeoutError as exc:
            raise MQTimeoutError(str(exc)) from exc
        except ConnectionClosedError as exc:
            self._forget(address, conn)
            raise MQConnectionError(str(exc)) from exc

    async def send_oneway(self, address: str, frame: Frame) -> None:
        conn = await self.get(address)
        try:
            await conn.send_oneway(frame)
        except ConnectionClosedError as exc:
            self._forget(address, conn)
            raise MQConnectionError(str(exc)) from exc

    async def close_address(self, address: str) -> None:
        conn = self._connections.pop(address, None)
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        for conn in connections:
            await conn.aclose()

    @property
    def addresses(self) -> list[str]:
        return [a for a, c in self._connections.items() if not c.closed]

    # --- internals -------------------------------------------------------------------

    def _live(self, address: str) -> Connection | None:
        if self._closed:
            raise ClientClosedError("the client is closed")
        conn = self._connections.get(address)
        if conn is None:
            return None
        if conn.closed:
            del self._connections[address]
            return None
        self._connections.move_to_end(address)
        return conn

    def _forget(self, address: str, conn: Connection) -> None:
        if self._connections.get(address) is conn:
            del self._connections[address]

    async def _connect(self, address: str) -> Connection:
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise MQConnectionError(str(exc)) from None
        try:
            with anyio.fail_after(self.connect_timeout_s):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            raise MQConnectionError(
                f"connect to {address} timed out after {self.connect_timeout_s}s"
            ) from None
        except OSError as exc:
            raise MQConnectionError(f"connect to {address} failed: {exc}") from ConnectError(
                str(exc)
            )
        conn = Connection(
            stream,
            address=address,
            frame_bytes_max=self.frame_bytes_max,
            on_request=self._on_request,
        )
        await self._task_group.start(conn.run)
        while len(self._connections) >= self.connections_max:
            _, oldest = self._connections.popitem(last=False)
            await oldest.aclose()
        self._connections[address] = conn
        return conn
