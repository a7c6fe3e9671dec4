"""Messages as applications see them, their ids, and their storage frames.

`Message` is what a producer sends: topic, body, one tag, keys, properties. `MessageExt`
is what a consumer receives: the same plus what the system added (message id, queue,
queue offset, timestamps, born host, reconsume count). On the wire and in the CommitLog
both are a `storage.record.MessageRecord` frame; `Message.to_record` and
`MessageExt.from_record` are the only conversions, so the mapping lives in one place.

Message ids are chosen by the producer, RocketMQ UNIQ_KEY style (`MessageIdGenerator`),
so that a retried send carries the same ids and the broker and consumers can recognise
it. The generator is an object the producer owns, not module state: two producers in one
process have two generators, told apart by a random nonce.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from storage.record import (
    KEYS_BYTES_MAX,
    TAGS_BYTES_MAX,
    MessageRecord,
    split_keys,
    validate_topic,
)

__all__ = [
    "MSG_ID_HEX_CHARS",
    "PROPERTY_DELAY_MS",
    "SYSTEM_PROPERTY_PREFIX",
    "Message",
    "MessageExt",
    "MessageIdGenerator",
    "parse_msg_id",
]

SYSTEM_PROPERTY_PREFIX = "__"
"""Property names starting with this are the system's; applications may not set them."""

PROPERTY_DELAY_MS = "__DELAY_MS"
"""Where `Message.delay_ms` travels. Reserved: the broker does not deliver late yet."""

MSG_ID_HEX_CHARS = 32
_MSG_ID_BYTES = 16


def _normalize_keys(keys: str | Iterable[str]) -> list[str]:
    """A str is a space-separated list (RocketMQ's `setKeys(String)`); an iterable is the
    keys themselves, none of which may hold a space (the record joins them with one)."""
    if isinstance(keys, str):
        return split_keys(keys)
    result = []
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"message keys must be strings, got {type(key).__name__}")
        if not key or " " in key:
            raise ValueError(f"a message key must be non-empty and hold no space: {key!r}")
        result.append(key)
    return result


@dataclass(kw_only=True)
class Message:
    """A message to send. `body` is opaque bytes; `tags` is one tag (RocketMQ's name)
    that consumers filter on; `keys` are business keys the broker indexes for lookup;
    `properties` are small string pairs carried along untouched."""

    topic: str
    body: bytes
    tags: str = ""
    keys: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    delay_ms: int | None = None
    """Deliver no earlier than this many ms after storing. Reserved for delayed delivery,
    which the broker does not implement yet; the producer refuses it until then."""

    def __init__(
        self,
        topic: str,
        body: bytes | bytearray | memoryview | str,
        *,
        tags: str = "",
        keys: str | Iterable[str] = (),
        properties: Mapping[str, str] | None = None,
        delay_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.tags = tags
        self.keys = _normalize_keys(keys)
        self.properties = dict(properties or {})
        self.delay_ms = delay_ms

    def validate(self, *, body_bytes_max: int) -> None:
        """Raise ValueError (InvalidTopicError is one) if the broker would refuse this
        message; checked before anything is sent, so the error names the real problem."""
        validate_topic(self.topic)
        if len(self.body) > body_bytes_max:
            raise ValueError(f"message body is {len(self.body)} bytes, limit {body_bytes_max}")
        if not isinstance(self.tags, str):
            raise TypeError("message tags must be a str")
        if "||" in self.tags or self.tags.strip() != self.tags or self.tags == "*":
            raise ValueError(
                f"invalid tag {self.tags!r}: one tag, without '||' or surrounding spaces, not '*'"
            )
        if len(self.tags.encode()) > TAGS_BYTES_MAX:
            raise ValueError(f"message tags longer than {TAGS_BYTES_MAX} bytes")
        if len(" ".join(self.keys).encode()) > KEYS_BYTES_MAX:
            raise ValueError(f"message keys longer than {KEYS_BYTES_MAX} bytes in all")
        for name, value in self.properties.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError("message property names and values must be strings")
            if name.startswith(SYSTEM_PROPERTY_PREFIX):
                raise ValueError(f"property {name!r}: names starting with '__' are reserved")
        if self.delay_ms is not None and (
            isinstance(self.delay_ms, bool) or not isinstance(self.delay_ms, int)
        ):
            raise TypeError("delay_ms must be an int or None")
        if self.delay_ms is not None and self.delay_ms < 0:
            raise ValueError("delay_ms must not be negative")

    def to_record(
        self, *, msg_id: str, queue_id: int, born_timestamp_ms: int, born_host: str
    ) -> MessageRecord:
        """The storage frame contents for this message (store timestamp left 0: the
        leader patches it in place)."""
        properties = self.properties
        if self.delay_ms is not None:
            properties = properties | {PROPERTY_DELAY_MS: str(self.delay_ms)}
        return MessageRecord(
            topic=self.topic,
            body=self.body,
            queue_id=queue_id,
            tags=self.tags,
            keys=" ".join(self.keys),
            properties=properties,
            msg_id=msg_id,
            born_timestamp_ms=born_timestamp_ms,
            born_host=born_host,
        )


@dataclass(kw_only=True)
class MessageExt(Message):
    """A received message: what was sent plus where and when it was stored."""

    msg_id: str
    group: str
    """The broker group that stores it (RocketMQ's broker name)."""
    queue_id: int
    queue_offset: int
    born_timestamp_ms: int
    store_timestamp_ms: int
    born_host: str
    reconsume_times: int = 0
    flag: int = 0
    commit_offset: int | None = None
    """CommitLog offset of the record, when the response carried it (pulls do not)."""

    def __init__(
        self,
        topic: str,
        body: bytes,
        *,
        msg_id: str,
        group: str,
        queue_id: int,
        queue_offset: int,
        born_timestamp_ms: int = 0,
        store_timestamp_ms: int = 0,
        born_host: str = "",
        reconsume_times: int = 0,
        flag: int = 0,
        commit_offset: int | None = None,
        tags: str = "",
        keys: str | Iterable[str] = (),
        properties: Mapping[str, str] | None = None,
        delay_ms: int | None = None,
    ) -> None:
        super().__init__(
            topic, body, tags=tags, keys=keys, properties=properties, delay_ms=delay_ms
        )
        self.msg_id = msg_id
        self.group = group
        self.queue_id = queue_id
        self.queue_offset = queue_offset
        self.born_timestamp_ms = born_timestamp_ms
        self.store_timestamp_ms = store_timestamp_ms
        self.born_host = born_host
        self.reconsume_times = reconsume_times
        self.flag = flag
        self.commit_offset = commit_offset

    @classmethod
    def from_record(
        cls,
        record: MessageRecord,
        *,
        group: str,
        queue_offset: int,
        commit_offset: int | None = None,
    ) -> MessageExt:
        properties = dict(record.properties)
        delay = properties.pop(PROPERTY_DELAY_MS, None)
        return cls(
            record.topic,
            record.body,
            msg_id=record.msg_id,
            group=group,
            queue_id=record.queue_id,
            queue_offset=queue_offset,
            born_timestamp_ms=record.born_timestamp_ms,
            store_timestamp_ms=record.store_timestamp_ms,
            born_host=record.born_host,
            reconsume_times=record.reconsume_times,
            flag=record.flag,
            commit_offset=commit_offset,
            tags=record.tags,
            keys=record.keys,
            properties=properties,
            delay_ms=int(delay) if delay is not None and delay.isdigit() else None,
        )


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class MessageIdGenerator:
    """Unique 32-hex-char message ids, laid out like RocketMQ's UNIQ_KEY (16 bytes):

        ip u32 | pid u16 | nonce u32 | time_ms u32 | counter u16

    ip and pid tell processes apart, the random nonce tells generators within a process
    apart (RocketMQ uses a class-loader hash), and (time_ms, counter) tells one
    generator's ids apart: time_ms never moves backwards (a wall-clock step back is
    ignored) and when 65536 ids were made within one millisecond the time is advanced by
    one, so a generator never repeats itself within the 49.7 days that time_ms (ms mod
    2**32) takes to wrap.
    """

    def __init__(
        self,
        *,
        ip: str = "127.0.0.1",
        pid: int | None = None,
        nonce: int | None = None,
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        octets = [int(part) for part in ip.split(".")] if ip.count(".") == 3 else []
        if len(octets) != 4 or not all(0 <= o <= 255 for o in octets):
            octets = [127, 0, 0, 1]  # not IPv4 (e.g. IPv6): the nonce still separates us
        pid = os.getpid() if pid is None else pid
        nonce = random.getrandbits(32) if nonce is None else nonce
        self._prefix = (
            (
                bytes(octets)
                + (pid & 0xFFFF).to_bytes(2, "big")
                + (nonce & 0xFFFFFFFF).to_bytes(4, "big")
            )
            .hex()
            .upper()
        )
        self._clock_ms = clock_ms
        self._time_ms = -1
        self._count = 0

    def next_id(self) -> str:
        now = self._clock_ms()
        if now > self._time_ms:
            self._time_ms, self._count = now, 0
        elif self._count > 0xFFFF:
            self._time_ms, self._count = self._time_ms + 1, 0
        counter = self._count
        self._count += 1
        tail = ((self._time_ms & 0xFFFFFFFF) << 16) | counter
        msg_id = self._prefix + f"{tail:012X}"
        assert len(msg_id) == MSG_ID_HEX_CHARS
        return msg_id


@dataclass(frozen=True, slots=True)
class MsgIdParts:
    ip: str
    pid: int
    nonce: int
    time_ms_low32: int
    counter: int


def parse_msg_id(msg_id: str) -> MsgIdParts:
    """The fields of an id made by `MessageIdGenerator`; ValueError if it is not one."""
    if len(msg_id) != MSG_ID_HEX_CHARS:
        raise ValueError(f"message id must be {MSG_ID_HEX_CHARS} hex chars: {msg_id!r}")
    raw = bytes.fromhex(msg_id)
    assert len(raw) == _MSG_ID_BYTES
    return MsgIdParts(
        ip=".".join(str(b) for b in raw[:4]),
        pid=int.from_bytes(raw[4:6], "big"),
        nonce=int.from_bytes(raw[6:10], "big"),
        time_ms_low32=int.from_bytes(raw[10:14], "big"),
        counter=int.from_bytes(raw[14:16], "big"),
    )
