"""The pull consumer: the application names the queue and the offset, the broker
answers with what is there. No offsets are stored and no queues are balanced: this is
the building block (RocketMQ's DefaultLitePullConsumer in assign mode, or the old
DefaultMQPullConsumer) that push consumers and rebalancing are built on.

Reads go to the group's leader when one is known, else to any node: followers serve
committed data too, and every node holds identical ConsumeQueues. A node that cannot
be reached (connection failure, timeout) is skipped in favour of the group's next node,
and the route is refreshed.

Tag filtering is two-stage, as in RocketMQ: the broker compares 64-bit tag hashes
stored in the ConsumeQueue (cheap, no CommitLog read), which can collide, so the client
checks the exact tag of each message it receives and drops the strays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from mq.client.broker_requests import group_info, request_any_node
from mq.client.errors import (
    MQClientError,
)
from mq.client.instance import ClientInstance
from mq.client.queues import MessageQueue, readable_queues
from mq.client.routes import REFRESH_INTERVAL_MS_DEFAULT
from mq.fields import FieldError, get_int, get_list, get_str
from mq.message import MessageExt
from mq.protocol import ErrorCode, Frame, RequestCode, request
from storage.errors import CorruptRecordError
from storage.record import BLANK_HEADER_BYTES, MessageRecord, frame_size_and_magic, tag_hash

PULL_COUNT_MAX = 1024
"""Largest `max_count` one pull may ask for."""
PULL_TIMEOUT_MS_DEFAULT = 3_000
"""Answer time allowed on top of a long poll's `suspend_ms`."""


class PullStatus(StrEnum):
    FOUND = "FOUND"
    """Messages were returned (after the client's exact tag check; when that drops
    every message the status becomes NO_MATCHED_MSG)."""
    NO_NEW_MSG = "NO_NEW_MSG"
    """Nothing at or after the offset yet: pull again from `next_offset` later."""
    NO_MATCHED_MSG = "NO_MATCHED_MSG"
    """Messages were there but none matched the tags: continue from `next_offset`."""
    OFFSET_ILLEGAL = "OFFSET_ILLEGAL"
    """The offset is outside [min_offset, max_offset]: `next_offset` says where to go."""


@dataclass(frozen=True, slots=True)
class PullResult:
    status: PullStatus
    next_offset: int
    min_offset: int
    max_offset: int
    messages: list[MessageExt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TagFilter:
    """A subscription expression: "*" (everything) or "a || b || c"."""

    tags: frozenset[str] | None
    """None for everything."""

    @classmethod
    def parse(cls, expression: str | None) -> TagFilter:
        """RocketMQ's `FilterAPI.buildSubscriptionData`: "", None and "*" take every
        message; otherwise the "||"-separated tags, trimmed, empties dropped."""
        if expression is None or expression.strip() in ("", "*"):
            return cls(None)
        tags = frozenset(t.strip() for t in expression.split("||") if t.strip())
        if not tags:
            return cls(None)
        if "*" in tags:
            raise ValueError(f"'*' cannot be combined with tags: {expression!r}")
        return cls(tags)

    def hashes(self) -> list[int] | None:
        return None if self.tags is None else sorted({tag_hash(t) for t in self.tags})

    def matches(self, tags: str) -> bool:
        return self.tags is None or tags in self.tags


class PullConsumer:
    """Reads messages by queue and offset. `async with PullConsumer(namesrv=[...]) as c:`"""

    def __init__(
        self,
        namesrv: Sequence[str] | str,
        *,
        group: str | None = None,
        pull_timeout_ms: int = PULL_TIMEOUT_MS_DEFAULT,
        request_timeout_ms: int = 3_000,
        connect_timeout_ms: int = 3_000,
        route_refresh_ms: int = REFRESH_INTERVAL_MS_DEFAULT,
    ) -> None:
        self.group = group
        self.pull_timeout_ms = pull_timeout_ms
        self._client = ClientInstance(
            namesrv,
            request_timeout_ms=request_timeout_ms,
            connect_timeout_ms=connect_timeout_ms,
            route_refresh_ms=route_refresh_ms,
        )
        self._owns_client = True

    @classmethod
    def sharing(
        cls, client: ClientInstance, *, pull_timeout_ms: int = PULL_TIMEOUT_MS_DEFAULT
    ) -> PullConsumer:
        """A pull consumer over a client instance someone else owns (the push
        consumer's): it shares its connections and routes, and neither starts nor
        closes it."""
        consumer = cls.__new__(cls)
        consumer.group = None
        consumer.pull_timeout_ms = pull_timeout_ms
        consumer._client = client
        consumer._owns_client = False
        return consumer

    async def __aenter__(self) -> PullConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._owns_client:
            await self._client.start()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- queues ----------------------------------------------------------------------

    async def fetch_queues(self, topic: str) -> list[MessageQueue]:
        """Every readable queue of `topic`, by group then queue id (NoRouteError)."""
        return readable_queues(await self._client.routes.refresh(topic))

    # --- pulling ---------------------------------------------------------------------

    async def pull(
        self,
        mq: MessageQueue,
        offset: int,
        max_count: int = 32,
        tags: str | None = "*",
        *,
        suspend_ms: int = 0,
        max_bytes: int | None = None,
    ) -> PullResult:
        """Up to `max_count` messages of `mq` from queue offset `offset`, filtered by
        `tags` ("*" or "a || b"). With `suspend_ms` the broker holds the request up to
        that long while nothing is there (long polling).

        Raises BrokerError (e.g. TOPIC_NOT_EXIST), MQConnectionError / MQTimeoutError
        when no node of the group answered, NoRouteError, ValueError.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if not 0 < max_count <= PULL_COUNT_MAX:
            raise ValueError(f"max_count must be within [1, {PULL_COUNT_MAX}]")
        if suspend_ms < 0:
            raise ValueError("suspend_ms must be >= 0")
        tag_filter = TagFilter.parse(tags)
        fields: dict[str, object] = {
            "topic": mq.topic,
            "queue_id": mq.queue_id,
            "offset": offset,
            "max_count": max_count,
        }
        hashes = tag_filter.hashes()
        if hashes is not None:
            fields["tag_hashes"] = hashes
        if max_bytes is not None:
            fields["max_bytes"] = max_bytes
        if suspend_ms:
            fields["suspend_ms"] = suspend_ms
        timeout_s = (suspend_ms + self.pull_timeout_ms) / 1000
        response, _ = await self._read(mq, request(RequestCode.PULL_MESSAGE, fields), timeout_s)
        try:
            return _pull_result(mq, response, tag_filter)
        except (FieldError, CorruptRecordError, ValueError) as exc:
            raise MQClientError(f"malformed pull response for {mq}: {exc}") from exc

    async def min_offset(self, mq: MessageQueue) -> int:
        return await self._offset(RequestCode.GET_MIN_OFFSET, mq, {})

    async def max_offset(self, mq: MessageQueue) -> int:
        """One past the last message's queue offset (where the next message will go)."""
        return await self._offset(RequestCode.GET_MAX_OFFSET, mq, {})

    async def search_offset(self, mq: MessageQueue, timestamp_ms: int) -> int:
        """The queue offset of the first message stored at or after `timestamp_ms`
        (wall-clock ms since the epoch), as the broker's index finds it."""
        return await self._offset(
            RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, mq, {"timestamp_ms": timestamp_ms}
        )

    async def view_message(self, topic: str, msg_id: str) -> MessageExt | None:
        """The message with `msg_id`, searched in every group of the topic; None if
        no group has it."""
        route = await self._client.routes.get(topic)
        for group in route.groups:
            response, _ = await self._read_group(
                topic, group.group,
                request(RequestCode.VIEW_MESSAGE_BY_ID, {"topic": topic, "msg_id": msg_id}),
                self._client.request_timeout_s, allow=frozenset({ErrorCode.QUERY_NOT_FOUND}),
            )  # fmt: skip
            if response.ok and response.body:
                record = MessageRecord.decode(response.body)
                return MessageExt.from_record(record, group=group.group, queue_offset=-1)
        return None

    # --- internals -------------------------------------------------------------------

    async def _offset(self, code: RequestCode, mq: MessageQueue, extra: dict[str, int]) -> int:
        fields = {"topic": mq.topic, "queue_id": mq.queue_id} | extra
        response, _ = await self._read(mq, request(code, fields), self._client.request_timeout_s)
        try:
            return get_int(response.fields, "offset")
        except FieldError as exc:
            raise MQClientError(f"malformed offset response for {mq}: {exc}") from exc

    async def _read(self, mq: MessageQueue, frame: Frame, timeout_s: float) -> tuple[Frame, str]:
        return await self._read_group(mq.topic, mq.group, frame, timeout_s)

    async def _read_group(
        self,
        topic: str,
        group_name: str,
        frame: Frame,
        timeout_s: float,
        *,
        allow: frozenset[int] = frozenset(),
    ) -> tuple[Frame, str]:
        """Send a read to the group's leader, else to its other nodes in turn, until one
        answers. Returns (response, address); an error answer raises BrokerError unless
        its code is in `allow`."""
        info = await group_info(self._client, topic, group_name)
        return await request_any_node(
            self._client, info, frame, timeout_s=timeout_s, allow=allow, topic=topic
        )


def _pull_result(mq: MessageQueue, response: Frame, tag_filter: TagFilter) -> PullResult:
    fields = response.fields
    status = PullStatus(get_str(fields, "status"))
    next_offset = get_int(fields, "next_offset")
    min_offset = get_int(fields, "min_offset")
    max_offset = get_int(fields, "max_offset")
    messages: list[MessageExt] = []
    if status is PullStatus.FOUND:
        offsets = get_list(fields, "queue_offsets")
        records = _decode_frames(response.body)
        if len(records) != len(offsets):
            raise ValueError(f"{len(records)} messages but {len(offsets)} queue offsets")
        for record, queue_offset in zip(records, offsets, strict=True):
            if not isinstance(queue_offset, int):
                raise ValueError("queue offsets must be ints")
            if record.topic != mq.topic or record.queue_id != mq.queue_id:
                raise ValueError(f"got a message of {record.topic}#{record.queue_id} from {mq}")
            if tag_filter.matches(record.tags):
                messages.append(
                    MessageExt.from_record(record, group=mq.group, queue_offset=queue_offset)
                )
        if not messages:
            status = PullStatus.NO_MATCHED_MSG
    return PullResult(status, next_offset, min_offset, max_offset, messages)


def _decode_frames(body: bytes | bytearray | memoryview) -> list[MessageRecord]:
    view = memoryview(body)
    records = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < BLANK_HEADER_BYTES:
            raise CorruptRecordError(f"{len(view) - pos} stray bytes at the end of the body")
        size, _ = frame_size_and_magic(view[pos:])
        if size < BLANK_HEADER_BYTES or pos + size > len(view):
            raise CorruptRecordError(f"frame of {size} bytes at {pos} runs past the body")
        records.append(MessageRecord.decode(view[pos : pos + size]))
        pos += size
    return records
