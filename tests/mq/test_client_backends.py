"""The same client scenarios under asyncio and trio, and the blocking facade.

The fake brokers and the NameServer run on trio in a thread of their own (an anyio
blocking portal), so the client under test owns its event loop, whichever it is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest
from anyio.from_thread import start_blocking_portal

from mq.client import (
    Admin,
    ConsumeResult,
    Message,
    MessageExt,
    MessageQueue,
    Producer,
    PullConsumer,
    PullStatus,
    PushConsumer,
    SelectByHash,
    SendError,
)
from mq.client.blocking import (
    BlockingAdmin,
    BlockingProducer,
    BlockingPullConsumer,
    BlockingPushConsumer,
)
from mq.protocol import ErrorCode, RequestCode
from tests.mq.fake_broker import Env, Fault, fake_env


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(fake_env()) as running,
    ):
        yield running


async def produce_and_consume(env: Env, topic: str) -> None:
    """Create a topic, send every way there is, pull it all back with tag filtering."""
    async with Admin(env.namesrv) as admin:
        await admin.create_topic(topic, queues=1, group="g1")
    queue = MessageQueue(topic, "g1", 0)
    async with Producer(env.namesrv) as producer:
        ids = [(await producer.send(Message(topic, b"one", tags="a"))).msg_id]
        batch = await producer.send_batch([Message(topic, b"two", tags="b"), Message(topic, b"3")])
        ids += batch.msg_ids
        seen = []
        future = await producer.send_async(
            Message(topic, b"four", tags="a"), lambda r, e: seen.append(r)
        )
        ids.append((await future).msg_id)
        ordered = await producer.send(Message(topic, b"five"), selector=SelectByHash(), arg=7)
        ids.append(ordered.msg_id)
        assert ordered.queue == queue and seen[0].msg_id == ids[3]
    async with PullConsumer(env.namesrv) as consumer:
        everything = await consumer.pull(queue, 0)
        assert [m.msg_id for m in everything.messages] == ids
        tagged = await consumer.pull(queue, 0, tags="a || b")
        assert [m.body for m in tagged.messages] == [b"one", b"two", b"four"]
        assert (await consumer.pull(queue, 5)).status is PullStatus.NO_NEW_MSG
        assert await consumer.max_offset(queue) == 5


async def send_errors_are_clear(env: Env, topic: str) -> None:
    async with Admin(env.namesrv) as admin:
        await admin.create_topic(topic, queues=1, group="g2")
    env.group("g2").fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.MESSAGE_TOO_LARGE))
    async with Producer(env.namesrv) as producer:
        with pytest.raises(SendError) as caught:
            await producer.send(Message(topic, b"x"))
        assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE


async def push_consumer_handles_and_commits(env: Env, topic: str) -> None:
    """A push consumer (anyio only) with a handler, then the iterator form."""
    async with Admin(env.namesrv) as admin:
        await admin.create_topic(topic, queues=2, group="g1")
    async with Producer(env.namesrv) as producer:
        ids = [(await producer.send(Message(topic, f"m{i}".encode()))).msg_id for i in range(4)]
    handled: list[str] = []
    done = anyio.Event()

    async def handler(message: MessageExt) -> None:
        handled.append(message.msg_id)
        if len(handled) == len(ids):
            done.set()

    group = f"cg-{topic}"
    consumer = PushConsumer(env.namesrv, group, handler=handler, consume_from="first")
    consumer.subscribe(topic)
    async with consumer:
        with anyio.fail_after(30):
            await done.wait()
    assert sorted(handled) == sorted(ids)
    offsets = env.group("g1").consumer_offsets
    assert sum(offsets[(group, topic, q)] for q in range(2)) == 4  # committed on close
    iterating = PushConsumer(env.namesrv, f"{group}-it", consume_from="first")
    iterating.subscribe(topic)
    got = []
    async with iterating:
        with anyio.fail_after(30):
            async for delivery in iterating.deliveries():
                got.append(delivery.message.msg_id)
                await delivery.ack()
                if len(got) == len(ids):
                    break
    assert sorted(got) == sorted(ids)


SCENARIOS = [produce_and_consume, send_errors_are_clear, push_consumer_handles_and_commits]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_client_runs_under(env: Env, backend: str, scenario) -> None:  # type: ignore[no-untyped-def]
    topic = f"{scenario.__name__}-{backend}"
    anyio.run(scenario, env, topic, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_facade_from_threads(env: Env, backend: str) -> None:
    topic = f"blocking-{backend}"
    with BlockingAdmin(env.namesrv, backend=backend) as admin:
        assert admin.create_topic(topic, 1, group="g1") == ["g1"]
        assert admin.cluster_info().clusters() == {"c1": ["g1", "g2"]}
        assert [g.group for g in admin.topic_route(topic).groups] == ["g1"]
    queue = MessageQueue(topic, "g1", 0)
    with BlockingProducer(env.namesrv, backend=backend) as producer:
        results = []

        def worker(i: int) -> None:
            results.append(producer.send(Message(topic, f"t{i}".encode())))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 4
        futures = [producer.send_async(Message(topic, b"async")) for _ in range(3)]
        assert all(f.result(timeout=30).status == "SEND_OK" for f in futures)
        producer.send_batch([Message(topic, b"b1"), Message(topic, b"b2")])
        producer.send_oneway(Message(topic, b"oneway"))
    with BlockingPullConsumer(env.namesrv, backend=backend) as consumer:
        assert consumer.fetch_queues(topic) == [queue]
        pulled = consumer.pull(queue, 0)
        assert len(pulled.messages) >= 9  # the one-way send may still be on its way
        assert consumer.min_offset(queue) == 0
        assert consumer.view_message(topic, pulled.messages[0].msg_id) is not None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_push_consumer_runs_its_handler_in_threads(env: Env, backend: str) -> None:
    topic = f"blocking-push-{backend}"
    with BlockingAdmin(env.namesrv, backend=backend) as admin:
        admin.create_topic(topic, 2, group="g2")
    with BlockingProducer(env.namesrv, backend=backend) as producer:
        ids = [producer.send(Message(topic, f"b{i}".encode())).msg_id for i in range(5)]
    handled: list[tuple[str, str]] = []
    all_handled = threading.Event()

    def handler(message: MessageExt) -> ConsumeResult | None:
        handled.append((message.msg_id, threading.current_thread().name))
        if len(handled) == len(ids):
            all_handled.set()
        return None

    consumer = BlockingPushConsumer(
        env.namesrv, f"cg-{topic}", handler=handler, backend=backend, consume_from="first"
    )
    consumer.subscribe(topic)
    with consumer:
        assert all_handled.wait(timeout=30)
        assert consumer.assigned == [MessageQueue(topic, "g2", q) for q in range(2)]
    assert sorted(i for i, _ in handled) == sorted(ids)
    assert threading.main_thread().name not in {name for _, name in handled}
    # The group's admin calls, from a thread, as the async Admin has them.
    with BlockingAdmin(env.namesrv, backend=backend) as admin:
        assert f"cg-{topic}" in {g.group for g in admin.consumer_groups()}
        described = admin.describe_group(f"cg-{topic}", [topic])
        assert described.lag == 0 and len(described.queues) == 2
        offsets = admin.reset_offset(f"cg-{topic}", topic, "first")
        assert set(offsets.values()) == {0}


def test_blocking_facade_must_be_started(env: Env) -> None:
    from mq.client import ClientClosedError

    producer = BlockingProducer(env.namesrv)
    with pytest.raises(ClientClosedError):
        producer.send(Message("orders", b"x"))
