"""PullConsumer against fake broker groups and a real NameServer over loopback (trio)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mq.client import (
    BrokerError,
    Message,
    MessageQueue,
    MQConnectionError,
    Producer,
    PullConsumer,
    PullStatus,
    SelectByHash,
    TagFilter,
)
from mq.protocol import ErrorCode, RequestCode
from storage.record import tag_hash
from tests.mq.fake_broker import Env, fake_env

Q0 = MessageQueue("orders", "g1", 0)


async def fill(env: Env, tags: list[str], queue: MessageQueue = Q0) -> list[str]:
    """Send one message per tag to `queue`; returns their ids."""
    select_queue = _Fixed(queue)
    async with Producer(env.namesrv) as producer:
        return [
            (
                await producer.send(Message("orders", t.encode(), tags=t), selector=select_queue)
            ).msg_id
            for t in tags
        ]


class _Fixed(SelectByHash):
    def __init__(self, queue: MessageQueue) -> None:
        self.queue = queue

    def select(self, queues, message, arg):  # type: ignore[no-untyped-def]
        return self.queue


def test_tag_expressions_parse_as_rocketmq_does() -> None:
    assert TagFilter.parse("*").tags is None and TagFilter.parse("").tags is None
    assert TagFilter.parse(None).tags is None
    assert TagFilter.parse(" a || b ||  ").tags == frozenset({"a", "b"})
    assert TagFilter.parse("a").hashes() == [tag_hash("a")]
    assert TagFilter.parse("*").matches("anything")
    assert not TagFilter.parse("a||b").matches("c")
    with pytest.raises(ValueError):
        TagFilter.parse("a || *")


async def test_fetch_queues_lists_every_readable_queue() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        queues = await consumer.fetch_queues("orders")
        assert queues == [MessageQueue("orders", g, q) for g in ("g1", "g2") for q in range(4)]


async def test_pull_statuses_follow_the_offsets() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        empty = await consumer.pull(Q0, 0)
        assert (empty.status, empty.next_offset, empty.messages) == (PullStatus.NO_NEW_MSG, 0, [])
        ids = await fill(env, ["a", "b", "c"])
        found = await consumer.pull(Q0, 0, max_count=2)
        assert found.status is PullStatus.FOUND
        assert [m.msg_id for m in found.messages] == ids[:2]
        assert [m.queue_offset for m in found.messages] == [0, 1]
        assert (found.next_offset, found.min_offset, found.max_offset) == (2, 0, 3)
        rest = await consumer.pull(Q0, found.next_offset)
        assert [m.msg_id for m in rest.messages] == ids[2:] and rest.next_offset == 3
        assert (await consumer.pull(Q0, 3)).status is PullStatus.NO_NEW_MSG
        illegal = await consumer.pull(Q0, 10)
        assert (illegal.status, illegal.next_offset) == (PullStatus.OFFSET_ILLEGAL, 3)
        message = found.messages[0]
        assert (message.group, message.queue_id, message.tags, message.body) == ("g1", 0, "a", b"a")
        with pytest.raises(ValueError):
            await consumer.pull(Q0, -1)


async def test_tags_filter_at_the_broker_by_hash() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        await fill(env, ["a", "b", "c", "a", "c"])
        result = await consumer.pull(Q0, 0, tags="a || b")
        assert [m.tags for m in result.messages] == ["a", "b", "a"]
        assert [m.queue_offset for m in result.messages] == [0, 1, 3]
        (request,) = env.group("g1").requests[-1:]
        assert request.fields["tag_hashes"] == sorted({tag_hash("a"), tag_hash("b")})
        assert "tag_hashes" not in (await _last_pull_fields(env, consumer, "*"))
        nothing = await consumer.pull(Q0, 0, tags="zzz")
        assert (nothing.status, nothing.next_offset) == (PullStatus.NO_MATCHED_MSG, 5)


async def _last_pull_fields(env: Env, consumer: PullConsumer, tags: str) -> dict:  # type: ignore[type-arg]
    await consumer.pull(Q0, 0, tags=tags)
    return env.group("g1").requests[-1].fields


async def test_the_client_checks_exact_tags_because_hashes_collide() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        await fill(env, ["a", "c", "b", "c"])
        env.group("g1").collide_tags = True  # the broker now returns every message
        result = await consumer.pull(Q0, 0, tags="a||b")
        assert result.status is PullStatus.FOUND
        assert [(m.tags, m.queue_offset) for m in result.messages] == [("a", 0), ("b", 2)]
        assert result.next_offset == 4
        only_strays = await consumer.pull(Q0, 3, tags="a||b")
        assert (only_strays.status, only_strays.next_offset) == (PullStatus.NO_MATCHED_MSG, 4)


async def test_min_max_and_search_offsets() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        cluster = env.cluster
        start = cluster.wall_ms
        await fill(env, ["a", "b"])
        cluster.wall_ms += 1000
        await fill(env, ["c"])
        assert await consumer.min_offset(Q0) == 0
        assert await consumer.max_offset(Q0) == 3
        assert await consumer.search_offset(Q0, start + 500) == 2
        assert await consumer.search_offset(Q0, start) == 0


async def test_pulls_go_to_the_leader_and_fall_over_to_followers() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        group = env.group("g1")
        ids = await fill(env, ["a"])
        await consumer.pull(Q0, 0)
        assert group.requests[-1].address == group.leader.address
        group.leader.kill()
        result = await consumer.pull(Q0, 0)
        assert [m.msg_id for m in result.messages] == ids
        assert group.requests[-1].node == 1  # the next node, by id
        group.node(1).kill()
        group.node(2).kill()
        with pytest.raises(MQConnectionError):
            await consumer.pull(Q0, 0)


async def test_without_a_leader_any_node_serves_reads() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        group = env.group("g1")
        ids = await fill(env, ["a"])
        await group.elect(None)
        result = await consumer.pull(Q0, 0)
        assert [m.msg_id for m in result.messages] == ids
        assert group.requests[-1].node == 0


async def test_long_poll_returns_when_a_message_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        results = []

        async def poll() -> None:
            results.append(await consumer.pull(Q0, 0, suspend_ms=20_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(5)
            assert not results
            await fill(env, ["late"])
        assert results[0].status is PullStatus.FOUND
        assert trio.current_time() < 20
        timed_out = await consumer.pull(Q0, 1, suspend_ms=20_000)
        assert timed_out.status is PullStatus.NO_NEW_MSG


async def test_broker_errors_surface_as_broker_error() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        from tests.mq.fake_broker import Fault

        env.group("g1").fault(Fault(RequestCode.PULL_MESSAGE, error=ErrorCode.TOPIC_NOT_EXIST))
        with pytest.raises(BrokerError) as caught:
            await consumer.pull(Q0, 0)
        assert caught.value.code == ErrorCode.TOPIC_NOT_EXIST


async def test_view_message_by_id() -> None:
    async with fake_env() as env, PullConsumer(env.namesrv) as consumer:
        (msg_id,) = await fill(env, ["a"])
        message = await consumer.view_message("orders", msg_id)
        assert message is not None and message.msg_id == msg_id and message.body == b"a"
        assert await consumer.view_message("orders", "0" * 32) is None
