"""serve_connection over in-memory streams: dispatch, bounds, and failure containment."""

from __future__ import annotations

import datetime
import struct
from functools import partial

import cbor2
import trio
import trio.testing

from mq.protocol import (
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    RequestCode,
    encode_frame,
)
from mq.rpc.server import Peer, serve_connection


class RawClient:
    """The client end of a memory stream, speaking raw frames."""

    def __init__(self, stream: trio.testing.StapledStream) -> None:  # type: ignore[type-arg]
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    async def send(self, *frames: Frame) -> None:
        await self.stream.send_all(b"".join(encode_frame(f) for f in frames))

    async def receive(self) -> Frame | None:
        """The next frame, or None at EOF."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.receive_data(data)


def ping(request_id: int, **fields: object) -> Frame:
    return Frame(code=RequestCode.PING, request_id=request_id, fields=fields)


async def echo(request: Frame, peer: Peer) -> Frame:
    return request.make_response(request.fields, request.body)


async def test_requests_are_answered_concurrently_and_out_of_order() -> None:
    second_done = trio.Event()

    async def handler(request: Frame, peer: Peer) -> Frame:
        if request.fields.get("wait"):
            await second_done.wait()
        else:
            second_done.set()
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, handler)
        await client.send(ping(1, wait=True), ping(2))
        first, second = await client.receive(), await client.receive()
        assert first is not None and second is not None
        assert [first.request_id, second.request_id] == [2, 1]
        assert first.is_response and second.is_response
        nursery.cancel_scope.cancel()


async def test_in_flight_requests_are_bounded_by_not_reading() -> None:
    release = trio.Event()
    running = 0
    running_max = 0

    async def handler(request: Frame, peer: Peer) -> Frame:
        nonlocal running, running_max
        running += 1
        running_max = max(running_max, running)
        await release.wait()
        running -= 1
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, handler, in_flight_max=2))
        await client.send(*(ping(i) for i in range(1, 6)))
        await trio.testing.wait_all_tasks_blocked()
        assert running == 2
        release.set()
        answered = {(await client.receive()).request_id for _ in range(5)}  # type: ignore[union-attr]
        assert answered == {1, 2, 3, 4, 5}
        assert running_max == 2
        nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_read_its_answers_stops_being_read() -> None:
    """Big answers the client does not take hold our memory: past `unsent_bytes_max` of
    them, no more requests are read (however many it may have in flight), and once it
    reads again every request is answered."""
    handled = 0

    async def big(request: Frame, peer: Peer) -> Frame:
        nonlocal handled
        handled += 1
        return request.make_response({}, bytes(1 << 20))

    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client = RawClient(client_stream)
    serve = partial(
        serve_connection, server_stream, big, in_flight_max=1000, unsent_bytes_max=4 << 20
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(client.send, *(ping(i) for i in range(1, 101)))
        await trio.testing.wait_all_tasks_blocked()
        assert 5 <= handled <= 8, handled  # 4 MiB unsent, plus what overshoots by a step
        answered = {(await client.receive()).request_id for _ in range(100)}  # type: ignore[union-attr]
        assert answered == set(range(1, 101)) and handled == 100
        nursery.cancel_scope.cancel()


async def test_oneway_requests_get_no_response() -> None:
    seen: list[int] = []

    async def handler(request: Frame, peer: Peer) -> Frame:
        seen.append(request.request_id)
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, handler)
        await client.send(Frame(code=RequestCode.HEARTBEAT, request_id=1, flags=Flag.ONEWAY))
        await client.send(ping(2))
        response = await client.receive()
        assert response is not None and response.request_id == 2
        assert sorted(seen) == [1, 2]
        nursery.cancel_scope.cancel()


async def test_handler_exception_becomes_system_error_and_connection_survives() -> None:
    async def handler(request: Frame, peer: Peer) -> Frame:
        if request.fields.get("boom"):
            raise RuntimeError("handler bug")
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, handler)
        await client.send(ping(1, boom=True))
        error = await client.receive()
        assert error is not None
        assert (error.request_id, error.error) == (1, ErrorCode.SYSTEM_ERROR)
        assert "handler bug" in error.remark
        await client.send(ping(2))
        ok = await client.receive()
        assert ok is not None and ok.ok and ok.request_id == 2
        nursery.cancel_scope.cancel()


async def test_response_that_cannot_be_encoded_becomes_an_error() -> None:
    async def handler(request: Frame, peer: Peer) -> Frame:
        if request.fields.get("big"):
            return request.make_response(body=b"x" * 2000)
        return request.make_response({"when": datetime.datetime.now(datetime.UTC)})

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, handler, frame_bytes_max=1000))
        await client.send(ping(1))
        error = await client.receive()
        assert error is not None and error.error == ErrorCode.SYSTEM_ERROR
        await client.send(ping(2, big=True))
        error = await client.receive()
        assert error is not None and (error.request_id, error.error) == (
            2,
            ErrorCode.FRAME_TOO_LARGE,
        )
        nursery.cancel_scope.cancel()


async def test_malformed_frame_is_answered_then_the_connection_closed() -> None:
    header = cbor2.dumps({0: RequestCode.GET_ROUTE, 1: 7, 3: ["fields must be a map"]})
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, echo)
        await client.send(ping(1))
        assert (await client.receive()) == ping(1).make_response()
        await client.stream.send_all(struct.pack(">II", 4 + len(header), len(header)) + header)
        error = await client.receive()
        assert error is not None
        assert (error.code, error.request_id, error.error) == (
            RequestCode.GET_ROUTE,
            7,
            ErrorCode.MALFORMED_FRAME,
        )
        assert "fields" in error.remark
        assert await client.receive() is None


async def test_oversized_request_is_answered_frame_too_large_then_closed() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, echo, frame_bytes_max=1000))
        await client.stream.send_all(
            encode_frame(
                Frame(code=RequestCode.SEND_MESSAGE, request_id=9, body=b"x" * 5000),
                frame_bytes_max=10_000,
            )
        )
        error = await client.receive()
        assert error is not None
        assert (error.code, error.request_id, error.error) == (
            RequestCode.SEND_MESSAGE,
            9,
            ErrorCode.FRAME_TOO_LARGE,
        )
        assert await client.receive() is None


async def test_garbage_closes_the_connection_without_an_answer() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, echo)
        await client.stream.send_all(b"\x00\x00\x00\x05\x00\x00\x00\x09garbage")
        assert await client.receive() is None


async def test_requests_read_before_eof_are_still_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Frame, peer: Peer) -> Frame:
        await trio.sleep(1)
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, slow)
        await client.send(ping(1))
        await client_stream.send_stream.aclose()
        response = await client.receive()
        assert response is not None and response.request_id == 1
        assert await client.receive() is None


async def test_handler_can_push_oneway_frames_to_its_peer() -> None:
    async def handler(request: Frame, peer: Peer) -> Frame:
        await peer.send_oneway(
            Frame(code=RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, fields={"group": "g"})
        )
        return request.make_response()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, handler)
        await client.send(ping(1))
        notification, response = await client.receive(), await client.receive()
        assert notification is not None and response is not None
        assert notification.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
        assert notification.is_oneway and not notification.is_response
        assert response.request_id == 1
        nursery.cancel_scope.cancel()


async def test_large_bodies_are_written_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, above the inline threshold
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, echo)
        await client.send(Frame(code=RequestCode.PING, request_id=1, body=body), ping(2))
        responses = {}
        for _ in range(2):
            frame = await client.receive()
            assert frame is not None
            responses[frame.request_id] = frame.body
        assert responses == {1: body, 2: b""}
        nursery.cancel_scope.cancel()


async def test_inline_handler_takes_oneway_frames_in_order_and_leaves_the_rest() -> None:
    inline_seen: list[int] = []
    handled: list[int] = []

    def inline(request: Frame, peer: Peer) -> bool:
        if request.fields.get("boom"):
            raise RuntimeError("inline bug")
        if request.code != RequestCode.HEARTBEAT:
            return False
        inline_seen.append(request.request_id)
        return True

    async def handler(request: Frame, peer: Peer) -> Frame:
        handled.append(request.request_id)
        return request.make_response()

    def beat(request_id: int, **fields: object) -> Frame:
        return Frame(RequestCode.HEARTBEAT, request_id, flags=Flag.ONEWAY, fields=fields)

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_connection, server_stream, handler, inline=inline))
        # Many one-way frames in one read, a failing one among them, then requests: the
        # inline ones are taken in order, the failure costs only itself, and a request
        # (even of the inline code) or another one-way code reaches the handler.
        await client.send(
            *(beat(i) for i in range(1, 40)),
            beat(40, boom=True),
            Frame(RequestCode.PING, 41, flags=Flag.ONEWAY),
            Frame(RequestCode.HEARTBEAT, 42),
            ping(43),
        )
        answers = {(await client.receive()).request_id for _ in range(2)}  # type: ignore[union-attr]
        assert answers == {42, 43}
        assert inline_seen == list(range(1, 40))
        assert sorted(handled) == [41, 42, 43]
        nursery.cancel_scope.cancel()
