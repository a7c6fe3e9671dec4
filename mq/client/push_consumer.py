"""The push consumer: a consumer group member that is handed messages, built on pulls.

RocketMQ's DefaultMQPushConsumer, concurrently consuming. The application subscribes
to topics and supplies a handler (or iterates over deliveries); the consumer does the
rest:

- **Membership and rebalance.** It sends HEARTBEAT to every node of every broker group
  hosting a subscribed topic (every `heartbeat_interval_ms`, and at once on start), so
  each node knows the group's members even after a failover. Every
  `rebalance_interval_ms`, and at once when a broker pushes
  NOTIFY_CONSUMER_IDS_CHANGED, it reads the member list (GET_CONSUMER_LIST) and lets
  the allocation strategy (mq/client/rebalance.py) pick its queues. In broadcasting
  mode every member takes every queue.
- **Pulling.** Each assigned queue has a task that long-polls it (to the group's
  leader, else a follower: mq/client/broker_requests.py) and caches what arrives in
  the queue's `ProcessQueue`, pausing while that cache is full (flow control).
- **Handling.** At most `handlers_max` messages are handled at once. A message is
  acked when its handler returns (None or `ConsumeResult.SUCCESS`); a handler that
  raises or returns `ConsumeResult.RETRY` gets the message again after
  `retry_delay_ms`, as often as it takes (it is never dropped).
- **Offsets.** The offset committed for a queue is the lowest offset still in flight,
  so a crash redelivers rather than loses (at-least-once). Commits go out every
  `commit_interval_ms`, when a queue is taken away, and on close: to the broker
  groups in clustering mode, to a local file in broadcasting mode
  (mq/client/offset_store.py). A queue without a committed offset starts where
  `consume_from` says.
- **Resets.** An admin reset (a NOTIFY with `reset_topic`, or a commit answered
  `stale`) drops what was cached for the topic's queues and reads their offsets again.

The iterator form (`deliveries()`) hands out the same messages as `Delivery` objects
that must be settled explicitly with `ack()` or `retry()`: an unsettled delivery holds
its queue's committed offset below it, so forgetting one can only cause a redelivery,
never a loss; at most `handlers_max` deliveries are unsettled at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import anyio
import anyio.abc
import structlog

from mq.client.broker_requests import request_any_node
from mq.client.errors import ClientClosedError, MQClientError
from mq.client.host import local_ipv4
from mq.client.instance import ClientInstance
from mq.client.offset_store import (
    BrokerOffsetStore,
    CommitEntry,
    LocalOffsetStore,
    OffsetStore,
)
from mq.client.process_queue import ProcessQueue
from mq.client.pull_consumer import PULL_COUNT_MAX, PullConsumer, PullStatus, TagFilter
from mq.client.queues import MessageQueue, readable_queues
from mq.client.rebalance import AllocateAveragely, AllocateStrategy
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT
from mq.client.task_set import TaskSet
from mq.fields import FieldError, get_list
from mq.message import MessageExt
from mq.protocol import ErrorCode, Frame, RequestCode, request
from mq.route import TopicRoute
from storage.record import validate_topic

_log = structlog.get_logger("mq.client.push")

HANDLERS_MAX_DEFAULT = 20
QUEUE_MESSAGES_MAX_DEFAULT = 1000
QUEUE_BYTES_MAX_DEFAULT = 100 * 1024 * 1024
PULL_BATCH_DEFAULT = 32
SUSPEND_MS_DEFAULT = 20_000
REBALANCE_INTERVAL_MS_DEFAULT = 20_000
HEARTBEAT_INTERVAL_MS_DEFAULT = 10_000
COMMIT_INTERVAL_MS_DEFAULT = 1_000
RETRY_DELAY_MS_DEFAULT = 1_000
SHUTDOWN_TIMEOUT_MS_DEFAULT = 10_000
PULL_ERROR_DELAY_MS_DEFAULT = 1_000
"""Pause of a queue's pull after a failed pull or offset read (RocketMQ: 3 s)."""
OFFSET_BACKWARD_REFUSALS = 3
"""OFFSET_ILLEGAL answers pointing *below* the pull offset that are waited out (each
after `pull_error_delay_ms`) before the queue moves back as told: a lagging follower
catches up meanwhile, while a queue that really lost messages is not stuck forever.
(RocketMQ's slaves never correct an offset downwards, for the same reason.)"""
PULL_EMPTY_DELAY_MS = 100
"""Pause after an empty answer that came back well before `suspend_ms`: a broker that
does not hold the request (a node that does not know the queue yet) must not turn
the pull loop into a busy loop."""


class MessageModel(StrEnum):
    CLUSTERING = "clustering"
    """Each message goes to one member of the group; offsets live on the brokers."""
    BROADCASTING = "broadcasting"
    """Every member gets every message; each keeps its offsets in a local file."""


class ConsumeFrom(StrEnum):
    """Where a queue without a committed offset starts (RocketMQ's ConsumeFromWhere)."""

    FIRST = "first"
    LAST = "last"
    TIMESTAMP = "timestamp"


class ConsumeResult(StrEnum):
    SUCCESS = "SUCCESS"
    """Handled: the message no longer holds the committed offset back."""
    RETRY = "RETRY"
    """Not handled: deliver it again after `retry_delay_ms` (RECONSUME_LATER)."""


Handler = Callable[[MessageExt], Awaitable["ConsumeResult | None"]]
AssignmentListener = Callable[[str, list[MessageQueue]], object]
"""on_assignment(topic, queues): this member's queues of `topic` changed (RocketMQ's
MessageQueueListener); a plain function or a coroutine function."""
"""Handles one message. Returning None or SUCCESS acks it; RETRY or an exception has
it delivered again later."""


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    tags: str
    filter: TagFilter


@dataclass(slots=True)
class _Work:
    pq: ProcessQueue
    message: MessageExt
    settled: bool = False


@dataclass(order=True, slots=True)
class _Retry:
    due_s: float
    seq: int
    work: _Work = field(compare=False)


class Delivery:
    """One message handed out by `PushConsumer.deliveries()`. Settle it exactly once:
    `await ack()` when handled, `await retry()` to get it again later. Until then it
    counts against `handlers_max` and holds its queue's committed offset below it."""

    __slots__ = ("_consumer", "_work")

    def __init__(self, consumer: PushConsumer, work: _Work) -> None:
        self._consumer = consumer
        self._work = work

    @property
    def message(self) -> MessageExt:
        return self._work.message

    @property
    def attempt(self) -> int:
        """1 on the first delivery, 2 on the first retry, ..."""
        return self._work.message.reconsume_times + 1

    @property
    def settled(self) -> bool:
        return self._work.settled

    async def ack(self) -> None:
        """The message was handled; raises RuntimeError if already settled."""
        self._consumer._settle(self._work, handled=True)

    async def retry(self, delay_ms: int | None = None) -> None:
        """Deliver the message again after `delay_ms` (default: the consumer's
        `retry_delay_ms`); raises RuntimeError if already settled."""
        self._consumer._settle(self._work, handled=False, delay_ms=delay_ms)


class PushConsumer:
    """A consumer group member. `async with PushConsumer(namesrv, "group") as c:`

    Subscribe (`subscribe(topic, tags)`) and set the handler (`handler=` or
    `register_handler`) before entering, or iterate over `deliveries()` instead.
    """

    def __init__(
        self,
        namesrv: Sequence[str] | str,
        group: str,
        *,
        handler: Handler | None = None,
        model: MessageModel | str = MessageModel.CLUSTERING,
        consume_from: ConsumeFrom | str = ConsumeFrom.LAST,
        consume_timestamp_ms: int | None = None,
        allocate: AllocateStrategy | None = None,
        client_id: str | None = None,
        instance_name: str = "default",
        offsets_dir: str | os.PathLike[str] | None = None,
        handlers_max: int = HANDLERS_MAX_DEFAULT,
        pull_batch: int = PULL_BATCH_DEFAULT,
        suspend_ms: int = SUSPEND_MS_DEFAULT,
        queue_messages_max: int = QUEUE_MESSAGES_MAX_DEFAULT,
        queue_bytes_max: int = QUEUE_BYTES_MAX_DEFAULT,
        rebalance_interval_ms: int = REBALANCE_INTERVAL_MS_DEFAULT,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS_DEFAULT,
        commit_interval_ms: int = COMMIT_INTERVAL_MS_DEFAULT,
        retry_delay_ms: int = RETRY_DELAY_MS_DEFAULT,
        pull_error_delay_ms: int = PULL_ERROR_DELAY_MS_DEFAULT,
        shutdown_timeout_ms: int = SHUTDOWN_TIMEOUT_MS_DEFAULT,
        request_timeout_ms: int = 3_000,
        connect_timeout_ms: int = 3_000,
        route_refresh_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
        on_assignment: AssignmentListener | None = None,
    ) -> None:
        if not group or len(group) > 255:
            raise ValueError("a consumer group name of 1 to 255 characters is needed")
        self.group = group
        self.model = MessageModel(model)
        self.consume_from = ConsumeFrom(consume_from)
        if self.consume_from is ConsumeFrom.TIMESTAMP and consume_timestamp_ms is None:
            raise ValueError("consume_from 'timestamp' needs consume_timestamp_ms")
        self.consume_timestamp_ms = consume_timestamp_ms
        self.allocate: AllocateStrategy = allocate if allocate is not None else AllocateAveragely()
        self.client_id = client_id or f"{local_ipv4()}@{os.getpid()}@{uuid.uuid4().hex[:8]}"
        base = Path(offsets_dir) if offsets_dir is not None else Path.home() / ".mq" / "offsets"
        self.offsets_path = base / _file_name(group) / f"{_file_name(instance_name)}.json"
        """Broadcasting only: this member's offsets file (`instance_name` must be
        stable across restarts and distinct per member sharing a host and group)."""
        positive = {
            "handlers_max": handlers_max,
            "pull_batch": pull_batch,
            "queue_messages_max": queue_messages_max,
            "queue_bytes_max": queue_bytes_max,
            "rebalance_interval_ms": rebalance_interval_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "commit_interval_ms": commit_interval_ms,
            "shutdown_timeout_ms": shutdown_timeout_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if pull_batch > PULL_COUNT_MAX:
            raise ValueError(f"pull_batch must be at most {PULL_COUNT_MAX}")
        if suspend_ms < 0 or retry_delay_ms < 0 or pull_error_delay_ms < 0:
            raise ValueError("delays must not be negative")
        self.handlers_max = handlers_max
        self.pull_batch = pull_batch
        self.suspend_ms = suspend_ms
        self.queue_messages_max = queue_messages_max
        self.queue_bytes_max = queue_bytes_max
        self.rebalance_interval_ms = rebalance_interval_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.commit_interval_ms = commit_interval_ms
        self.retry_delay_ms = retry_delay_ms
        self.pull_error_delay_ms = pull_error_delay_ms
        self.shutdown_timeout_ms = shutdown_timeout_ms
        self._handler = handler
        self._on_assignment = on_assignment
        self._client = ClientInstance(
            namesrv,
            request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            route_refresh_ms=route_refresh_ms,
            on_request=self._on_request,
        )
        self._puller = PullConsumer.sharing(self._client)
        self._store: OffsetStore = (
            BrokerOffsetStore(self._client, group)
            if self.model is MessageModel.CLUSTERING
            else LocalOffsetStore(self.offsets_path, group)
        )
        self._subscriptions: dict[str, Subscription] = {}
        self._queues: dict[MessageQueue, ProcessQueue] = {}
        self._heartbeated: set[str] = set()
        """Every node we sent a heartbeat to: each gets UNREGISTER_CLIENT on close."""
        ready_send, ready_receive = anyio.create_memory_object_stream[_Work](math.inf)
        # Unbounded as a stream, bounded in fact: everything in it is held by a process
        # queue, and those stop pulling at queue_messages_max each.
        self._ready_send = ready_send
        self._ready_receive = ready_receive
        self._retries: list[_Retry] = []
        self._retry_seq = itertools.count()
        self._retry_wake = anyio.Event()
        self._rebalance_wanted = anyio.Event()
        self._heartbeat_wanted = anyio.Event()
        self._reset_topics: set[str] = set()
        self._resubscribed: set[str] = set()
        """Topics whose tags changed while running: their queues start over from the
        offsets handled so far, pulling with the new tags."""
        self._rebalance_lock = anyio.Lock()
        self._in_flight = 0
        # Set when the last message in flight settles, for a close that waits for it;
        # made only then (an Event per message would be a good part of the per-message
        # cost: anyio finds the backend on every Event()).
        self._idle: anyio.Event | None = None
        self._slots = anyio.Semaphore(handlers_max)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loops = TaskSet("loops")
        self._workers = TaskSet("handlers")
        self._started = False
        self._closing = False
        self._closed = False

    # --- configuration -----------------------------------------------------------------

    def subscribe(self, topic: str, tags: str | None = "*") -> None:
        """Consume `topic`, messages whose tag matches `tags` ("*" or "a || b").
        Subscribing again replaces the tags. Works before and after start."""
        validate_topic(topic)
        new = Subscription(topic, tags or "*", TagFilter.parse(tags))
        old = self._subscriptions.get(topic)
        self._subscriptions[topic] = new
        if self._started:
            if old is not None and old.tags != new.tags:
                # Pulls in flight (a long poll held at the broker) still filter by the
                # old tags, and would step past messages only the new tags match.
                self._resubscribed.add(topic)
            self._heartbeat_wanted.set()
            self._rebalance_wanted.set()

    def unsubscribe(self, topic: str) -> None:
        """Stop consuming `topic`: its queues are dropped (their offsets committed) at
        the next rebalance, which is requested at once."""
        if self._subscriptions.pop(topic, None) is not None and self._started:
            self._heartbeat_wanted.set()
            self._rebalance_wanted.set()

    def register_handler(self, handler: Handler) -> None:
        """The coroutine function that handles each message (see `Handler`)."""
        if self._handler is not None:
            raise RuntimeError("a handler is already registered")
        self._handler = handler
        if self._workers.running:
            for _ in range(self.handlers_max):
                self._workers.start_soon(self._work_loop, handler)

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        return dict(self._subscriptions)

    @property
    def in_flight(self) -> int:
        """Messages being handled now (unsettled deliveries in the iterator form)."""
        return self._in_flight

    @property
    def assigned(self) -> list[MessageQueue]:
        """The queues this member consumes now, sorted."""
        return sorted(self._queues)

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> PushConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect, heartbeat every node, take this member's queues, start consuming.
        Returns once the first rebalance is done (or failed: it is retried every
        `rebalance_interval_ms`; brokers that are down do not stop a start)."""
        if self._started or self._closed:
            raise ClientClosedError("a consumer can be started once")
        if not self._subscriptions:
            raise ValueError("subscribe to a topic before starting")
        self._started = True
        await self._store.open()
        await self._client.start()
        try:
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
        except BaseException:
            await self._client.aclose()
            raise
        self._task_group = task_group
        try:
            await task_group.start(self._workers.run)
            await task_group.start(self._loops.run)
            if self._handler is not None:
                for _ in range(self.handlers_max):
                    self._workers.start_soon(self._work_loop, self._handler)
            await self._heartbeat()
            await self._rebalance()
            self._loops.start_soon(self._heartbeat_loop)
            self._loops.start_soon(self._rebalance_loop)
            self._loops.start_soon(self._commit_loop)
            self._loops.start_soon(self._retry_loop)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop pulling, let handlers in flight finish (up to `shutdown_timeout_ms`),
        commit every queue's offset, unregister from the brokers, disconnect.
        Idempotent. Messages whose handlers had not finished are delivered again later
        (to this group), since the committed offset stays below them."""
        if self._closed:
            return
        self._closed = True
        task_group = self._task_group
        if task_group is None:
            self._store.close()  # a start that failed part way
            return
        self._closing = True
        try:
            # Shielded: a close caused by cancellation must still commit and unregister
            # (every step is bounded by a timeout).
            with anyio.CancelScope(shield=True):
                await self._loops.cancel_and_wait()
                self._ready_send.close()
                if self._in_flight:
                    idle = self._idle = anyio.Event()
                    with anyio.move_on_after(self.shutdown_timeout_ms / 1000):
                        await idle.wait()
                await self._workers.cancel_and_wait()
                await self._commit(final=True)
                await self._unregister()
        finally:
            # Outside the shield: the task group was entered before it (scopes nest).
            task_group.cancel_scope.cancel()
            try:
                await task_group.__aexit__(None, None, None)
            finally:
                await self._client.aclose()
                self._store.close()

    # --- the iterator form -------------------------------------------------------------

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Messages as `Delivery` objects, until the consumer closes. Settle each with
        `await delivery.ack()` or `await delivery.retry()`. Not available together with
        a handler (they would compete for the same messages)."""
        if self._handler is not None:
            raise RuntimeError("this consumer has a handler: deliveries() is for consumers without")
        if not self._started or self._closed:
            raise ClientClosedError("not started: use `async with`")
        while True:
            await self._slots.acquire()
            try:
                work = await self._next_work()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._slots.release()
                return
            if work is None:
                self._slots.release()
                continue
            yield Delivery(self, work)

    # --- handling ------------------------------------------------------------------------

    async def _next_work(self) -> _Work | None:
        """The next message to hand out, or None for one that must be skipped (its
        queue was dropped, or we are closing). Counts it as in flight."""
        work = await self._ready_receive.receive()
        if self._closing or work.pq.dropped or not work.pq.holds(work.message.queue_offset):
            return None
        work.settled = False
        self._in_flight += 1
        return work

    async def _work_loop(self, handler: Handler) -> None:
        while True:
            try:
                work = await self._next_work()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if work is None:
                continue
            try:
                result = await handler(work.message)
            except Exception as exc:
                _log.warning(
                    "handler_failed",
                    queue=str(work.pq.mq),
                    offset=work.message.queue_offset,
                    error=f"{type(exc).__name__}: {exc}",
                )
                result = ConsumeResult.RETRY
            self._settle(work, handled=result is None or result == ConsumeResult.SUCCESS)

    def _settle(self, work: _Work, *, handled: bool, delay_ms: int | None = None) -> None:
        if work.settled:
            raise RuntimeError("this delivery is already settled")
        work.settled = True
        self._in_flight -= 1
        assert self._in_flight >= 0
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()
        if self._handler is None:
            self._slots.release()
        pq, offset = work.pq, work.message.queue_offset
        if pq.dropped:
            return  # the queue moved on; its new owner delivers the message again
        if handled:
            pq.remove(offset)
        elif not self._closing:
            work.message.reconsume_times += 1
            delay_s = (self.retry_delay_ms if delay_ms is None else max(0, delay_ms)) / 1000
            heapq.heappush(
                self._retries, _Retry(anyio.current_time() + delay_s, next(self._retry_seq), work)
            )
            self._retry_wake.set()

    async def _retry_loop(self) -> None:
        """Hands failed messages out again once their delay is over."""
        while True:
            now = anyio.current_time()
            while self._retries and self._retries[0].due_s <= now:
                work = heapq.heappop(self._retries).work
                if not work.pq.dropped:
                    self._ready_send.send_nowait(work)
            wait_s = self._retries[0].due_s - now if self._retries else math.inf
            with anyio.move_on_after(wait_s):
                await self._retry_wake.wait()
            self._retry_wake = anyio.Event()

    # --- pulling -----------------------------------------------------------------------

    async def _pull_loop(self, pq: ProcessQueue) -> None:
        """Pull one queue into its process queue until the queue is dropped."""
        error_delay_s = self.pull_error_delay_ms / 1000
        refusals_backward = 0
        with pq.cancel_scope:
            while pq.pulled_to is None:
                try:
                    await self._take(pq)
                except MQClientError as exc:
                    # A broker may be electing (it passes); a damaged offsets file of a
                    # broadcasting member stays until someone fixes it: say so louder.
                    log = _log.info if self.model is MessageModel.CLUSTERING else _log.warning
                    log("offset_read_failed", queue=str(pq.mq), error=str(exc))
                    await anyio.sleep(error_delay_s)
            while not pq.dropped:
                await pq.wait_for_room()
                subscription = self._subscriptions.get(pq.mq.topic)
                if subscription is None:
                    return  # unsubscribed: the next rebalance drops the queue
                offset = pq.pulled_to
                assert offset is not None
                asked_s = anyio.current_time()
                try:
                    result = await self._puller.pull(
                        pq.mq,
                        offset,
                        max_count=self.pull_batch,
                        tags=subscription.tags,
                        suspend_ms=self.suspend_ms,
                    )
                except MQClientError as exc:
                    _log.info("pull_failed", queue=str(pq.mq), error=str(exc))
                    await anyio.sleep(error_delay_s)
                    continue
                if pq.dropped:
                    return
                if result.status is PullStatus.OFFSET_ILLEGAL:
                    backward = result.next_offset < offset
                    if backward and refusals_backward < OFFSET_BACKWARD_REFUSALS:
                        # A node that has less than we already read is a follower
                        # catching up, not a reason to deliver everything again.
                        refusals_backward += 1
                        await anyio.sleep(error_delay_s)
                        continue
                    _log.info(
                        "pull_offset_moved", queue=str(pq.mq), offset=offset, to=result.next_offset
                    )
                    pq.move_to(result.next_offset)
                    continue
                refusals_backward = 0
                for message in pq.put(result.messages, result.next_offset):
                    self._ready_send.send_nowait(_Work(pq, message))
                quick_s = self.suspend_ms / 2000
                if not result.messages and anyio.current_time() - asked_s < quick_s:
                    await anyio.sleep(PULL_EMPTY_DELAY_MS / 1000)

    async def _take(self, pq: ProcessQueue) -> None:
        """Find where a newly taken queue starts: its committed offset, else where
        `consume_from` says."""
        stored = await self._store.read(pq.mq)
        offset = stored.offset
        if offset is None:
            if self.consume_from is ConsumeFrom.FIRST:
                offset = await self._puller.min_offset(pq.mq)
            elif self.consume_from is ConsumeFrom.LAST:
                offset = await self._puller.max_offset(pq.mq)
            else:
                assert self.consume_timestamp_ms is not None
                offset = await self._puller.search_offset(pq.mq, self.consume_timestamp_ms)
        if not pq.dropped:
            pq.start_at(offset, generation=stored.generation, committed=stored.offset)

    # --- rebalance ---------------------------------------------------------------------

    async def _rebalance_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.rebalance_interval_ms / 1000):
                await self._rebalance_wanted.wait()
            await self._rebalance()

    async def _rebalance(self) -> None:
        """Apply pending resets, then recompute this member's queues, topic by topic."""
        self._rebalance_wanted = anyio.Event()
        async with self._rebalance_lock:
            resets, self._reset_topics = self._reset_topics, set()
            for topic in sorted(resets):
                await self._reset(topic)
            resubscribed, self._resubscribed = self._resubscribed, set()
            for topic in sorted(resubscribed - resets):
                for pq in [pq for mq, pq in self._queues.items() if mq.topic == topic]:
                    await self._drop(pq, commit=True)
                    self._start_queue(pq.mq)
            for topic in sorted(self._subscriptions):
                try:
                    await self._rebalance_topic(topic)
                except MQClientError as exc:
                    _log.info("rebalance_failed", topic=topic, error=str(exc))
            gone = sorted(mq for mq in self._queues if mq.topic not in self._subscriptions)
            for mq in gone:
                await self._drop(self._queues[mq], commit=True)
            for topic in sorted({mq.topic for mq in gone}):
                await self._assignment_changed(topic, [])

    async def _rebalance_topic(self, topic: str) -> None:
        route = await self._client.routes.get(topic)
        queues = sorted(readable_queues(route))
        if self.model is MessageModel.BROADCASTING:
            mine = set(queues)
        else:
            members = await self._members(route)
            if self.client_id not in members:
                # The node has not heard from us (it restarted, or our heartbeat is on
                # its way): RocketMQ would drop every queue here and take them back a
                # moment later. Keep them instead and heartbeat now; the node then
                # notifies everyone, and we rebalance with ourselves in the list.
                _log.info("not_a_member_yet", topic=topic, members=members)
                self._heartbeat_wanted.set()
                return
            mine = set(self.allocate.allocate(self.group, self.client_id, members, queues))
        before = {mq for mq in self._queues if mq.topic == topic}
        for mq in sorted(before - mine):
            await self._drop(self._queues[mq], commit=True)
        for mq in sorted(mine - before):
            self._start_queue(mq)
        _log.debug("rebalanced", topic=topic, queues=[str(q) for q in sorted(mine)])
        if mine != before:
            await self._assignment_changed(topic, sorted(mine))

    async def _assignment_changed(self, topic: str, queues: list[MessageQueue]) -> None:
        if self._on_assignment is None:
            return
        try:
            outcome = self._on_assignment(topic, queues)
            if isinstance(outcome, Awaitable):
                await outcome
        except Exception:
            _log.exception("assignment_listener_failed", topic=topic)

    async def _members(self, route: TopicRoute) -> list[str]:
        """The group's members as a broker group of the topic sees them (leader first,
        then followers, then the next broker group)."""
        frame = request(RequestCode.GET_CONSUMER_LIST, {"group": self.group})
        last: MQClientError | None = None
        for group in route.groups:
            try:
                response, _ = await request_any_node(
                    self._client, group.info, frame, topic=route.topic
                )
                client_ids = get_list(response.fields, "client_ids")
            except MQClientError as exc:
                last = exc
                continue
            except FieldError as exc:
                last = MQClientError(f"malformed consumer list from {group.group}: {exc}")
                continue
            return sorted(str(c) for c in client_ids if isinstance(c, str))
        raise last if last is not None else MQClientError(f"topic {route.topic!r} has no group")

    def _start_queue(self, mq: MessageQueue) -> None:
        pq = ProcessQueue(mq, messages_max=self.queue_messages_max, bytes_max=self.queue_bytes_max)
        self._queues[mq] = pq
        self._loops.start_soon(self._pull_loop, pq)

    async def _drop(self, pq: ProcessQueue, *, commit: bool) -> None:
        """Stop consuming `pq`'s queue; with `commit`, commit its offset first so the
        member taking it over starts there."""
        offset = pq.commit_offset()
        pq.drop()
        if self._queues.get(pq.mq) is pq:
            del self._queues[pq.mq]
        if commit and offset is not None and offset != pq.committed:
            await self._store.commit([CommitEntry(pq.mq, offset, pq.generation)])

    async def _reset(self, topic: str) -> None:
        """An admin reset the topic's offsets: forget what was cached and read the
        offsets again (our offsets must not be committed over the reset ones)."""
        if self.model is MessageModel.BROADCASTING:
            _log.info("reset_ignored_in_broadcasting", topic=topic)
            return
        for pq in [pq for mq, pq in self._queues.items() if mq.topic == topic]:
            await self._drop(pq, commit=False)
            self._start_queue(pq.mq)
        _log.info("offsets_reset", topic=topic)

    # --- heartbeats and notifications --------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.heartbeat_interval_ms / 1000):
                await self._heartbeat_wanted.wait()
            await self._heartbeat()

    async def _broker_addresses(self) -> set[str]:
        addresses: set[str] = set()
        for topic in sorted(self._subscriptions):
            try:
                route = await self._client.routes.get(topic)
            except MQClientError as exc:
                _log.info("heartbeat_no_route", topic=topic, error=str(exc))
                continue
            for group in route.groups:
                addresses.update(node.address for node in group.info.nodes)
        return addresses

    async def _heartbeat(self) -> None:
        """HEARTBEAT to every node of every group of the subscribed topics, at once."""
        self._heartbeat_wanted = anyio.Event()
        frame = request(
            RequestCode.HEARTBEAT,
            {
                "client_id": self.client_id,
                "group": self.group,
                "model": self.model.value,
                "topics": sorted(self._subscriptions),
                "consume_from": self.consume_from.value,
            },
        )
        addresses = await self._broker_addresses()
        self._heartbeated.update(addresses)
        async with anyio.create_task_group() as task_group:
            for address in sorted(addresses):
                task_group.start_soon(self._send_to_node, address, frame)

    async def _unregister(self) -> None:
        frame = request(
            RequestCode.UNREGISTER_CLIENT, {"client_id": self.client_id, "group": self.group}
        )
        async with anyio.create_task_group() as task_group:
            for address in sorted(self._heartbeated):
                task_group.start_soon(self._send_to_node, address, frame)

    async def _send_to_node(self, address: str, frame: Frame) -> None:
        try:
            response = await self._client.pool.request(
                address, frame, timeout_s=self._client.request_timeout_s
            )
        except MQClientError as exc:
            _log.info("broker_unreachable", address=address, error=str(exc))
            return
        if not response.ok:
            _log.info(
                "broker_refused", address=address, code=response.error, remark=response.remark
            )

    async def _on_request(self, frame: Frame) -> Frame | None:
        """What brokers push to us. Runs on a connection's reader: only sets flags."""
        if frame.code != RequestCode.NOTIFY_CONSUMER_IDS_CHANGED:
            return frame.make_error(ErrorCode.REQUEST_CODE_NOT_SUPPORTED, "not served by clients")
        if frame.fields.get("group") == self.group:
            reset_topic = frame.fields.get("reset_topic")
            if isinstance(reset_topic, str) and reset_topic in self._subscriptions:
                self._reset_topics.add(reset_topic)
            self._rebalance_wanted.set()
        return None if frame.is_oneway else frame.make_response()

    # --- offsets -----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await anyio.sleep(self.commit_interval_ms / 1000)
            await self._commit()

    async def _commit(self, *, final: bool = False) -> None:
        """Commit every queue whose committable offset moved since its last commit."""
        queues = dict(self._queues)
        entries = []
        for pq in queues.values():
            offset = pq.commit_offset()
            if offset is not None and offset != pq.committed:
                entries.append(CommitEntry(pq.mq, offset, pq.generation))
        if not entries:
            return
        result = await self._store.commit(entries)
        for entry in result.committed:
            pq = queues[entry.mq]
            if self._queues.get(entry.mq) is pq:
                pq.committed = entry.offset
        # Only a queue still consumed under the generation it committed with needs a
        # reset: one already re-read (a reset notification overtook this commit) must
        # not be dropped and re-read a second time.
        stale_topics = {mq.topic for mq in result.stale if self._queues.get(mq) is queues[mq]}
        if stale_topics and not final:
            _log.info("offsets_stale", topics=sorted(stale_topics))
            self._reset_topics.update(stale_topics)
            self._rebalance_wanted.set()


def _file_name(name: str) -> str:
    """`name` as one safe path component (group and instance names become file names)."""
    safe = "".join(c if c.isalnum() or c in "-_.@%" else "_" for c in name)
    return safe if safe.strip(".") else "_"
