"""Admin against fake broker groups and a real NameServer over loopback (trio)."""

from __future__ import annotations

import pytest

from mq.client import Admin, Message, NoRouteError, Producer
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
