"""The NameServer process: `NameServerCore` behind a trio TCP server, plus its expiry loop.

Thin on purpose: decoding, dispatch and error handling live in `mq.rpc.server`, the logic
in the core. This driver only supplies the clock (trio's, so tests run it on a MockClock)
and turns the core's events into log lines.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import structlog
import trio

from mq.nameserver.core import (
    BrokerExpired,
    BrokerRegistered,
    BrokerUnregistered,
    Event,
    LeaderChanged,
    NameServerCore,
)
from mq.protocol import Frame
from mq.route import BROKER_EXPIRE_MS_DEFAULT
from mq.rpc.address import format_address
from mq.rpc.server import Peer, listener_port, serve_tcp

PORT_DEFAULT = 9876
SCAN_INTERVAL_MS_DEFAULT = 10_000
"""How often silent brokers are looked for; a dead node lingers at most expire_ms plus
this long in routes."""

_log = structlog.get_logger("mq.nameserver")


class NameServer:
    """One NameServer. Independent of every other: run several side by side and point
    brokers at all of them."""

    def __init__(
        self,
        *,
        expire_ms: int = BROKER_EXPIRE_MS_DEFAULT,
        scan_interval_ms: int = SCAN_INTERVAL_MS_DEFAULT,
    ) -> None:
        assert scan_interval_ms > 0
        self.core = NameServerCore(expire_ms=expire_ms)
        self.scan_interval_ms = scan_interval_ms
        self.host = ""
        self.port = 0

    @property
    def address(self) -> str:
        """host:port the server listens on (valid once `serve` has started)."""
        return format_address(self.host, self.port)

    def now_ms(self) -> int:
        """trio's monotonic clock: immune to wall-clock jumps, virtual under MockClock."""
        return int(trio.current_time() * 1000)

    async def handle(self, request: Frame, peer: Peer) -> Frame:
        response = self.core.handle(request, self.now_ms())
        self._log_events(peer=peer.address)
        return response

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = PORT_DEFAULT,
        *,
        task_status: trio.TaskStatus[NameServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; `task_status.started(self)` once listening."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, self.handle, host, port))
            self.host, self.port = host, listener_port(listeners)
            nursery.start_soon(self._expire_loop)
            _log.info(
                "nameserver_listening",
                address=self.address,
                port=self.port,
                expire_ms=self.core.expire_ms,
                scan_interval_ms=self.scan_interval_ms,
            )
            task_status.started(self)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(self.scan_interval_ms / 1000)
            self.core.expire(self.now_ms())
            self._log_events()

    def _log_events(self, **context: Any) -> None:
        for event in self.core.take_events():
            _log_event(event, **context)


def _log_event(event: Event, **context: Any) -> None:
    match event:
        case BrokerRegistered():
            _log.info(
                "broker_registered",
                cluster=event.cluster,
                group=event.group,
                node_id=event.node_id,
                address=event.address,
                role=event.role.value,
                term=event.term,
                **context,
            )
        case LeaderChanged():
            _log.info(
                "leader_changed",
                group=event.group,
                old=event.old_address,
                new=event.new_address,
                term=event.term,
                **context,
            )
        case BrokerExpired():
            _log.warning(
                "broker_expired",
                group=event.group,
                node_id=event.node_id,
                address=event.address,
                silent_ms=event.silent_ms,
            )
        case BrokerUnregistered():
            _log.info(
                "broker_unregistered",
                group=event.group,
                node_id=event.node_id,
                address=event.address,
                **context,
            )


async def run_nameserver(
    host: str = "127.0.0.1",
    port: int = PORT_DEFAULT,
    *,
    expire_ms: int = BROKER_EXPIRE_MS_DEFAULT,
    scan_interval_ms: int = SCAN_INTERVAL_MS_DEFAULT,
    task_status: trio.TaskStatus[NameServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one NameServer until cancelled. With `nursery.start(run_nameserver, ...)` the
    caller gets the running `NameServer` (its `port` is the bound one when port is 0)."""
    server = NameServer(expire_ms=expire_ms, scan_interval_ms=scan_interval_ms)
    await server.serve(host, port, task_status=task_status)
