"""Admin against fake broker groups and a real NameServer over loopback (trio)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mq.client import Admin, Message, MessageQueue, NoRouteError, Producer, PushConsumer
from mq.client.admin import ConsumerGroupInfo
from mq.protocol import RequestCode
from mq.route import TopicConfig
from tests.mq.fake_broker import fake_env


async def test_create_topic_on_every_group_leader_then_produce() -> None:
    async with fake_env(topics={}) as env, Admin(env.namesrv) as admin:
        assert await admin.create_topic("payments", queues=2) == ["g1", "g2"]
        for name in ("g1", "g2"):
            group = env.group(name)
            assert group.topics["payments"] == TopicConfig(2, 2)
            (create,) = [r for r in group.requests if r.code == RequestCode.CREATE_TOPIC]
            assert create.address == group.leader.address
        route = await admin.topic_route("payments")
        assert [(g.group, g.topic.write_queues) for g in route.groups] == [("g1", 2), ("g2", 2)]
        async with Producer(env.namesrv) as producer:
            assert (await producer.send(Message("payments", b"x"))).status == "SEND_OK"


async def test_create_topic_on_one_group_follows_not_leader() -> None:
    async with fake_env(topics={}) as env, Admin(env.namesrv) as admin:
        group = env.group("g2")
        await group.elect(2, register=False)  # the NameServer still names node 0
        assert await admin.create_topic("t", 4, group="g2", write_queues=2) == ["g2"]
        assert group.topics["t"] == TopicConfig(read_queues=4, write_queues=2)
        creates = [r.node for r in group.requests if r.code == RequestCode.CREATE_TOPIC]
        assert creates == [0, 2]
        assert "t" not in env.group("g1").topics
        with pytest.raises(NoRouteError):
            await admin.create_topic("t", group="g9")
        with pytest.raises(ValueError):
            await admin.create_topic("bad topic")


async def test_cluster_info_route_and_broker_status() -> None:
    async with fake_env() as env, Admin(env.namesrv) as admin:
        info = await admin.cluster_info()
        assert info.clusters() == {"c1": ["g1", "g2"]}
        g1 = env.group("g1")
        status = await admin.broker_status(g1.node(1).address)
        assert (status.group, status.node_id, status.role) == ("g1", 1, "follower")
        assert status.leader == g1.leader.address
        topics = await admin.all_topics(g1.node(0).address)
        assert topics == {"orders": TopicConfig(4, 4)}


async def test_consumer_groups_describe_and_reset(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_env() as env, Admin(env.namesrv) as admin:
        g1 = env.group("g1")
        async with Producer(env.namesrv) as producer:
            for _ in range(8):
                await producer.send(Message("orders", b"x"))
        g1.consumer_offsets[("billing", "orders", 0)] = 1
        push = PushConsumer(env.namesrv, "billing", client_id="c1", rebalance_interval_ms=10**9)
        push.subscribe("orders")
        async with push:
            (listed,) = await admin.consumer_groups()
            assert listed == ConsumerGroupInfo("billing", ("c1",), "clustering", ("orders",))
            described = await admin.describe_group("billing")
        assert described.members == ("c1",)
        by_queue = {(q.queue.group, q.queue.queue_id): q for q in described.queues}
        assert len(by_queue) == 8
        q0 = by_queue[("g1", 0)]
        assert (q0.broker_offset, q0.consumer_offset, q0.lag) == (1, 1, 0)
        assert described.to_fields()["queues"][0]["lag"] == 0
        offsets = await admin.reset_offset("billing", "orders", "last")
        assert offsets[MessageQueue("orders", "g1", 0)] == 1
        assert g1.generations[("billing", "orders")] == 1
        resets = [r for r in g1.requests if r.code == RequestCode.RESET_CONSUMER_OFFSET]
        assert resets[0].address == g1.leader.address
        with pytest.raises(ValueError):
            await admin.reset_offset("billing", "orders", "timestamp")
