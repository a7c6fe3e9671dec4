"""The producer: sends messages to the leader of a broker group, with retries that
cannot duplicate a batch inside a group.

Every batch (one message is a batch of one) gets, once, before its first attempt:
message ids from the producer's `MessageIdGenerator`, and an idempotence *lane* with
the lane's next sequence number `seq`. Every retry of the batch carries the same ids
and the same (lane id, seq), so a group that already stored it (the answer was lost,
or timed out) answers with the original result instead of storing it twice (see
docs/broker-api.md, SEND_MESSAGE).

Lanes exist because a group remembers only the *last* batch of each producer id: a
batch whose seq is below the last stored one is refused as an old duplicate, stored or
not. Concurrent sends (send_async, several tasks or threads sharing a producer) would
overtake one another's seqs - on the wire, in the broker's scheduling, and above all
when one of them is retried after a failover - and lose messages that way. So each
batch holds a lane of its own from its first attempt to its last: lane 0 is
`producer_id` itself (all a sequential producer ever uses), lane n is
`producer_id/n`, and within a lane one batch follows another.

Retry rules (`retries`, default 2, so at most 3 requests per send):

- NOT_LEADER naming a leader: retry the same queue at that leader (it is remembered as
  the group's leader until a route refresh confirms it), and refresh the route.
- NOT_LEADER without a leader (an election): the next attempt goes to another group.
- A connection failure or a timeout: the group is avoided (latency fault tolerance,
  `mq.client.fault`), the route is re-read from a NameServer before the next attempt,
  which goes to a queue of another group when there is one.
- Waiting out an election: when a group's leader is unreachable or the group has no
  leader, and the send has nowhere else to go (an ordered send stays on its group;
  others look for any writable group whose leader has not failed this send), the
  next attempt first waits for the NameServers to name such a leader, reading the
  route every 50 ms, then every 100 ms (a topic still to be auto-created: the cluster's
  groups). Nodes that failed or said they do not lead during the send are not waited
  for. The wait ends `send_timeout_ms` after the send began (an auto-batched send:
  after `send` was called); a kill -9 of the leader therefore costs a send the
  election (about a second), not its failure. Fast failures would otherwise spend all
  the retries within milliseconds, long before any election is over.
- NO_ROUTE (the queue id is beyond the topic's write queues in that group: our route
  was provisional or stale): the answer's `write_queues` corrects the cached route and
  the next attempt picks a queue again (an ordered send keeps its queue and fails after
  its retries: its selector chose from a route the group does not agree with).
- SYSTEM_BUSY, SYSTEM_ERROR, SERVICE_NOT_AVAILABLE, REPLICATION_TIMEOUT, FLUSH_TIMEOUT,
  TOPIC_NOT_EXIST, NO_PERMISSION: the group's latency is recorded, the next attempt
  prefers another group (RocketMQ's retryable broker codes, plus our replication ones).
- Anything else (INVALID_TOPIC, MESSAGE_TOO_LARGE, INVALID_REQUEST, ...): no retry.

Ordered sends (`selector=`): the selector picks the queue once and every retry stays
on that queue (possibly at its group's new leader); an ordered message never falls
over to another queue, since that would reorder it against its shard's other messages.

Queue selection for other sends is RocketMQ's with latency fault tolerance on: round-
robin over the writable queues of groups that are available and have a known leader,
preferring a group other than the one that just failed; if no group is available, one
of the least bad half (`LatencyFaultTolerance.pick_one_at_least`).
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from mq.client.auto_batch import MESSAGES_MAX_DEFAULT, SENDERS_MAX_DEFAULT, Accumulator
from mq.client.errors import (
    BrokerError,
    ClientClosedError,
    MQClientError,
    MQConnectionError,
    MQTimeoutError,
    NoRouteError,
    NotLeaderError,
    SendError,
    SendTimeoutError,
)
from mq.client.fault import LatencyFaultTolerance
from mq.client.host import local_ipv4
from mq.client.instance import ClientInstance
from mq.client.queues import MessageQueue, MessageQueueSelector, writable_queues
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT
from mq.fields import FieldError, get_int, get_list
from mq.message import Message, MessageIdGenerator
from mq.protocol import FRAME_BYTES_MAX, ErrorCode, Frame, RequestCode, error_name, request
from mq.route import GroupRoute, Perm, TopicRoute
from storage.record import FRAME_HEADER_BYTES, MESSAGE_BYTES_MAX, encode_messages

SEND_TIMEOUT_MS_DEFAULT = 3_000
RETRIES_DEFAULT = 2
LEADER_POLL_FIRST_S = 0.05
LEADER_POLL_MAX_S = 0.1
"""The pauses between NameServer reads while a send waits out an election: short, as
each one can add to the failover a send sees (with 500 ms, `mq bench failover` took
1.28 s against 0.79 s for the election itself), and concurrent waits share each read."""
RETRY_PAUSE_FIRST_S = 0.05
RETRY_PAUSE_MAX_S = 0.2
"""A retry after a busy / unavailable answer that can only go back to the same group
waits 50 ms, then 100, 200 ms (bounded by send_timeout_ms): asking again at once would
only meet the same condition."""
BATCH_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
"""Largest encoded batch (RocketMQ's 4 MiB); well under the 16 MiB frame limit."""
BATCH_COUNT_MAX = 1024
BATCH_FRAME_BYTES_MAX = FRAME_BYTES_MAX - 64 * 1024
"""Encoded bytes of one request's messages: a frame's limit, less room for its header."""
ASYNC_IN_FLIGHT_MAX_DEFAULT = 1024
"""`send_async` calls running at once; more wait in `send_async` (back-pressure)."""

RETRYABLE_ERRORS = frozenset(
    {
        ErrorCode.SYSTEM_BUSY,
        ErrorCode.SYSTEM_ERROR,
        ErrorCode.SERVICE_NOT_AVAILABLE,
        ErrorCode.REPLICATION_TIMEOUT,
        ErrorCode.FLUSH_TIMEOUT,
        ErrorCode.TOPIC_NOT_EXIST,
        ErrorCode.NO_PERMISSION,
        ErrorCode.NO_ROUTE,
    }
)
ROUTE_ERRORS = frozenset({ErrorCode.TOPIC_NOT_EXIST, ErrorCode.NO_PERMISSION, ErrorCode.NO_ROUTE})
"""Errors that mean our route is stale: refresh it."""

_log = structlog.get_logger("mq.client")


class SendStatus(StrEnum):
    """RocketMQ's send statuses. Our broker answers only once the batch is committed by
    a majority and flushed as configured, and fails the request otherwise, so SEND_OK
    is the only status a result can have."""

    SEND_OK = "SEND_OK"


@dataclass(frozen=True, slots=True)
class SendResult:
    status: SendStatus
    msg_id: str
    """The first (for a single send, the only) message id."""
    msg_ids: tuple[str, ...]
    queue: MessageQueue
    queue_offset: int
    """Queue offset of the first message; a batch's messages are contiguous."""
    commit_offset: int | None = None
    duplicate: bool = False
    """The group had stored this batch already (a retry of a lost answer)."""
    attempts: int = 1

    @property
    def topic(self) -> str:
        return self.queue.topic

    @property
    def group(self) -> str:
        return self.queue.group

    @property
    def queue_id(self) -> int:
        return self.queue.queue_id


SendCallback = Callable[[SendResult | None, BaseException | None], object]
"""Called with (result, None) or (None, error) when an async send completes. It may be a
coroutine function; it runs in the producer's task group, so it should be quick."""


class SendFuture:
    """The pending result of `send_async`: `await future` returns the SendResult or
    raises the send's error. Works under trio and asyncio alike."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: SendResult | None = None
        self._error: BaseException | None = None
        self._on_done: Callable[[SendResult | None, BaseException | None], None] | None = None

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> SendResult:
        """The result now; raises the send's error, or RuntimeError if not done."""
        if not self.done():
            raise RuntimeError("the send has not completed")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self) -> BaseException | None:
        if not self.done():
            raise RuntimeError("the send has not completed")
        return self._error

    async def wait(self) -> SendResult:
        await self._done.wait()
        return self.result()

    def __await__(self) -> Any:
        return self.wait().__await__()

    def _set(self, result: SendResult | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()
        if self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done(result, error)


_U32 = struct.Struct("<I")
_QUEUE_ID_AT = FRAME_HEADER_BYTES
"""Byte position of a message frame's queue id: right after the 12-byte frame header
(size, magic, crc), as docs/broker-api.md and storage/FORMAT.md lay it out."""
_CRC_AT = 8


class _Lanes:
    """A producer's idempotence lanes: ids with one batch in flight at a time each."""

    def __init__(self, producer_id: str, first_seq: int) -> None:
        self.producer_id = producer_id
        self._first_seq = first_seq
        self._free: list[int] = []  # a heap: the lowest free lane is reused first
        self._last_seq: list[int] = []

    def acquire(self) -> tuple[int, str, int]:
        """(lane, its producer id, the batch's seq) for a new batch."""
        if self._free:
            lane = heapq.heappop(self._free)
            self._last_seq[lane] += 1
        else:
            lane = len(self._last_seq)
            self._last_seq.append(self._first_seq)
        lane_id = self.producer_id if lane == 0 else f"{self.producer_id}/{lane}"
        return lane, lane_id, self._last_seq[lane]

    def release(self, lane: int) -> None:
        heapq.heappush(self._free, lane)

    @property
    def count(self) -> int:
        """Lanes ever used: the most batches that were in flight at once."""
        return len(self._last_seq)


@dataclass(slots=True)
class _Batch:
    """A batch as sent: encoded once, before the first attempt, so every retry sends the
    same bytes (ids, born time, and what the application put in the messages then, even
    if it changes them later) except for the queue id, which a retry to another queue
    patches in place like the broker patches the store timestamp."""

    topic: str
    first: Message
    """The first message, for a selector to look at."""
    count: int
    msg_ids: tuple[str, ...]
    seq: int
    code: RequestCode
    frames: bytes
    sizes: list[int]
    queue_id: int = 0
    lane: int = 0
    producer_id: str = ""
    """The lane's id, sent as the request's `producer_id`."""

    def body(self, queue_id: int) -> bytes:
        """The frames with `queue_id` in each (and each CRC recomputed)."""
        if queue_id != self.queue_id:
            buf = bytearray(self.frames)
            view = memoryview(buf)
            pos = 0
            for size in self.sizes:
                _U32.pack_into(buf, pos + _QUEUE_ID_AT, queue_id)
                _U32.pack_into(
                    buf, pos + _CRC_AT, zlib.crc32(view[pos + _QUEUE_ID_AT : pos + size])
                )
                pos += size
            view.release()
            self.frames, self.queue_id = bytes(buf), queue_id
        return self.frames


@dataclass(slots=True)
class _Queued:
    """One send waiting in its topic's accumulator, then its outcome."""

    message: Message
    msg_id: str
    frame: bytes
    queued_ms: int
    """When the send began (an election is waited out until send_timeout_ms after it)."""
    future: SendFuture = field(default_factory=SendFuture)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Producer:
    """Sends messages. Use as `async with Producer(namesrv=[...]) as producer:`.

    Options: `group` (producer group name, informational for now), `producer_id`
    (default: a fresh uuid4; it must not be shared by two live producers),
    `send_timeout_ms` per request, `retries` per send, `latency_fault_tolerance`,
    `route_refresh_ms`, `connect_timeout_ms`, `message_bytes_max` (per body),
    `batch_bytes_max`, `async_in_flight_max`, and auto-batching of concurrent sends
    (`auto_batch`, on by default; `auto_batch_senders` batches of a topic in flight at
    once, `auto_batch_messages_max` messages in one; see mq/client/auto_batch.py).
    """

    def __init__(
        self,
        namesrv: Sequence[str] | str,
        *,
        group: str | None = None,
        producer_id: str | None = None,
        send_timeout_ms: int = SEND_TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        latency_fault_tolerance: bool = True,
        route_refresh_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
        connect_timeout_ms: int = 3_000,
        message_bytes_max: int = MESSAGE_BYTES_MAX,
        batch_bytes_max: int = BATCH_BYTES_MAX_DEFAULT,
        async_in_flight_max: int = ASYNC_IN_FLIGHT_MAX_DEFAULT,
        auto_batch: bool = True,
        auto_batch_senders: int = SENDERS_MAX_DEFAULT,
        auto_batch_messages_max: int = MESSAGES_MAX_DEFAULT,
        born_host: str | None = None,
        id_generator: MessageIdGenerator | None = None,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if async_in_flight_max <= 0:
            raise ValueError("async_in_flight_max must be positive")
        if auto_batch_senders <= 0 or not 0 < auto_batch_messages_max <= BATCH_COUNT_MAX:
            raise ValueError(
                f"auto_batch_senders must be positive and auto_batch_messages_max in "
                f"1..{BATCH_COUNT_MAX}"
            )
        self.auto_batch = auto_batch
        self.auto_batch_senders = auto_batch_senders
        self.auto_batch_messages_max = auto_batch_messages_max
        self._accumulators: dict[str, Accumulator[_Queued]] = {}
        self.group = group
        self.retries = retries
        self.send_timeout_ms = send_timeout_ms
        self.message_bytes_max = message_bytes_max
        self.batch_bytes_max = batch_bytes_max
        self.latency_fault_tolerance = latency_fault_tolerance
        self._client = ClientInstance(
            namesrv,
            request_timeout_ms=send_timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            route_refresh_ms=route_refresh_ms,
        )
        if producer_id is None:
            self.producer_id = uuid.uuid4().hex
            first_seq = 1
        else:
            # A caller-chosen id may be reused by a restarted process: start above any
            # sequence number its previous incarnation can have used.
            self.producer_id = producer_id
            first_seq = time.time_ns() // 1000
        self._lanes = _Lanes(self.producer_id, first_seq)
        ip = local_ipv4()
        self.born_host = born_host if born_host is not None else ip
        self._ids = id_generator or MessageIdGenerator(ip=ip)
        self._wall_clock_ms = wall_clock_ms
        self.fault = LatencyFaultTolerance(self._now_ms)
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._async_in_flight_max = async_in_flight_max
        self._async_slots = anyio.Semaphore(async_in_flight_max)
        self._async_unyielded = 0  # send_async calls since one last yielded
        self._async_group: anyio.abc.TaskGroup | None = None
        self._open = False

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        await self._client.start()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._async_group = group
        self._open = True

    async def aclose(self) -> None:
        """Wait for the async sends in flight (each bounded by its timeouts), then close."""
        if not self._open:
            await self._client.aclose()
            return
        self._open = False
        try:
            if self._async_group is not None:
                await self._async_group.__aexit__(None, None, None)
        finally:
            await self._client.aclose()

    # --- sending ---------------------------------------------------------------------

    async def send(
        self,
        message: Message,
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> SendResult:
        """Send one message and wait until the group has committed it.

        With `selector`, the queue is `selector.select(queues, message, arg)` and the
        send never moves to another queue (ordered messages). Raises SendError,
        NoRouteError, ValueError (invalid message), ClientClosedError.

        Without a selector and with `auto_batch` on, the message may leave in one
        request with other sends to its topic that are waiting at the same time
        (mq/client/auto_batch.py); its result is its own all the same. A cancelled
        send may still be stored, as with any request already on its way.
        """
        if selector is None and self.auto_batch:
            return await self._await_queued(self._enqueue(message))
        batch = self._prepare([message], RequestCode.SEND_MESSAGE)
        try:
            return await self._deliver(batch, selector, arg)
        finally:
            self._lanes.release(batch.lane)

    async def send_batch(
        self,
        messages: Sequence[Message],
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> SendResult:
        """Send messages of one topic as one request: stored together in one queue,
        contiguous, all or nothing. `result.msg_ids` follows the input order."""
        batch = self._prepare(list(messages), RequestCode.SEND_BATCH)
        try:
            return await self._deliver(batch, selector, arg)
        finally:
            self._lanes.release(batch.lane)

    async def send_async(
        self,
        message: Message,
        callback: SendCallback | None = None,
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> SendFuture:
        """Start sending and return a `SendFuture` at once; `callback`, if given, is
        called when it completes. Waits only when `async_in_flight_max` sends are already
        running. The send belongs to the producer: closing it waits for the send."""
        # No yield while a slot is free: a loop of send_async calls then queues a whole
        # window before the topic's senders take it, so it leaves in full requests
        # instead of one message each (`mq bench produce --async`: 1.8x). Once a full
        # request's worth went by without one, yield anyway, so that a large
        # `async_in_flight_max` never keeps the senders (and everyone else) waiting.
        if self._async_unyielded >= self.auto_batch_messages_max:
            self._async_unyielded = 0
            await anyio.lowlevel.checkpoint()
        try:
            self._async_slots.acquire_nowait()
            self._async_unyielded += 1
        except anyio.WouldBlock:
            self._async_unyielded = 0
            await self._async_slots.acquire()
        try:
            if self._async_group is None or not self._open:
                raise ClientClosedError("the producer is closed")
            if selector is None and self.auto_batch:
                # The topic's sender task settles the send: no task of its own to wait.
                item = self._enqueue(message)
                item.future._on_done = partial(self._async_done, message.topic, callback)
                return item.future
            batch = self._prepare([message], RequestCode.SEND_MESSAGE)
        except BaseException:
            self._async_slots.release()
            raise
        future = SendFuture()
        self._async_group.start_soon(
            self._run_async,
            partial(self._deliver, batch, selector, arg),
            partial(self._lanes.release, batch.lane),
            message.topic,
            future,
            callback,
        )
        return future

    async def send_oneway(
        self,
        message: Message,
        *,
        selector: MessageQueueSelector | None = None,
        arg: Any = None,
    ) -> None:
        """Send without waiting for (or getting) an answer: one attempt, no retry; the
        message may be lost. Returns once the request is written to the socket."""
        batch = self._prepare([message], RequestCode.SEND_MESSAGE)
        try:
            route = await self._client.routes.get_for_send(batch.topic)
            if selector is not None:
                queue = self._select_ordered(route, batch, selector, arg)
            else:
                queue = self._select_queue(batch.topic, route, None)
            address = self._leader(route, queue)
            if address is None:
                raise NoRouteError(f"group {queue.group!r} has no known leader")
            try:
                await self._client.pool.send_oneway(address, self._frame(batch, queue, oneway=True))
            except MQConnectionError:
                self._on_unreachable(batch.topic, queue.group, address, 0)
                raise
        finally:
            self._lanes.release(batch.lane)

    # --- internals: preparing a batch -------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise ClientClosedError("the producer is not started (use `async with`) or closed")

    def _prepare(self, messages: list[Message], code: RequestCode) -> _Batch:
        msg_ids, frames, sizes = self._encode(messages)
        return self._new_batch(messages[0].topic, messages[0], msg_ids, frames, sizes, code)

    def _new_batch(
        self,
        topic: str,
        first: Message,
        msg_ids: tuple[str, ...],
        frames: bytes,
        sizes: list[int],
        code: RequestCode,
    ) -> _Batch:
        """The batch with a lane of its own (released by the caller when it is over)."""
        lane, producer_id, seq = self._lanes.acquire()
        return _Batch(
            topic=topic,
            first=first,
            count=len(msg_ids),
            msg_ids=msg_ids,
            lane=lane,
            producer_id=producer_id,
            seq=seq,
            code=code,
            frames=frames,
            sizes=sizes,
        )

    def _encode(self, messages: list[Message]) -> tuple[tuple[str, ...], bytes, list[int]]:
        """Validate and encode: (message ids, the frames, each frame's size)."""
        self._check_open()
        if not messages:
            raise ValueError("a batch needs at least one message")
        if len(messages) > BATCH_COUNT_MAX:
            raise ValueError(f"a batch holds at most {BATCH_COUNT_MAX} messages")
        topic = messages[0].topic
        total = 0
        for message in messages:
            if not isinstance(message, Message):
                raise TypeError(f"expected a Message, got {type(message).__name__}")
            message.validate(body_bytes_max=self.message_bytes_max)
            if message.topic != topic:
                raise ValueError("every message of a batch must have the same topic")
            if message.delay_ms is not None:
                raise ValueError("delayed delivery (delay_ms) is not supported by the broker yet")
            total += len(message.body)
        if total > self.batch_bytes_max:
            raise ValueError(f"batch bodies total {total} bytes, limit {self.batch_bytes_max}")
        msg_ids = tuple(self._ids.next_id() for _ in messages)
        born_timestamp_ms = self._wall_clock_ms()
        records = [
            m.to_record(
                msg_id=msg_id,
                queue_id=0,
                born_timestamp_ms=born_timestamp_ms,
                born_host=self.born_host,
            )
            for m, msg_id in zip(messages, msg_ids, strict=True)
        ]
        frames, sizes = encode_messages(records, message_bytes_max=self.message_bytes_max)
        if len(frames) > BATCH_FRAME_BYTES_MAX:
            # Bodies within limits can still encode past what one request carries
            # (long keys and properties are in every frame).
            raise ValueError(
                f"batch encodes to {len(frames)} bytes, more than one request carries "
                f"({BATCH_FRAME_BYTES_MAX}): send fewer messages or shorter keys/properties"
            )
        return msg_ids, bytes(frames), sizes

    # --- internals: auto-batching ---------------------------------------------------

    def _enqueue(self, message: Message) -> _Queued:
        """Validate and encode one message and queue it for its topic's next batch."""
        msg_ids, frame, sizes = self._encode([message])
        item = _Queued(message, msg_ids[0], frame, self._now_ms())
        topic = message.topic
        accumulator = self._accumulators.get(topic)
        if accumulator is None:
            accumulator = self._accumulators[topic] = Accumulator(
                senders_max=self.auto_batch_senders,
                messages_max=self.auto_batch_messages_max,
                bytes_max=self.batch_bytes_max,
            )
        if accumulator.add(item, sizes[0]):
            if self._async_group is None or not self._open:
                accumulator.sender_done()
                raise ClientClosedError("the producer is closed")
            self._async_group.start_soon(self._drain, topic, accumulator)
        return item

    async def _await_queued(self, item: _Queued) -> SendResult:
        return await item.future.wait()

    async def _drain(self, topic: str, accumulator: Accumulator[_Queued]) -> None:
        """One sender of a topic: send what is queued, batch after batch, until nothing is."""
        items: list[_Queued] = []
        try:
            while items := accumulator.take():
                await self._send_queued(topic, items)
            accumulator.sender_done()
        finally:
            for item in items:  # only when cancelled mid-batch (the producer is closing)
                if not item.future.done():
                    closed = ClientClosedError("the producer closed before the send completed")
                    item.future._set(None, closed)

    async def _send_queued(self, topic: str, items: list[_Queued]) -> None:
        sizes = [len(item.frame) for item in items]
        batch = self._new_batch(
            topic,
            items[0].message,
            tuple(item.msg_id for item in items),
            b"".join(item.frame for item in items),
            sizes,
            RequestCode.SEND_BATCH if len(items) > 1 else RequestCode.SEND_MESSAGE,
        )
        try:
            result = await self._deliver(batch, None, None, items[0].queued_ms)
        except SendError as exc:
            if len(items) > 1 and exc.code in _REFUSED_FOR_CONTENT:
                # The broker stored none of it, refusing it for what one of the sends
                # holds (a body over its limit, a batch past its segment size): send
                # the halves apart, so that only the sends at fault fail.
                middle = len(items) // 2
                await self._send_queued(topic, items[:middle])
                await self._send_queued(topic, items[middle:])
            else:
                for item in items:
                    item.future._set(None, _error_for_message(exc, item.msg_id))
        except Exception as exc:
            # Every failure belongs to the senders' awaits, never to the task group.
            for item in items:
                item.future._set(None, _error_for_message(exc, item.msg_id))
        else:
            position = result.commit_offset
            for i, item in enumerate(items):
                item.future._set(
                    SendResult(
                        status=result.status,
                        msg_id=result.msg_ids[i],
                        msg_ids=(result.msg_ids[i],),
                        queue=result.queue,
                        queue_offset=result.queue_offset + i,
                        commit_offset=position,
                        duplicate=result.duplicate,
                        attempts=result.attempts,
                    ),
                    None,
                )
                if position is not None:
                    position += sizes[i]
        finally:
            self._lanes.release(batch.lane)

    def _frame(self, batch: _Batch, queue: MessageQueue, *, oneway: bool = False) -> Frame:
        body = batch.body(queue.queue_id)
        fields = {
            "topic": batch.topic,
            "queue_id": queue.queue_id,
            "producer_id": batch.producer_id,
            "seq": batch.seq,
            "count": batch.count,
        }
        return request(batch.code, fields, body, oneway=oneway)

    # --- internals: choosing a queue ------------------------------------------------

    def _now_ms(self) -> int:
        return int(anyio.current_time() * 1000)

    def _leader(self, route: TopicRoute, queue: MessageQueue) -> str | None:
        group = _group_route(route, queue.group)
        return None if group is None else self._client.routes.leader_of(group.info)

    def _select_ordered(
        self, route: TopicRoute, batch: _Batch, selector: MessageQueueSelector, arg: Any
    ) -> MessageQueue:
        queues = writable_queues(route)
        if not queues:
            raise NoRouteError(f"topic {batch.topic!r} has no writable queue")
        queue = selector.select(queues, batch.first, arg)
        if queue not in queues:
            raise ValueError(f"the selector returned {queue}, not one of the topic's queues")
        return queue

    def _select_queue(
        self,
        topic: str,
        route: TopicRoute,
        avoid_group: str | None,
        gone: set[str] | frozenset[str] = frozenset(),
    ) -> MessageQueue:
        """RocketMQ's selectOneMessageQueue, with latency fault tolerance; groups whose
        leader is unknown, or in `gone` (it failed this send), are skipped."""
        routes = self._client.routes
        queues = [
            q for q in writable_queues(route)
            if (g := _group_route(route, q.group))
            and (leader := routes.leader_of(g.info)) is not None
            and leader not in gone
        ]  # fmt: skip
        if not queues:
            raise NoRouteError(f"topic {topic!r} has no writable queue in a group with a leader")
        counter = self._round_robin.get(topic)
        if counter is None:
            counter = self._round_robin[topic] = itertools.count(random.randrange(1024))
        start = next(counter)
        n = len(queues)
        ordered = [queues[(start + i) % n] for i in range(n)]
        if not self.latency_fault_tolerance:
            return next((q for q in ordered if q.group != avoid_group), ordered[0])
        fault = self.fault
        for q in ordered:
            if q.group != avoid_group and fault.available(q.group):
                return q
        for q in ordered:
            if fault.available(q.group):
                return q
        best = fault.pick_one_at_least(q.group for q in ordered)
        return next(q for q in ordered if q.group == best)

    # --- internals: the attempts ----------------------------------------------------

    async def _deliver(
        self,
        batch: _Batch,
        selector: MessageQueueSelector | None,
        arg: Any,
        started_ms: int | None = None,
    ) -> SendResult:
        """Send `batch` with the retry rules of the module docstring. `started_ms`: when
        its oldest send began (auto-batched sends wait before their batch leaves); an
        election is waited out until `send_timeout_ms` after it."""
        client = self._client
        attempts_max = 1 + self.retries
        queue: MessageQueue | None = None
        redirect: str | None = None  # the leader a NOT_LEADER answer named
        avoid_group: str | None = None
        failure: BaseException | None = None
        code: int | None = None
        contacted = False  # whether any request reached (or was sent towards) a broker
        if started_ms is None:
            started_ms = self._now_ms()
        election_deadline_ms = started_ms + self.send_timeout_ms
        earlier: dict[str, None] = {}  # what the attempts before the last one met, in order
        retry_pause_s = RETRY_PAUSE_FIRST_S
        gone: set[str] = set()
        """Nodes that failed or said they do not lead during this send: not leaders to
        wait for, nor to try again, until the election wait is over."""
        for attempt in range(1, attempts_max + 1):
            if failure is not None:
                earlier[str(failure)] = None
            route = await client.routes.get_for_send(batch.topic)  # NoRouteError: nowhere to send
            if selector is not None:
                if queue is None:
                    queue = self._select_ordered(route, batch, selector, arg)
            elif redirect is None:
                try:
                    queue = self._select_queue(batch.topic, route, avoid_group, gone)
                except NoRouteError as exc:
                    # No group has a leader (that has not failed us): wait for one.
                    failure, code = exc, None
                    if attempt < attempts_max:
                        await self._await_leader(batch.topic, None, gone, election_deadline_ms)
                    continue
            assert queue is not None
            address = redirect or self._leader(route, queue)
            redirect = None
            if address is None or address in gone:
                # Only an ordered send can get here (selection skips such groups): it
                # must stay on this queue, so wait for the group's next leader.
                failure, code = NoRouteError(f"group {queue.group!r} has no known leader"), None
                if attempt < attempts_max:
                    await self._await_leader(batch.topic, queue.group, gone, election_deadline_ms)
                continue
            contacted = True
            request_ms = self._now_ms()
            try:
                response = await client.pool.request(
                    address, self._frame(batch, queue), timeout_s=self.send_timeout_ms / 1000
                )
            except (MQConnectionError, MQTimeoutError) as exc:
                self._on_unreachable(batch.topic, queue.group, address, self._now_ms() - request_ms)
                failure, code, avoid_group = exc, None, queue.group
                gone.add(address)
                if attempt < attempts_max:
                    # The node may be gone for good and the NameServer may know its
                    # successor: learn it before the next try, and when there is
                    # nowhere else to go, wait for it.
                    await self._next_target(
                        batch.topic, selector, queue, gone, election_deadline_ms
                    )
                continue
            latency_ms = self._now_ms() - request_ms
            if response.ok:
                self.fault.update(queue.group, latency_ms)
                return self._result(batch, queue, response, attempt)
            code = response.error
            failure = _broker_error(response, address, queue.group)
            if code == ErrorCode.NOT_LEADER:
                assert isinstance(failure, NotLeaderError)
                gone.add(address)
                leader = failure.leader if failure.leader not in gone else None
                client.routes.note_leader(queue.group, leader)
                client.routes.request_refresh(batch.topic)
                if leader is not None:
                    redirect = leader
                else:
                    avoid_group = queue.group
                    if attempt < attempts_max:
                        await self._next_target(
                            batch.topic, selector, queue, gone, election_deadline_ms
                        )
                continue
            if code == ErrorCode.NO_ROUTE and selector is None:
                # Our route offered a queue the group does not have (a provisional
                # auto-create route, or the topic shrank): learn its real count and
                # pick again; the group itself is fine.
                write_queues = response.fields.get("write_queues")
                if isinstance(write_queues, int) and write_queues > 0:
                    client.routes.note_write_queues(batch.topic, queue.group, write_queues)
                client.routes.request_refresh(batch.topic)
                continue
            if code in RETRYABLE_ERRORS:
                self.fault.update(queue.group, latency_ms)
                if code in ROUTE_ERRORS:
                    client.routes.request_refresh(batch.topic)
                avoid_group = queue.group
                if attempt < attempts_max and (
                    selector is not None or not self._has_other_group(route, queue.group)
                ):
                    # The retry can only go back to this group, which just said it is
                    # busy (or full, or short of replicas): give it a moment first.
                    left_s = (election_deadline_ms - self._now_ms()) / 1000
                    await anyio.sleep(max(0.0, min(retry_pause_s, left_s)))
                    retry_pause_s = min(2 * retry_pause_s, RETRY_PAUSE_MAX_S)
                continue
            raise SendError(
                f"send to {queue} at {address} failed: {failure}",
                code=_as_error_code(code),
                attempts=attempt,
                msg_ids=batch.msg_ids,
            ) from failure
        if isinstance(failure, NoRouteError) and not contacted:
            raise failure
        error_type = SendTimeoutError if isinstance(failure, MQTimeoutError) else SendError
        # The last failure may hide the cause (a leader handing over because its disk is
        # full answers NOT_LEADER): name the earlier ones that differ from it too.
        before = [text for text in earlier if text != str(failure)]
        also = f" (earlier attempts: {'; '.join(before)})" if before else ""
        raise error_type(
            f"send to topic {batch.topic!r} failed after {attempts_max} attempts: {failure}{also}",
            code=None if code is None else _as_error_code(code),
            attempts=attempts_max,
            msg_ids=batch.msg_ids,
        ) from failure

    def _writable_groups(
        self, route: TopicRoute, gone: set[str] | frozenset[str] = frozenset()
    ) -> Iterator[str]:
        """The groups of the route with writable queues and a known leader not in `gone`."""
        leader_of = self._client.routes.leader_of
        for g in route.groups:
            if g.topic.perm & Perm.WRITE and g.topic.write_queues > 0:
                leader = leader_of(g.info)
                if leader is not None and leader not in gone:
                    yield g.group

    def _has_other_group(self, route: TopicRoute, group: str) -> bool:
        """Whether a group other than `group` takes writes for the route's topic."""
        return any(g != group for g in self._writable_groups(route))

    def _has_target(self, route: TopicRoute | None, group: str | None, gone: set[str]) -> bool:
        """Whether `group` (any group, if None) has writable queues and a known leader
        that is not in `gone`."""
        if route is None:
            return False
        return any(group is None or g == group for g in self._writable_groups(route, gone))

    async def _next_target(
        self,
        topic: str,
        selector: MessageQueueSelector | None,
        queue: MessageQueue,
        gone: set[str],
        deadline_ms: int,
    ) -> None:
        """After `queue`'s node failed or did not lead: re-read the route, and if the
        send has nowhere left to go (an ordered send stays on its group), wait for a
        leader it has not tried yet."""
        group = queue.group if selector is not None else None
        if self._has_target(self._client.routes.cached(topic), group, gone):
            await self._client.routes.refresh_for_send(topic)
        else:
            await self._await_leader(topic, group, gone, deadline_ms)

    async def _await_leader(
        self, topic: str, group: str | None, gone: set[str], deadline_ms: int
    ) -> None:
        """Read the route until `group` (any group, if None) has a writable leader not
        in `gone`, or until `deadline_ms`; then `gone` is forgotten (a node may have won
        again). It always reads the route at least once."""
        routes = self._client.routes
        pause_s = LEADER_POLL_FIRST_S
        while True:
            await routes.refresh_for_send(topic)
            if self._has_target(routes.cached(topic), group, gone):
                return
            left_s = (deadline_ms - self._now_ms()) / 1000
            if left_s <= 0:
                gone.clear()
                return
            await anyio.sleep(min(pause_s, left_s))
            pause_s = min(2 * pause_s, LEADER_POLL_MAX_S)

    def _on_unreachable(self, topic: str, group: str, address: str, latency_ms: int) -> None:
        if self.latency_fault_tolerance:
            self.fault.update(group, latency_ms, isolation=True)
        self._client.routes.forget_leader(group, address)
        self._client.routes.request_refresh(topic)

    def _result(
        self, batch: _Batch, queue: MessageQueue, response: Frame, attempts: int
    ) -> SendResult:
        fields = response.fields
        if fields.get("duplicate") is True and fields.get("queue_offset") == -1:
            # The group stored a later batch of this lane, so it no longer knows this
            # one's outcome (lanes make this rare: the lane's broker record was evicted,
            # or a caller-chosen producer_id is shared).
            raise SendError(
                f"group {queue.group!r} refused the batch as an old duplicate of producer "
                f"{batch.producer_id!r} (seq {batch.seq}): it may or may not be stored",
                attempts=attempts,
                msg_ids=batch.msg_ids,
            )
        try:
            msg_ids = tuple(str(m) for m in get_list(fields, "msg_ids", default=batch.msg_ids))
            queue_offset = get_int(fields, "queue_offset")
            commit_offset = fields.get("commit_offset")
            queue_id = get_int(fields, "queue_id", default=queue.queue_id)
        except FieldError as exc:
            raise SendError(
                f"malformed send response from group {queue.group!r}: {exc}",
                attempts=attempts,
                msg_ids=batch.msg_ids,
            ) from exc
        if len(msg_ids) != len(batch.msg_ids):
            raise SendError(
                f"group {queue.group!r} acknowledged {len(msg_ids)} of {len(batch.msg_ids)} "
                "messages",
                attempts=attempts,
                msg_ids=batch.msg_ids,
            )
        if queue_id != queue.queue_id:
            # A duplicate: an earlier attempt stored the batch in another queue of this
            # group, and the group answered with where it really is.
            queue = MessageQueue(queue.topic, queue.group, queue_id)
        return SendResult(
            status=SendStatus.SEND_OK,
            msg_id=msg_ids[0] if msg_ids else batch.msg_ids[0],
            msg_ids=msg_ids,
            queue=queue,
            queue_offset=queue_offset,
            commit_offset=commit_offset if isinstance(commit_offset, int) else None,
            duplicate=bool(fields.get("duplicate", False)),
            attempts=attempts,
        )

    def _async_done(
        self,
        topic: str,
        callback: SendCallback | None,
        result: SendResult | None,
        error: BaseException | None,
    ) -> None:
        """An auto-batched `send_async` completed (called by its future, in the sender)."""
        self._async_slots.release()
        outcome = _call_back(topic, callback, result, error)
        if outcome is not None:
            assert self._async_group is not None, "a send completes before the group closes"
            self._async_group.start_soon(_await_callback, topic, outcome)

    async def _run_async(
        self,
        deliver: Callable[[], Awaitable[SendResult]],
        release: Callable[[], None],
        topic: str,
        future: SendFuture,
        callback: SendCallback | None,
    ) -> None:
        result: SendResult | None = None
        error: BaseException | None = None
        try:
            result = await deliver()
        except anyio.get_cancelled_exc_class():
            future._set(None, ClientClosedError("the send was cancelled"))
            self._async_slots.release()
            raise
        except Exception as exc:
            # Every failure belongs to the caller's future, never to the task group:
            # one failed send must not take the producer down.
            error = exc
        finally:
            release()
            if not future.done():
                future._set(result, error)
                self._async_slots.release()
        outcome = _call_back(topic, callback, result, error)
        if outcome is not None:
            await _await_callback(topic, outcome)


def _call_back(
    topic: str,
    callback: SendCallback | None,
    result: SendResult | None,
    error: BaseException | None,
) -> Awaitable[object] | None:
    """Call an async send's callback; what a coroutine callback returned, to await. A
    failing callback is logged: it must not fail the producer."""
    if callback is None:
        return None
    try:
        outcome = callback(result, error)
    except Exception:
        _log.exception("send_callback_failed", topic=topic)
        return None
    return outcome if isinstance(outcome, Awaitable) else None


async def _await_callback(topic: str, outcome: Awaitable[object]) -> None:
    try:
        await outcome
    except Exception:
        _log.exception("send_callback_failed", topic=topic)


_REFUSED_FOR_CONTENT = (ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.INVALID_REQUEST)
"""Refusals of a request for what it holds: nothing of it was stored, and a send that
shares an automatic batch with the send at fault must not fail with it."""


def _error_for_message(error: Exception, msg_id: str) -> Exception:
    """The failure of an automatic batch as seen by one of its sends: a SendError names
    that send's message only; other errors (no route, closed) are shared as they are."""
    if not isinstance(error, SendError):
        return error
    own = type(error)(str(error), code=error.code, attempts=error.attempts, msg_ids=(msg_id,))
    own.__cause__ = error.__cause__
    return own


def _group_route(route: TopicRoute, group: str) -> GroupRoute | None:
    return next((g for g in route.groups if g.group == group), None)


def _as_error_code(code: int) -> ErrorCode | int:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def _broker_error(response: Frame, address: str, group: str) -> MQClientError:
    if response.error == ErrorCode.NOT_LEADER:
        leader = response.fields.get("leader")
        return NotLeaderError(
            response.remark,
            address=address,
            leader=leader if isinstance(leader, str) and leader else None,
            group=str(response.fields.get("group") or group),
        )
    return BrokerError(
        response.error, response.remark or error_name(response.error), address=address
    )
