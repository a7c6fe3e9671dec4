"""Three broker servers and a NameServer in one trio process, over loopback sockets, on
trio's virtual clock (storage is simulated and fsyncs run inline, so virtual time only
moves when every task waits)."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import pytest
import structlog
import trio
import trio.testing

from mq.broker.config import BrokerConfig
from mq.broker.server import BrokerServer, run_broker
from mq.nameserver.server import NameServer, run_nameserver
from mq.protocol import ErrorCode, Frame, RequestCode, request
from mq.route import TopicRoute
from mq.rpc.client import Connection, connect
from mq.rpc.errors import RemoteError, TransportError
from storage.files import SimFileSystem
from tests.mq.broker_cluster import send_request


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Group:
    nursery: trio.Nursery
    nameserver: NameServer
    configs: dict[int, BrokerConfig]
    fss: dict[int, SimFileSystem]
    servers: dict[int, BrokerServer] = field(default_factory=dict)
    scopes: dict[int, trio.CancelScope] = field(default_factory=dict)

    async def start(self, node_id: int) -> BrokerServer:
        scope = trio.CancelScope()
        self.scopes[node_id] = scope

        async def run(task_status: trio.TaskStatus[BrokerServer]) -> None:
            with scope:
                await run_broker(
                    self.configs[node_id], fs=self.fss[node_id], task_status=task_status
                )

        server: BrokerServer = await self.nursery.start(run)
        self.servers[node_id] = server
        return server

    def stop(self, node_id: int) -> None:
        self.scopes.pop(node_id).cancel()
        del self.servers[node_id]

    async def leader(self, timeout_s: float = 30) -> BrokerServer:
        with trio.fail_after(timeout_s):
            while True:
                leaders = [s for s in self.servers.values() if s.core.is_leader]
                if len(leaders) == 1 and all(
                    s.core.raft.leader_id == leaders[0].config.node_id
                    for s in self.servers.values()
                ):
                    return leaders[0]
                await trio.sleep(0.05)


@asynccontextmanager
async def broker_group(**overrides: object) -> AsyncIterator[Group]:
    async with trio.open_nursery() as nursery:
        nameserver: NameServer = await nursery.start(
            lambda task_status: run_nameserver("127.0.0.1", 0, task_status=task_status)
        )
        ports = free_ports(3)
        peers = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        options: dict[str, object] = {
            "cluster": "c1",
            "group": "g1",
            "peers": peers,
            "namesrv": (nameserver.address,),
            "segment_bytes": 1 << 20,
            "cq_units_per_segment": 4096,
            "index_slots": 1024,
            "index_entries_max": 4096,
            **overrides,
        }
        configs = {
            i: BrokerConfig(node_id=i, listen=peers[i], data_dir=f"/node{i}", **options)  # type: ignore[arg-type]
            for i in peers
        }
        fss = {i: SimFileSystem(random.Random(i)) for i in peers}
        group = Group(nursery, nameserver, configs, fss)
        for i in peers:
            await group.start(i)
        yield group
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout_s: float = 10, interval_s: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while not await predicate():
            await trio.sleep(interval_s)


async def held_pulls(server: BrokerServer, count: int, timeout_s: float = 10) -> None:
    """Until the node holds `count` long polls (answered, they would stop counting)."""
    with trio.fail_after(timeout_s):
        while server.core.stats()["held_pulls"] != count:
            await trio.sleep(0.01)


async def pull(address: str, topic: str, offset: int = 0, queue_id: int = 0) -> Frame:
    async with connect(address) as conn:
        return await conn.request(
            request(
                RequestCode.PULL_MESSAGE,
                {"topic": topic, "queue_id": queue_id, "offset": offset, "max_count": 64},
            )
        )


async def test_a_group_serves_sends_pulls_and_registers_its_routes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        leader = await group.leader()
        async with connect(leader.address) as producer:
            for i in range(5):
                response = await producer.request(
                    send_request("orders", [b"m%d" % i, b"n%d" % i], producer_id="p", seq=i)
                )
                assert response.fields["queue_offset"] == 2 * i
            retry = await producer.request(
                send_request("orders", [b"m4", b"n4"], producer_id="p", seq=4)
            )
            assert retry.fields["duplicate"] is True and retry.fields["queue_offset"] == 8

        follower = next(s for s in group.servers.values() if s is not leader)

        async def follower_has_all() -> bool:
            found = await pull(follower.address, "orders")
            return found.fields["status"] == "FOUND" and len(found.fields["queue_offsets"]) == 10

        await wait_for(follower_has_all)

        async with connect(follower.address) as conn:
            with pytest.raises(RemoteError) as caught:
                await conn.request(send_request("orders", [b"x"]))
            assert caught.value.code == ErrorCode.NOT_LEADER
            assert caught.value.response is not None
            assert caught.value.response.fields["leader"] == leader.address

        async def route_is_registered() -> bool:
            async with connect(group.nameserver.address) as ns:
                response = await ns.request(
                    request(RequestCode.GET_ROUTE, {"topic": "orders"}), check=False
                )
            if not response.ok:
                return False
            route = TopicRoute.from_fields(response.fields)
            return (
                route.groups[0].leader_address == leader.address
                and len(route.groups[0].info.nodes) == 3
            )

        await wait_for(route_is_registered)


async def test_a_new_leader_takes_over_and_a_restarted_node_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        leader = await group.leader()
        async with connect(leader.address) as producer:
            await producer.request(send_request("t", [b"before"]))
        old_id = leader.config.node_id
        group.stop(old_id)
        new = await group.leader()
        assert new.config.node_id != old_id

        async def old_node_unregistered() -> bool:
            async with connect(group.nameserver.address) as ns:
                info = await ns.request(request(RequestCode.GET_CLUSTER_INFO))
            nodes = info.fields["groups"][0]["nodes"]
            return old_id not in [n["node_id"] for n in nodes]

        await wait_for(old_node_unregistered)
        async with connect(new.address) as producer:
            await producer.request(send_request("t", [b"after"]))
        restarted = await group.start(old_id)

        async def caught_up() -> bool:
            found = await pull(restarted.address, "t")
            return found.fields.get("queue_offsets") == [0, 1]

        await wait_for(caught_up)
        async with connect(restarted.address) as conn:
            status = (await conn.request(request(RequestCode.GET_BROKER_STATUS))).fields
        assert status["role"] == "follower" and status["leader"] == new.address


async def test_many_concurrent_sends_are_all_acknowledged_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        leader = await group.leader()
        results: list[int] = []
        async with connect(leader.address) as producer:

            async def send(i: int) -> None:
                response = await producer.request(
                    send_request("load", [b"%d" % i] * 4, queue_id=i % 4), timeout=30
                )
                results.append(response.fields["queue_offset"])

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(send, i)
        assert len(results) == 200
        per_queue = sorted(results)
        assert per_queue == sorted(o for q in range(4) for o in range(0, 200, 4))


async def test_brokers_register_again_as_soon_as_a_restarted_nameserver_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restarted NameServer knows no routes: every broker must notice its connection
    closing and register again at once, not after `register_interval_ms` (30 s)."""
    port = free_ports(1)[0]
    address = f"127.0.0.1:{port}"

    async def registered_nodes() -> int:
        try:
            async with connect(address) as ns:
                info = await ns.request(request(RequestCode.GET_CLUSTER_INFO))
        except TransportError:
            return 0
        groups = info.fields["groups"]
        return len(groups[0]["nodes"]) if groups and groups[0]["leader_address"] else 0

    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def run_first(task_status: trio.TaskStatus[NameServer]) -> None:
            with first:
                await run_nameserver("127.0.0.1", port, task_status=task_status)

        await nursery.start(run_first)
        async with broker_group(namesrv=(address,)) as group:
            await group.leader()
            await wait_for(lambda: _equals(registered_nodes, 3))

            first.cancel()  # the NameServer process dies...
            await wait_for(lambda: _equals(registered_nodes, 0))
            await trio.sleep(2)  # ...and stays down across a few reconnect attempts
            await nursery.start(partial(run_nameserver, "127.0.0.1", port))
            with trio.fail_after(5):  # well under the 30 s registration interval
                await wait_for(lambda: _equals(registered_nodes, 3))
        nursery.cancel_scope.cancel()


async def _equals(probe, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await probe() == expected)


async def test_a_planned_stop_answers_held_pulls_before_the_connections_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        leader = await group.leader()
        async with connect(leader.address) as producer:
            await producer.request(send_request("held", [b"first"]))
        answers: list[tuple[Frame, float]] = []

        async def long_poll() -> None:
            async with connect(leader.address) as conn:
                frame = request(
                    RequestCode.PULL_MESSAGE,
                    {"topic": "held", "queue_id": 0, "offset": 1, "suspend_ms": 20_000},
                )
                answers.append((await conn.request(frame, timeout=60), trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await held_pulls(leader, 1)
            assert not answers
            released_at = trio.current_time()
            await leader.release_held_pulls()
            # The stop goes on at once, as after SIGTERM: the answer must be out already.
            group.scopes[next(i for i, s in group.servers.items() if s is leader)].cancel()
        ((answer, at),) = answers
        assert answer.fields["status"] == "NO_NEW_MSG"
        assert at - released_at < 1, "answered at the stop, not after its 20 s suspend"


async def test_long_polls_of_a_client_that_hangs_up_are_released_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """They must not count against held_pulls_max for the rest of their suspend time: a
    consumer fleet restarting would otherwise find long polling full for 30 s."""
    async with broker_group() as group:
        leader = await group.leader()
        async with connect(leader.address) as producer:
            await producer.request(send_request("held", [b"first"]))

        async def long_poll(conn: Connection, queue_id: int) -> None:
            frame = request(
                RequestCode.PULL_MESSAGE,
                {"topic": "held", "queue_id": queue_id, "offset": 1, "suspend_ms": 20_000},
            )
            with contextlib.suppress(TransportError):
                await conn.request(frame, timeout=60)

        async with connect(leader.address) as staying:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_poll, staying, 0)
                async with connect(leader.address) as leaving:
                    for _ in range(3):
                        nursery.start_soon(long_poll, leaving, 0)
                    await held_pulls(leader, 4)
                    hung_up_at = trio.current_time()
                    nursery.cancel_scope.cancel()  # the other three give up with it
            # `leaving` is closed; `staying` still waits.
            while leader.core.stats()["held_pulls"] > 1:
                await trio.sleep(0.01)
            assert trio.current_time() - hung_up_at < 1, "released at the hang-up"


async def test_a_node_retries_an_unreachable_nameserver_about_once_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Also after a role change: the change is carried by the next registration, it
    must not turn the retry into a busy loop (it did, at 1,000+ attempts a second)."""
    (dead,) = free_ports(1)
    failures = 0

    def count(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
        nonlocal failures
        if event["event"] == "register_failed":
            failures += 1
            # Raised in the spinning loop itself: a busy loop stops virtual time, so
            # the test would otherwise never get to look.
            assert failures < 100, "re-registration spins"
        raise structlog.DropEvent

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[count])
    try:
        async with broker_group(namesrv=(f"127.0.0.1:{dead}",)) as group:
            await group.leader()  # role changes on every node
            before = failures
            await trio.sleep(5)  # virtual (MockClock): the window the attempts are counted in
            attempts = failures - before
    finally:
        structlog.configure(processors=processors)
    assert attempts <= 3 * 7, f"{attempts} attempts by 3 nodes in 5 s"


async def test_a_stalled_event_loop_shows_in_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def status(server: BrokerServer) -> dict[str, object]:
        async with connect(server.address) as conn:
            return dict((await conn.request(request(RequestCode.GET_BROKER_STATUS))).fields)

    async with broker_group() as group:
        leader = await group.leader()
        before = await status(leader)
        assert before["loop_stalls"] == 0 and before["loop_lag_ms"] == 0
        autojump_clock.jump(0.3)  # as if a blocking call held every loop for 300 ms
        await trio.sleep(0.2)
        after = await status(leader)
        assert after["loop_stalls"] == 1
        assert 250 <= after["loop_lag_ms"] <= 300  # type: ignore[operator]
