"""The broker's replicated command records: the first frame of every Raft entry it proposes.

An entry's data is a sequence of whole frames (storage/dispatcher.py walks them): one
command frame, then for a send the message frames it stores. The command frame has the
CommitLog's 12-byte frame header (size, magic, CRC of the rest) with `MAGIC_COMMAND`
and a small CBOR map as payload, so it can be walked, skipped and checked like any
other frame, and its content can grow fields without a format change.

Commands are decided by the leader and applied, in commit order, on every replica;
everything that applying one needs is in the record (e.g. how many queues an
auto-created topic gets), so applying is a pure function of the log.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, TypeAlias

import cbor2

MAGIC_COMMAND = 0x5C0A7D81
"""Differs in every byte from storage's MAGIC_MESSAGE, MAGIC_ENTRY and MAGIC_BLANK."""

FRAME_HEADER_BYTES = 12
_HEADER = struct.Struct("<III")
COMMAND_BYTES_MAX = 1 << 20
"""Refused when decoding. The largest command is an offset commit of
`OFFSET_ENTRIES_MAX` entries (a 127-character topic name and three ints each: about
600 KiB); every other one is a few names and ints."""

OFFSET_ENTRIES_MAX = 4096
"""Queue offsets one UPDATE_CONSUMER_OFFSET (one `offset` command) may carry."""


class CommandError(ValueError):
    """A command frame is malformed (a bug or corruption: commands are made by leaders)."""


@dataclass(frozen=True, slots=True)
class SendCommand:
    """A producer batch: `count` message frames for topic/queue_id follow in the entry.

    `producer_id`/`seq` make it idempotent (None for a plain send). `create_queues` > 0
    means "auto-create the topic with that many queues if it does not exist yet".
    """

    topic: str
    queue_id: int
    count: int
    producer_id: str | None = None
    seq: int | None = None
    create_queues: int = 0


@dataclass(frozen=True, slots=True)
class CreateTopicCommand:
    """Create or update a topic's configuration."""

    topic: str
    read_queues: int
    write_queues: int
    perm: int


@dataclass(frozen=True, slots=True)
class OffsetEntry:
    """One queue's committed consumer offset, valid for `generation` of (group, topic)."""

    topic: str
    queue_id: int
    offset: int
    generation: int


@dataclass(frozen=True, slots=True)
class OffsetCommand:
    """A consumer group commits offsets (the next queue offset to consume) for queues.

    An entry whose `generation` is not the replicated generation of (group, topic) when
    the command is applied is not applied: an admin reset happened in between.
    """

    group: str
    entries: tuple[OffsetEntry, ...]


@dataclass(frozen=True, slots=True)
class ResetCommand:
    """An admin reset: set every listed queue's offset of (group, topic) and start a new
    generation. The new generation is not in the record: applying increments it, so two
    resets proposed before either is applied still end in distinct generations."""

    group: str
    topic: str
    offsets: tuple[tuple[int, int], ...]
    """(queue_id, offset) pairs, computed by the leader from its ConsumeQueues."""


Command: TypeAlias = SendCommand | CreateTopicCommand | OffsetCommand | ResetCommand


def encode_command(command: Command) -> bytes:
    """The whole command frame (header + CRC + CBOR payload)."""
    payload: dict[str, Any]
    if isinstance(command, SendCommand):
        payload = {"k": "send", "t": command.topic, "q": command.queue_id, "n": command.count}
        if command.producer_id is not None:
            payload["p"] = command.producer_id
            payload["s"] = command.seq
        if command.create_queues:
            payload["c"] = command.create_queues
    elif isinstance(command, CreateTopicCommand):
        payload = {
            "k": "topic",
            "t": command.topic,
            "r": command.read_queues,
            "w": command.write_queues,
            "m": command.perm,
        }
    elif isinstance(command, OffsetCommand):
        payload = {
            "k": "offset",
            "g": command.group,
            "o": [[e.topic, e.queue_id, e.offset, e.generation] for e in command.entries],
        }
    else:
        payload = {
            "k": "reset",
            "g": command.group,
            "t": command.topic,
            "o": [[queue_id, offset] for queue_id, offset in command.offsets],
        }
    body = cbor2.dumps(payload)
    size = FRAME_HEADER_BYTES + len(body)
    if size > COMMAND_BYTES_MAX:
        raise CommandError(f"command of {size} bytes is over {COMMAND_BYTES_MAX}")
    return _HEADER.pack(size, MAGIC_COMMAND, zlib.crc32(body)) + body


def decode_command(frame: memoryview | bytes) -> Command:
    """Decode a command frame (as the dispatcher hands it over); CommandError if bad."""
    view = memoryview(frame)
    if view.nbytes < FRAME_HEADER_BYTES:
        raise CommandError(f"command frame of {view.nbytes} bytes")
    size, magic, crc = _HEADER.unpack_from(view, 0)
    if magic != MAGIC_COMMAND or size != view.nbytes or size > COMMAND_BYTES_MAX:
        raise CommandError(f"not a command frame: magic {magic:#010x}, size {size}")
    body = view[FRAME_HEADER_BYTES:]
    if zlib.crc32(body) != crc:
        raise CommandError("command frame CRC mismatch")
    try:
        payload = cbor2.loads(body)
        kind = payload["k"]
        if kind == "send":
            producer_id = payload.get("p")
            return SendCommand(
                topic=_str(payload["t"]),
                queue_id=_int(payload["q"]),
                count=_int(payload["n"]),
                producer_id=None if producer_id is None else _str(producer_id),
                seq=None if producer_id is None else _int(payload["s"]),
                create_queues=_int(payload.get("c", 0)),
            )
        if kind == "topic":
            return CreateTopicCommand(
                topic=_str(payload["t"]),
                read_queues=_int(payload["r"]),
                write_queues=_int(payload["w"]),
                perm=_int(payload["m"]),
            )
        if kind == "offset":
            return OffsetCommand(
                group=_str(payload["g"]),
                entries=tuple(
                    OffsetEntry(_str(topic), _int(queue_id), _int(offset), _int(generation))
                    for topic, queue_id, offset, generation in payload["o"]
                ),
            )
        if kind == "reset":
            return ResetCommand(
                group=_str(payload["g"]),
                topic=_str(payload["t"]),
                offsets=tuple((_int(q), _int(o)) for q, o in payload["o"]),
            )
    except CommandError:
        raise
    except Exception as exc:  # cbor2 raises several types; all mean "malformed"
        raise CommandError(f"malformed command payload: {type(exc).__name__}: {exc}") from None
    raise CommandError(f"unknown command kind {kind!r}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise CommandError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommandError(f"expected an int, got {type(value).__name__}")
    return value
