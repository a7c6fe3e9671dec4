"""The anyio client Connection against a real loopback server, under trio and asyncio."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import pytest
import trio
import trio.testing

from mq.protocol import ErrorCode, Frame, ProtocolError, RequestCode, request
from mq.rpc.address import format_address, parse_address
from mq.rpc.client import Connection, connect
from mq.rpc.errors import ConnectError, ConnectionClosedError, RemoteError, RequestTimeoutError
from mq.rpc.server import Peer, listener_port, serve_tcp

ECHO = RequestCode.PING
FAIL = 1001
NOTIFY = 1002
HANG = 1003


async def handler(req: Frame, peer: Peer) -> Frame | None:
    if req.code == FAIL:
        return req.make_error(ErrorCode.TOPIC_NOT_EXIST, "no such topic")
    if req.code == NOTIFY:
        await peer.send_oneway(request(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, {"group": "g"}))
        return req.make_response()
    if req.code == HANG:
        await trio.sleep_forever()
    return req.make_response(req.fields, req.body)


async def start_server(nursery: trio.Nursery, **options: int) -> str:
    listeners = await nursery.start(
        lambda task_status: serve_tcp(handler, "127.0.0.1", 0, task_status=task_status, **options)
    )
    return f"127.0.0.1:{listener_port(listeners)}"


# --- the scenarios, written once against anyio --------------------------------------


async def round_trip_and_multiplexing(address: str) -> None:
    async with connect(address) as conn:
        response = await conn.request(request(ECHO, {"n": 1}, b"body"))
        assert (response.fields, response.body) == ({"n": 1}, b"body")
        results: dict[int, Frame] = {}

        async def one(i: int) -> None:
            results[i] = await conn.request(request(ECHO, {"i": i}, bytes([i % 256]) * i))

        async with anyio.create_task_group() as task_group:
            for i in range(100):
                task_group.start_soon(one, i)
        assert all(results[i].fields == {"i": i} and len(results[i].body) == i for i in range(100))
        big = bytes(range(256)) * 4096
        assert (await conn.request(request(ECHO, body=big))).body == big


async def remote_errors(address: str) -> None:
    async with connect(address) as conn:
        with pytest.raises(RemoteError) as caught:
            await conn.request(request(FAIL))
        assert caught.value.code == ErrorCode.TOPIC_NOT_EXIST
        assert caught.value.remark == "no such topic"
        frame = await conn.request(request(FAIL), check=False)
        assert frame.error == ErrorCode.TOPIC_NOT_EXIST
        # The connection is still good after an error response.
        assert (await conn.request(request(ECHO))).ok


async def oneway_both_ways(address: str) -> None:
    notified = anyio.Event()
    received: list[Frame] = []

    async def on_request(frame: Frame) -> None:
        received.append(frame)
        notified.set()

    async with connect(address, on_request=on_request) as conn:
        await conn.send_oneway(request(ECHO, {"x": 1}))
        await conn.request(request(NOTIFY))
        await notified.wait()
        assert received[0].code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
        assert received[0].fields == {"group": "g"}


async def too_large_is_refused_locally(address: str) -> None:
    async with connect(address, frame_bytes_max=1000) as conn:
        with pytest.raises(ProtocolError):
            await conn.request(request(ECHO, body=b"x" * 2000))
        assert (await conn.request(request(ECHO))).ok


SCENARIOS = [
    round_trip_and_multiplexing,
    remote_errors,
    oneway_both_ways,
    too_large_is_refused_locally,
]


# --- under trio, server in the same run -----------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_client_under_trio(scenario) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery)
        await scenario(address)
        nursery.cancel_scope.cancel()


# --- under asyncio, server in a trio thread -------------------------------------------


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[str]:
    """A trio server on its own thread, so an asyncio event loop can be the client."""
    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            state["address"] = await start_server(nursery)
            state["token"] = trio.lowlevel.current_trio_token()
            state["scope"] = nursery.cancel_scope
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(timeout=30)
    yield str(state["address"])
    scope = state["scope"]
    assert isinstance(scope, trio.CancelScope)
    trio.from_thread.run_sync(scope.cancel, trio_token=state["token"])  # type: ignore[arg-type]
    thread.join(timeout=30)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_client_under_asyncio(threaded_server: str, scenario) -> None:  # type: ignore[no-untyped-def]
    anyio.run(scenario, threaded_server, backend="asyncio")


def test_connection_closed_by_server_under_asyncio() -> None:
    """A server that accepts and hangs up: pending and later requests fail cleanly."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    async def scenario() -> None:
        async with connect(address) as conn:
            accepted, _ = listener.accept()  # the connection is queued: no wait
            accepted.close()
            with pytest.raises(ConnectionClosedError):
                await conn.request(request(ECHO))
            assert conn.closed
            with pytest.raises(ConnectionClosedError):
                await conn.send_oneway(request(ECHO))

    try:
        anyio.run(scenario, backend="asyncio")
    finally:
        listener.close()


# --- trio-only: behaviour that depends on time or on the server going away -----------


async def test_request_times_out_and_connection_stays_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery)
        async with connect(address) as conn:
            with pytest.raises(RequestTimeoutError):
                await conn.request(request(HANG), timeout=5)
            assert trio.current_time() >= 5
            assert not conn.closed
            assert (await conn.request(request(ECHO))).ok
        nursery.cancel_scope.cancel()


async def test_server_going_away_fails_pending_requests() -> None:
    async with trio.open_nursery() as outer, trio.open_nursery() as server_nursery:
        address = await start_server(server_nursery)
        async with connect(address) as conn:
            failed = trio.Event()

            async def pending() -> None:
                with pytest.raises(ConnectionClosedError):
                    await conn.request(request(HANG), timeout=60)
                failed.set()

            outer.start_soon(pending)
            await trio.testing.wait_all_tasks_blocked()
            server_nursery.cancel_scope.cancel()
            await failed.wait()
            assert conn.closed
            with pytest.raises(ConnectionClosedError):
                await conn.request(request(ECHO))


async def test_wait_closed_returns_when_the_server_drops_an_idle_connection() -> None:
    async with trio.open_nursery() as server_nursery:
        address = await start_server(server_nursery)
        async with connect(address) as conn:
            await conn.request(request(ECHO))
            server_nursery.cancel_scope.cancel()
            with trio.fail_after(10):
                await conn.wait_closed()
            assert conn.closed


async def test_server_answers_an_oversized_request_then_closes() -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery, frame_bytes_max=1000)
        async with connect(address) as conn:
            with pytest.raises(RemoteError) as caught:
                await conn.request(request(ECHO, body=b"x" * 5000))
            assert caught.value.code == ErrorCode.FRAME_TOO_LARGE
            with pytest.raises(ConnectionClosedError):
                await conn.request(request(ECHO))
        nursery.cancel_scope.cancel()


async def test_connect_to_a_closed_port_raises_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectError):
        async with connect(f"127.0.0.1:{port}"):
            pass


async def test_errors_in_the_block_propagate_unwrapped() -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery)
        with pytest.raises(RemoteError):
            async with connect(address) as conn:
                await conn.request(request(FAIL))
        nursery.cancel_scope.cancel()


async def test_connection_can_run_in_the_callers_task_group() -> None:
    async with trio.open_nursery() as nursery:
        address = await start_server(nursery)
        stream = await anyio.connect_tcp("127.0.0.1", int(address.rsplit(":", 1)[1]))
        async with anyio.create_task_group() as task_group:
            conn = Connection(stream, address=address)
            await task_group.start(conn.run)
            assert (await conn.request(request(ECHO, {"a": 1}))).fields == {"a": 1}
            await conn.aclose()
        assert conn.closed
        nursery.cancel_scope.cancel()


def test_addresses_parse_and_format_round_trip() -> None:
    assert parse_address("127.0.0.1:9876") == ("127.0.0.1", 9876)
    assert parse_address("[::1]:9876") == ("::1", 9876)
    assert format_address("::1", 9876) == "[::1]:9876"
    for bad in ("nohost", ":9876", "host:", "host:0", "host:70000", "host:port"):
        with pytest.raises(ValueError):
            parse_address(bad)
