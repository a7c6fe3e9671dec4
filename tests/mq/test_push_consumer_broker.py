"""PushConsumer against the real broker: three broker servers (Raft, consumer groups,
replicated offsets) and a NameServer in this trio process, over loopback sockets, on
trio's virtual clock (tests/mq/test_broker_server.py's `broker_group`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from mq.client import Admin, Message, MessageExt, MessageQueue, Producer, PushConsumer
from tests.mq.test_broker_server import Group, broker_group

TOPIC = "orders"
QUEUES = [MessageQueue(TOPIC, "g1", q) for q in range(8)]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 300) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.05)


async def create_topic(group: Group) -> None:
    await group.leader()
    async with Admin([group.nameserver.address]) as admin:
        await admin.create_topic(TOPIC, queues=8)
        # The NameServer learns of the topic when the brokers register again.
        with trio.fail_after(120):
            while True:
                try:
                    route = await admin.topic_route(TOPIC)
                except Exception:
                    route = None
                if route is not None and route.groups and route.groups[0].leader_address:
                    return
                await trio.sleep(0.5)


async def produce(group: Group, count: int, tag: str = "") -> list[str]:
    async with Producer([group.nameserver.address]) as producer:
        return [
            (await producer.send(Message(TOPIC, f"m{i}".encode(), tags=tag))).msg_id
            for i in range(count)
        ]


class Counting:
    def __init__(self, name: str, seen: Counter[str]) -> None:
        self.name = name
        self.seen = seen
        self.mine: list[str] = []

    async def __call__(self, message: MessageExt) -> None:
        self.seen[message.msg_id] += 1
        self.mine.append(message.msg_id)


def member(group: Group, handler: Counting, **options: object) -> PushConsumer:
    consumer = PushConsumer(
        [group.nameserver.address],
        "billing",
        handler=handler,
        client_id=handler.name,
        consume_from="first",
        **options,  # type: ignore[arg-type]
    )
    consumer.subscribe(TOPIC)
    return consumer


async def test_three_members_share_eight_queues_and_a_stopped_members_queues_move(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        await create_topic(group)
        seen: Counter[str] = Counter()
        handlers = [Counting(f"m{i}", seen) for i in range(3)]
        members = [member(group, h) for h in handlers]
        async with members[0], members[1]:
            async with members[2]:
                await wait_until(
                    lambda: (
                        sorted(q for m in members for q in m.assigned) == QUEUES
                        and sorted(len(m.assigned) for m in members) == [2, 3, 3]
                    )
                )
                ids = await produce(group, 60)
                await wait_until(lambda: sum(seen.values()) >= len(ids))
                await trio.sleep(5)
                assert sorted(seen) == sorted(ids)
                assert set(seen.values()) == {1}, "no duplicates while membership is stable"
                assert all(h.mine for h in handlers), "every member got a share"
            # m2 left (committed, unregistered): its queues move to m0 and m1.
            await wait_until(lambda: sorted(q for m in members[:2] for q in m.assigned) == QUEUES)
            more = await produce(group, 30)
            await wait_until(lambda: all(seen[i] >= 1 for i in more))
            await trio.sleep(5)
            assert all(seen[i] == 1 for i in more)
            assert not set(more) & set(handlers[2].mine)
        async with Admin([group.nameserver.address]) as admin:
            described = await admin.describe_group("billing", [TOPIC])
        assert [q.lag for q in described.queues] == [0] * 8
        assert sum(q.consumer_offset or 0 for q in described.queues) == 90


async def test_broadcasting_members_each_get_every_message(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with broker_group() as group:
        await create_topic(group)
        counters = [Counter[str]() for _ in range(3)]
        handlers = [Counting(f"b{i}", counters[i]) for i in range(3)]
        members = [
            member(group, h, model="broadcasting", offsets_dir=tmp_path, instance_name=h.name)
            for h in handlers
        ]
        async with members[0], members[1], members[2]:
            ids = await produce(group, 40)
            await wait_until(lambda: all(sum(c.values()) >= len(ids) for c in counters))
            await trio.sleep(5)
        for counter in counters:
            assert sorted(counter) == sorted(ids) and set(counter.values()) == {1}
        for handler in handlers:
            assert (tmp_path / "billing" / f"{handler.name}.json").exists()


async def test_an_admin_reset_makes_members_consume_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        await create_topic(group)
        seen: Counter[str] = Counter()
        async with member(group, Counting("r0", seen)):
            ids = await produce(group, 16)
            await wait_until(lambda: sum(seen.values()) == 16)
            async with Admin([group.nameserver.address]) as admin:
                await wait_until_committed(admin, 16)
                listed = {g.group: g for g in await admin.consumer_groups()}
                assert listed["billing"].members == ("r0",)
                assert listed["billing"].topics == (TOPIC,)
                offsets = await admin.reset_offset("billing", TOPIC, "first")
                assert set(offsets.values()) == {0}
            await wait_until(lambda: sum(seen.values()) == 32)
            assert seen == Counter({i: 2 for i in ids})


async def wait_until_committed(admin: Admin, total: int) -> None:
    with trio.fail_after(120):
        while True:
            described = await admin.describe_group("billing", [TOPIC])
            if sum(q.consumer_offset or 0 for q in described.queues) == total:
                return
            await trio.sleep(0.5)


async def test_consuming_continues_across_a_leader_failover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        await create_topic(group)
        seen: Counter[str] = Counter()
        async with member(group, Counting("f0", seen)):
            ids = await produce(group, 16)
            await wait_until(lambda: sum(seen.values()) == 16)
            old = await group.leader()
            group.stop(old.config.node_id)  # the leader dies; pulls move to a follower
            new = await group.leader()
            assert new is not old
            more = await produce(group, 16)
            await wait_until(lambda: all(seen[i] >= 1 for i in ids + more))
            async with Admin([group.nameserver.address]) as admin:
                await wait_until_committed(admin, 32)  # on the new leader, replicated
        assert set(seen) == set(ids + more)
        # Duplicates only for messages handled but not yet committed at the failover.
        assert sum(seen.values()) - len(seen) <= 16


async def test_new_tags_take_effect_at_once_even_with_long_polls_held_for_the_old_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pull held at the broker still filters by the old tags: answered by the first
    new message, it would step past every message only the new tags match."""
    async with broker_group() as group:
        await create_topic(group)
        got: list[MessageExt] = []

        async def handler(message: MessageExt) -> None:
            got.append(message)

        consumer = PushConsumer(
            [group.nameserver.address], "billing", handler=handler, consume_from="first"
        )
        consumer.subscribe(TOPIC, "a")

        def held() -> int:
            return sum(server.core.stats()["held_pulls"] for server in group.servers.values())

        async with consumer:
            await wait_until(lambda: held() == 8)  # a long poll per queue, tags "a"
            consumer.subscribe(TOPIC, "b")
            # The queues start over: a new long poll each (tags "b"); the old ones stay
            # held at the broker until their time is up, and must not matter.
            await wait_until(lambda: held() == 16)
            async with Producer([group.nameserver.address]) as producer:
                for i in range(16):
                    tag = "ab"[i % 2]
                    await producer.send(Message(TOPIC, f"{tag}{i}".encode(), tags=tag))
            await wait_until(lambda: len(got) >= 8)
            await trio.sleep(5)  # virtual (MockClock): nothing else arrives meanwhile
        assert sorted(m.body for m in got) == sorted(f"b{i}".encode() for i in range(1, 16, 2))
