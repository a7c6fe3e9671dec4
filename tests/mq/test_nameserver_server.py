"""The NameServer over real loopback sockets, on trio's virtual clock where time matters."""

from __future__ import annotations

import json
import random
import select
import signal
import struct
import subprocess
import sys

import anyio
import cbor2
import pytest
import trio
import trio.testing

from mq.nameserver.server import NameServer, run_nameserver
from mq.protocol import ErrorCode, Frame, RequestCode, encode_frame, request
from mq.route import BrokerRegistration, ClusterInfo, Role, TopicConfig, TopicRoute
from mq.rpc.client import Connection, connect
from mq.rpc.errors import RemoteError

ORDERS = TopicConfig(read_queues=4, write_queues=4)


def registration(node_id: int, *, role: Role = Role.FOLLOWER, term: int = 1) -> BrokerRegistration:
    return BrokerRegistration(
        cluster="c1",
        group="g1",
        node_id=node_id,
        address=f"127.0.0.1:{20000 + node_id}",
        role=role,
        term=term,
        topics={"orders": ORDERS},
    )


async def register(conn: Connection, reg: BrokerRegistration) -> Frame:
    return await conn.request(request(RequestCode.REGISTER_BROKER, reg.to_fields()))


async def get_route(conn: Connection, topic: str = "orders") -> TopicRoute:
    response = await conn.request(request(RequestCode.GET_ROUTE, {"topic": topic}))
    return TopicRoute.from_fields(response.fields)


async def start(nursery: trio.Nursery, **options: int) -> NameServer:
    server: NameServer = await nursery.start(
        lambda task_status: run_nameserver("127.0.0.1", 0, task_status=task_status, **options)
    )
    return server


async def test_brokers_register_and_clients_get_routes() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        async with connect(server.address) as broker, connect(server.address) as client:
            for node_id in range(3):
                role = Role.LEADER if node_id == 0 else Role.FOLLOWER
                response = await register(broker, registration(node_id, role=role))
            assert response.fields == {"leader_address": "127.0.0.1:20000"}
            route = await get_route(client)
            (group,) = route.groups
            assert group.leader_address == "127.0.0.1:20000"
            assert [n.address for n in group.info.nodes] == [
                f"127.0.0.1:{20000 + i}" for i in range(3)
            ]
            assert group.topic == ORDERS
            info = await client.request(request(RequestCode.GET_CLUSTER_INFO))
            assert ClusterInfo.from_fields(info.fields).clusters() == {"c1": ["g1"]}
            topics = await client.request(request(RequestCode.GET_ALL_TOPICS))
            assert topics.fields == {"topics": ["orders"]}
            with pytest.raises(RemoteError) as caught:
                await get_route(client, "missing")
            assert caught.value.code == ErrorCode.TOPIC_NOT_EXIST
        nursery.cancel_scope.cancel()


async def test_leader_change_reaches_clients() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        async with connect(server.address) as conn:
            await register(conn, registration(0, role=Role.LEADER, term=1))
            await register(conn, registration(1, role=Role.FOLLOWER, term=1))
            await register(conn, registration(1, role=Role.LEADER, term=2))
            await register(conn, registration(0, role=Role.LEADER, term=1))  # stale claim
            route = await get_route(conn)
            assert route.groups[0].leader_address == "127.0.0.1:20001"
        nursery.cancel_scope.cancel()


async def test_silent_broker_expires_on_the_servers_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, expire_ms=120_000, scan_interval_ms=10_000)
        async with connect(server.address) as conn:
            await register(conn, registration(0, role=Role.LEADER))
            await trio.sleep(110)
            assert (await get_route(conn)).groups
            await trio.sleep(30)  # 140 s silent: past expire_ms and at least one scan
            with pytest.raises(RemoteError) as caught:
                await get_route(conn)
            assert caught.value.code == ErrorCode.TOPIC_NOT_EXIST
        nursery.cancel_scope.cancel()


async def test_reregistering_every_30s_keeps_a_broker_routable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery)

        async def heartbeat(conn: Connection) -> None:
            while True:
                await register(conn, registration(0, role=Role.LEADER))
                await trio.sleep(30)

        async with connect(server.address) as broker, connect(server.address) as client:
            nursery.start_soon(heartbeat, broker)
            for _ in range(20):  # ten virtual minutes
                await trio.sleep(30)
                assert (await get_route(client)).groups[0].leader_address == "127.0.0.1:20000"
            nursery.cancel_scope.cancel()


async def test_nameservers_are_independent_and_brokers_register_with_all() -> None:
    async with trio.open_nursery() as nursery:
        servers = [await start(nursery) for _ in range(3)]
        assert len({s.port for s in servers}) == 3
        for server in servers[:2]:
            async with connect(server.address) as conn:
                await register(conn, registration(0, role=Role.LEADER))
        routes = []
        for server in servers:
            async with connect(server.address) as conn:
                response = await conn.request(
                    request(RequestCode.GET_ROUTE, {"topic": "orders"}), check=False
                )
                routes.append(response.error)
        assert routes == [ErrorCode.SUCCESS, ErrorCode.SUCCESS, ErrorCode.TOPIC_NOT_EXIST]
        nursery.cancel_scope.cancel()


def garbage(rng: random.Random) -> bytes:
    """Hostile input of several shapes: noise, truncated frames, lies in the prefix,
    malformed headers, oversized frames."""
    valid = encode_frame(
        Frame(
            code=RequestCode.REGISTER_BROKER,
            request_id=rng.randrange(1000),
            fields=registration(1).to_fields(),
        )
    )
    shape = rng.randrange(6)
    if shape == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if shape == 1:
        return valid[: rng.randrange(1, len(valid))]
    if shape == 2:
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if shape == 3:
        header = cbor2.dumps(
            rng.choice([[1], {0: "x", 1: 1}, {0: 1, 1: 2, 3: {"a": {1, 2}}}, "str"])
        )
        return struct.pack(">II", 4 + len(header), len(header)) + header
    if shape == 4:
        return struct.pack(">II", rng.choice([2**32 - 1, 2**24 + 1]), rng.randrange(1, 2**20))
    return valid + rng.randbytes(rng.randrange(1, 50))


async def test_server_keeps_serving_after_garbage() -> None:
    rng = random.Random(20240611)
    async with trio.open_nursery() as nursery:
        server = await start(nursery)
        for _ in range(60):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            try:
                await stream.send_all(garbage(rng))
                await stream.send_eof()
                # The server answers what it can, then closes; a hang would fail here.
                with trio.fail_after(10):
                    while await stream.receive_some(65536):
                        pass
            except trio.BrokenResourceError:
                pass
            finally:
                await stream.aclose()
        async with connect(server.address) as conn:
            assert (await conn.request(request(RequestCode.PING))).ok
            await register(conn, registration(0, role=Role.LEADER))
            assert (await get_route(conn)).groups
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("sig", "ignoring_sigint"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-from-a-background-job"],
)
def test_python_m_mq_nameserver_serves_logs_json_lines_and_stops_on_a_signal(
    sig: signal.Signals, ignoring_sigint: bool
) -> None:
    # A shell starts background jobs with SIGINT ignored, and the process inherits that.
    argv = [sys.executable, "-m", "mq.nameserver", "--port", "0", "--expire-ms", "5000"]
    if ignoring_sigint:
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stderr], [], [], 60)
        assert ready, "no log line from the nameserver"
        assert process.stderr is not None
        line = json.loads(process.stderr.readline())
        assert line["event"] == "nameserver_listening"
        assert line["expire_ms"] == 5000

        async def ping() -> None:
            async with connect(f"127.0.0.1:{line['port']}") as conn:
                assert (await conn.request(request(RequestCode.PING))).ok

        anyio.run(ping, backend="asyncio")
        process.send_signal(sig)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
