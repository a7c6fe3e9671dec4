"""Blocking facade: the async clients, driven from ordinary threads.

Each facade starts an event loop on a background thread (an anyio blocking portal,
asyncio by default, trio on request), opens the async client inside it, and turns
every method into a blocking call. Any number of threads may call one facade at once:
the calls run concurrently on the loop, sharing its connections.

    with BlockingProducer(["127.0.0.1:9876"]) as producer:
        result = producer.send(Message("orders", b"hi"))

Exceptions are the async client's own (SendError, NoRouteError, ...), raised in the
calling thread.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from typing import Any, Generic, TypeVar

import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from mq.client.admin import Admin, BrokerStatus, ConsumerGroupInfo, GroupDescription
from mq.client.errors import ClientClosedError
from mq.client.producer import Producer, SendCallback, SendResult
from mq.client.pull_consumer import PullConsumer, PullResult
from mq.client.push_consumer import ConsumeResult, PushConsumer
from mq.client.queues import MessageQueue, MessageQueueSelector
from mq.message import Message, MessageExt
from mq.route import ClusterInfo, TopicConfig, TopicRoute

T = TypeVar("T")
Client = TypeVar("Client", Producer, PullConsumer, PushConsumer, Admin)

BlockingHandler = Callable[[MessageExt], "ConsumeResult | None"]
"""A push consumer's handler for threaded code: a plain function, run in a worker
thread (at most `handlers_max` at once). Same results as the async `Handler`."""


class _Facade(Generic[Client]):
    def __init__(self, client: Client, backend: str) -> None:
        self._client: Client = client
        self._backend = backend
        self._stack: ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def start(self) -> None:
        if self._stack is not None:
            raise ClientClosedError("already started")
        stack = ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal(self._backend))
            cm: AbstractContextManager[Client] = portal.wrap_async_context_manager(self._client)
            stack.enter_context(cm)
        except BaseException:
            stack.close()
            raise
        self._stack, self._portal = stack, portal

    def close(self) -> None:
        """Close the client (waiting for its async sends), then stop the loop thread."""
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self: T) -> T:
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise ClientClosedError("not started: use `with` or start()")
        return self._portal.call(partial(fn, *args, **kwargs))


class BlockingProducer(_Facade[Producer]):
    """`Producer` for threads; takes the same arguments plus `backend`."""

    def __init__(
        self, namesrv: Sequence[str] | str, *, backend: str = "asyncio", **options: Any
    ) -> None:
        super().__init__(Producer(namesrv, **options), backend)

    @property
    def producer(self) -> Producer:
        return self._client

    def send(
        self, message: Message, *, selector: MessageQueueSelector | None = None, arg: Any = None
    ) -> SendResult:
        result: SendResult = self._call(self._client.send, message, selector=selector, arg=arg)
        return result

    def send_batch(
        self,
        messages: Sequence[Message],
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> SendResult:
        result: SendResult = self._call(
            self._client.send_batch, messages, selector=selector, arg=arg
        )
        return result

    def send_async(
        self,
        message: Message,
        callback: SendCallback | None = None,
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> concurrent.futures.Future[SendResult]:
        """Start a send; returns a `concurrent.futures.Future`. `callback` (a plain
        function) runs on the loop thread when the send completes: keep it short."""
        future: concurrent.futures.Future[SendResult] = concurrent.futures.Future()

        def done(result: SendResult | None, error: BaseException | None) -> None:
            if error is not None:
                future.set_exception(error)
            else:
                assert result is not None
                future.set_result(result)
            if callback is not None:
                callback(result, error)

        self._call(self._client.send_async, message, done, selector=selector, arg=arg)
        return future

    def send_oneway(
        self, message: Message, *, selector: MessageQueueSelector | None = None, arg: Any = None
    ) -> None:
        self._call(self._client.send_oneway, message, selector=selector, arg=arg)


class BlockingPullConsumer(_Facade[PullConsumer]):
    """`PullConsumer` for threads; takes the same arguments plus `backend`."""

    def __init__(
        self, namesrv: Sequence[str] | str, *, backend: str = "asyncio", **options: Any
    ) -> None:
        super().__init__(PullConsumer(namesrv, **options), backend)

    def fetch_queues(self, topic: str) -> list[MessageQueue]:
        queues: list[MessageQueue] = self._call(self._client.fetch_queues, topic)
        return queues

    def pull(
        self,
        mq: MessageQueue,
        offset: int,
        max_count: int = 32,
        tags: str | None = "*",
        *,
        suspend_ms: int = 0,
        max_bytes: int | None = None,
    ) -> PullResult:
        result: PullResult = self._call(
            self._client.pull, mq, offset, max_count, tags, suspend_ms=suspend_ms,
            max_bytes=max_bytes,
        )  # fmt: skip
        return result

    def min_offset(self, mq: MessageQueue) -> int:
        offset: int = self._call(self._client.min_offset, mq)
        return offset

    def max_offset(self, mq: MessageQueue) -> int:
        offset: int = self._call(self._client.max_offset, mq)
        return offset

    def search_offset(self, mq: MessageQueue, timestamp_ms: int) -> int:
        offset: int = self._call(self._client.search_offset, mq, timestamp_ms)
        return offset

    def view_message(self, topic: str, msg_id: str) -> MessageExt | None:
        message: MessageExt | None = self._call(self._client.view_message, topic, msg_id)
        return message


class BlockingPushConsumer(_Facade[PushConsumer]):
    """`PushConsumer` for threads: the handler is a plain function run in worker threads
    (so it may block), everything else runs on the facade's loop thread.

        consumer = BlockingPushConsumer(["127.0.0.1:9876"], "billing", handler=handle)
        consumer.subscribe("orders", "paid")
        with consumer:
            ...  # messages are handled in the background until the block ends

    Takes the same options as `PushConsumer`, plus `backend`.
    """

    def __init__(
        self,
        namesrv: Sequence[str] | str,
        group: str,
        *,
        handler: BlockingHandler | None = None,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        super().__init__(PushConsumer(namesrv, group, **options), backend)
        if handler is not None:
            self.register_handler(handler)

    @property
    def consumer(self) -> PushConsumer:
        return self._client

    def subscribe(self, topic: str, tags: str | None = "*") -> None:
        if self._portal is None:
            self._client.subscribe(topic, tags)
        else:
            self._call(self._client.subscribe, topic, tags)

    def register_handler(self, handler: BlockingHandler) -> None:
        async def in_thread(message: MessageExt) -> ConsumeResult | None:
            # Abandoned when the consumer's close times out (shutdown_timeout_ms): the
            # thread finishes on its own, its message unacked (delivered again later).
            return await anyio.to_thread.run_sync(handler, message, abandon_on_cancel=True)

        if self._portal is None:
            self._client.register_handler(in_thread)
        else:
            self._call(self._client.register_handler, in_thread)

    @property
    def assigned(self) -> list[MessageQueue]:
        if self._portal is None:
            return self._client.assigned
        queues: list[MessageQueue] = self._portal.call(lambda: self._client.assigned)
        return queues


class BlockingAdmin(_Facade[Admin]):
    """`Admin` for threads; takes the same arguments plus `backend`."""

    def __init__(
        self, namesrv: Sequence[str] | str, *, backend: str = "asyncio", **options: Any
    ) -> None:
        super().__init__(Admin(namesrv, **options), backend)

    def create_topic(self, topic: str, queues: int = 8, **options: Any) -> list[str]:
        groups: list[str] = self._call(self._client.create_topic, topic, queues, **options)
        return groups

    def cluster_info(self) -> ClusterInfo:
        info: ClusterInfo = self._call(self._client.cluster_info)
        return info

    def topic_route(self, topic: str) -> TopicRoute:
        route: TopicRoute = self._call(self._client.topic_route, topic)
        return route

    def broker_status(self, address: str) -> BrokerStatus:
        status: BrokerStatus = self._call(self._client.broker_status, address)
        return status

    def all_topics(self, address: str) -> dict[str, TopicConfig]:
        topics: dict[str, TopicConfig] = self._call(self._client.all_topics, address)
        return topics

    def consumer_groups(self) -> list[ConsumerGroupInfo]:
        groups: list[ConsumerGroupInfo] = self._call(self._client.consumer_groups)
        return groups

    def describe_group(self, group: str, topics: Sequence[str] | None = None) -> GroupDescription:
        described: GroupDescription = self._call(self._client.describe_group, group, topics)
        return described

    def reset_offset(
        self, group: str, topic: str, to: str, *, timestamp_ms: int | None = None
    ) -> dict[MessageQueue, int]:
        offsets: dict[MessageQueue, int] = self._call(
            self._client.reset_offset, group, topic, to, timestamp_ms=timestamp_ms
        )
        return offsets
