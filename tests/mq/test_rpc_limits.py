"""serve_tcp's limits: connections over the limit are told so, a server's own peers still
get in, and running short of file descriptors counts as being over the limit."""

from __future__ import annotations

import resource
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import trio

from mq.protocol import ErrorCode, Frame, FrameDecoder, RequestCode, encode_frame
from mq.rpc import server as rpc_server
from mq.rpc.server import Peer, listener_port, serve_tcp


async def echo(request: Frame, peer: Peer) -> Frame:
    return request.make_response(request.fields)


def ping(request_id: int, **fields: object) -> Frame:
    return Frame(code=RequestCode.PING, request_id=request_id, fields=fields)


class Conn:
    """A raw TCP client speaking frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def ask(self, frame: Frame) -> Frame | None:
        """Send `frame`; the next frame back, or None if the server closed first."""
        await self.stream.send_all(encode_frame(frame))
        return await self.receive()

    async def receive(self) -> Frame | None:
        while (frame := self.decoder.next_frame()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.decoder.receive_data(data)
        return frame


async def start(nursery: trio.Nursery, **options: Any) -> int:
    listeners = await nursery.start(partial(serve_tcp, echo, "127.0.0.1", 0, **options))
    return listener_port(listeners)


async def connect(port: int) -> Conn:
    return Conn(await trio.open_tcp_stream("127.0.0.1", port))


def is_peer(frame: Frame) -> bool:
    return bool(frame.fields.get("peer"))


async def test_a_connection_over_the_limit_is_answered_system_busy_then_closed() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, connections_max=2)
        first, second = await connect(port), await connect(port)
        for conn in (first, second):
            answer = await conn.ask(ping(1))
            assert answer is not None and answer.error == ErrorCode.SUCCESS
        third = await connect(port)
        answer = await third.ask(ping(7))
        assert answer is not None and answer.request_id == 7
        assert answer.error == ErrorCode.SYSTEM_BUSY
        assert "too many connections" in answer.remark and "limit is 2" in answer.remark
        assert await third.receive() is None  # then closed
        # The first two are served as before; once one leaves, a newcomer gets in.
        answer = await second.ask(ping(2))
        assert answer is not None and answer.error == ErrorCode.SUCCESS
        await first.stream.aclose()
        with trio.fail_after(10):
            while True:
                late = await connect(port)
                answer = await late.ask(ping(3))
                assert answer is not None
                if answer.error == ErrorCode.SUCCESS:
                    break
                await trio.sleep(0.01)  # the server has not seen the close yet
        nursery.cancel_scope.cancel()


async def test_a_connection_over_the_limit_is_admitted_by_its_first_frame() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, connections_max=1, admit_over_limit=is_peer)
        client = await connect(port)
        assert (await client.ask(ping(1))) is not None
        peer = await connect(port)
        # Admitted: that frame and every later one are served as usual.
        answer = await peer.ask(ping(5, peer=True))
        assert answer is not None and answer.error == ErrorCode.SUCCESS
        assert answer.fields == {"peer": True}
        answer = await peer.ask(ping(6))
        assert answer is not None and answer.error == ErrorCode.SUCCESS
        other = await connect(port)
        answer = await other.ask(ping(8))
        assert answer is not None and answer.error == ErrorCode.SYSTEM_BUSY
        nursery.cancel_scope.cancel()


async def test_a_newcomer_over_the_limit_closes_the_connection_read_the_longest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Silent connections cannot keep a peer out: each newcomer takes the place of the
    one that was read for its first frame the longest."""
    monkeypatch.setattr(rpc_server, "PROBATION_MAX", 2)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, connections_max=1, admit_over_limit=is_peer)
        held = await connect(port)
        assert (await held.ask(ping(1))) is not None
        silent = [await connect(port) for _ in range(5)]
        with trio.fail_after(2):  # well before PROBATION_S: they were pushed out
            for conn in silent[:3]:
                assert await conn.receive() is None
        peer = await connect(port)
        answer = await peer.ask(ping(5, peer=True))
        assert answer is not None and answer.error == ErrorCode.SUCCESS
        with trio.fail_after(2):
            assert await silent[3].receive() is None
        nursery.cancel_scope.cancel()


async def test_refused_connections_are_logged_with_a_count_not_one_line_each() -> None:
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            port = await start(nursery, connections_max=1)
            held = await connect(port)
            assert (await held.ask(ping(1))) is not None
            for i in range(5):
                conn = await connect(port)
                answer = await conn.ask(ping(10 + i))
                assert answer is not None and answer.error == ErrorCode.SYSTEM_BUSY
            nursery.cancel_scope.cancel()
    refused = [entry for entry in logs if entry["event"] == "connections_refused"]
    assert len(refused) == 1 and refused[0]["count"] == 1


@pytest.mark.parametrize(
    ("fd", "soft", "over"),
    [
        (40, 1024, False),
        (895, 1024, False),  # 129 left, the reserve is 1024 // 8 = 128
        (896, 1024, True),
        (191, 256, False),  # the reserve is at least 64
        (192, 256, True),
    ],
)
def test_a_connection_that_would_leave_too_few_file_descriptors_is_over_the_limit(
    monkeypatch: pytest.MonkeyPatch, fd: int, soft: int, over: bool
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))
    stream = SimpleNamespace(socket=SimpleNamespace(fileno=lambda: fd))
    why = rpc_server._Limits(1000).over(stream)  # type: ignore[arg-type]
    assert (why is not None) == over
    if over:
        assert why is not None and f"of {soft} (ulimit -n)" in why


def test_a_server_raises_its_soft_open_files_limit_to_the_hard_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {resource.RLIMIT_NOFILE: (1024, 524288)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: limits.update({which: value}))
    assert rpc_server.raise_open_files_limit() == (524288, 524288)
    assert limits[resource.RLIMIT_NOFILE] == (524288, 524288)
    with structlog.testing.capture_logs() as logs:
        limits[resource.RLIMIT_NOFILE] = (256, 256)  # nothing to raise: said at start
        assert rpc_server.raise_open_files_limit() == (256, 256)
    assert [entry["event"] for entry in logs] == ["open_files_limit_low"]
