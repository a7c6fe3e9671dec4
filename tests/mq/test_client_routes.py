"""Route management: NameServer failover, caching, periodic and on-error refresh."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from mq.client import Message, NoRouteError, Producer
from mq.client.instance import ClientInstance
from mq.nameserver.server import run_nameserver
from mq.route import TopicConfig
from tests.mq.fake_broker import ORDERS, fake_env


def closed_port_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def test_route_is_fetched_from_the_next_nameserver_when_one_is_down() -> None:
    async with fake_env() as env:
        namesrv = [closed_port_address(), *env.namesrv]
        async with Producer(namesrv) as producer:
            assert (await producer.send(Message("orders", b"x"))).status == "SEND_OK"


async def test_a_nameserver_that_does_not_know_the_topic_is_not_the_last_word() -> None:
    async with fake_env() as env, trio.open_nursery() as nursery:
        blank = await nursery.start(run_nameserver, "127.0.0.1", 0)  # no broker registered
        async with Producer([blank.address, *env.namesrv]) as producer:
            assert (await producer.send(Message("orders", b"x"))).status == "SEND_OK"
        async with Producer([blank.address]) as producer:
            with pytest.raises(NoRouteError, match="TOPIC_NOT_EXIST"):
                await producer.send(Message("orders", b"x"))
        nursery.cancel_scope.cancel()


async def test_no_reachable_nameserver_is_a_no_route_error() -> None:
    async with Producer([closed_port_address(), closed_port_address()]) as producer:
        with pytest.raises(NoRouteError, match="no NameServer"):
            await producer.send(Message("orders", b"x"))


async def test_routes_refresh_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        await producer.send(Message("orders", b"x"))
        await env.cluster.add_group("g2", topics={"orders": ORDERS})
        before = {(await producer.send(Message("orders", b"x"))).group for _ in range(8)}
        assert before == {"g1"}  # the cached route is used until the next refresh
        await trio.sleep(30.5)
        after = {(await producer.send(Message("orders", b"x"))).group for _ in range(8)}
        assert after == {"g1", "g2"}


async def test_refresh_interval_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_env(groups=["g1"]) as env:
        client = ClientInstance(env.namesrv, route_refresh_ms=1_000)
        await client.start()
        try:
            route = await client.routes.get("orders")
            assert [g.topic.write_queues for g in route.groups] == [4]
            group = env.group("g1")
            group.topics["orders"] = TopicConfig(read_queues=2, write_queues=2)
            await group.register()
            await trio.sleep(1.5)
            route = client.routes.cached("orders")
            assert route is not None and [g.topic.write_queues for g in route.groups] == [2]
        finally:
            await client.aclose()


async def test_a_leader_change_reaches_producers_through_the_route() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        await producer.send(Message("orders", b"x"))
        await group.elect(1)  # registered: the NameServer knows node 1 leads
        result = await producer.send(Message("orders", b"y"))  # NOT_LEADER, then node 1
        assert result.attempts == 2
        await trio.testing.wait_all_tasks_blocked()  # the refresh it asked for is done
        route = await producer._client.routes.get("orders")
        assert route.groups[0].leader_address == group.node(1).address


async def test_concurrent_fetches_of_one_topic_share_a_request() -> None:
    async with fake_env(groups=["g1"]) as env:
        client = ClientInstance(env.namesrv)
        await client.start()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(client.routes.get, "orders")
            assert client.routes._fetches_started == 1
        finally:
            await client.aclose()
