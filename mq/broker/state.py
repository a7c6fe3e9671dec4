"""The broker's replicated state: topics, idempotent producers and consumer offsets.

Both change only by applying committed commands (mq/broker/commands.py) in log order,
so every replica holds the same state at the same log position. That is why the
producer table's bound is an LRU whose order is the apply order, never a clock.

Durability: the state is *derived* from the log. A snapshot (`encode`) records it at
a dispatched CommitLog offset; on open the broker loads the snapshot and re-applies the
commands between that offset and the store's dispatched checkpoint (`replay`), then
the dispatcher applies the rest as it re-dispatches. The snapshot is written right
after a store checkpoint, at exactly the checkpoint's dispatched offset, so it is
never ahead of it: the gap replayed on open is only what a crash between the two
writes (or a skipped snapshot) left, and re-applying a command is never needed twice.

Idempotent sends: a producer's batches carry (producer_id, seq), seq strictly
increasing per producer. A batch whose seq is at or below the producer's last applied
seq is a duplicate (a retry) and is not stored again. Only the last batch's record is
kept per producer, so a duplicate of an older seq is still refused but its original
result is unknown (see `SendRecord`).

Consumer offsets: per (group, topic) the committed offset of each queue (the next
queue offset to consume) and a generation, 0 until the first admin reset. A commit
carries the generation the consumer read; it applies only if that is still the
generation when the commit is applied, so a consumer that has not seen a reset cannot
overwrite what the reset set (its entries come back as `stale`).
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cbor2

from mq.broker.commands import (
    CreateTopicCommand,
    OffsetCommand,
    ResetCommand,
    SendCommand,
)
from mq.route import TopicConfig

PRODUCERS_MAX_DEFAULT = 10_000
"""Idempotent producers remembered; the least recently applied one is forgotten first."""

_SNAPSHOT_VERSION = 2
"""2 added consumer offsets and generations; version 1 snapshots still load (none)."""
_SNAPSHOT_VERSIONS_READ = (1, 2)
_CRC = struct.Struct("<I")


def seal(payload: dict[str, Any]) -> bytes:
    """CBOR `payload` behind its CRC32: the form of the broker's snapshot files."""
    body = cbor2.dumps(payload)
    return _CRC.pack(zlib.crc32(body)) + body


def unseal(data: bytes | None) -> Any:
    """What `seal` sealed; None if absent, damaged or not CBOR."""
    if data is None or len(data) < _CRC.size:
        return None
    (crc,) = _CRC.unpack_from(data)
    body = data[_CRC.size :]
    if zlib.crc32(body) != crc:
        return None
    try:
        return cbor2.loads(body)
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class SendRecord:
    """Where an idempotent batch was stored: enough to rebuild its SendResult on demand
    (message ids and queue offset are read back from the CommitLog and ConsumeQueue)."""

    seq: int
    topic: str
    queue_id: int
    commit_offset: int
    """CommitLog offset of the batch's first message frame."""
    count: int


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What applying a SendCommand decided."""

    duplicate: bool
    original: SendRecord | None
    """For a duplicate: the record of the producer's last batch if it has the same seq."""


class BrokerState:
    def __init__(self, producers_max: int = PRODUCERS_MAX_DEFAULT) -> None:
        assert producers_max > 0
        self.producers_max = producers_max
        self.topics: dict[str, TopicConfig] = {}
        self.producers: OrderedDict[str, SendRecord] = OrderedDict()
        self.offsets: dict[tuple[str, str], dict[int, int]] = {}
        """(group, topic) -> {queue_id: committed offset}."""
        self.generations: dict[tuple[str, str], int] = {}
        """(group, topic) -> generation; absent means 0."""

    # ------------------------------------------------------------------ apply

    def apply_send(self, command: SendCommand, first_offset: int) -> SendOutcome:
        """Apply a send whose first message frame is at `first_offset`."""
        if command.create_queues and command.topic not in self.topics:
            queues = command.create_queues
            self.topics[command.topic] = TopicConfig(queues, queues)
        producer_id = command.producer_id
        if producer_id is None:
            return SendOutcome(False, None)
        assert command.seq is not None
        producers = self.producers
        last = producers.get(producer_id)
        if last is not None and command.seq <= last.seq:
            return SendOutcome(True, last if last.seq == command.seq else None)
        producers[producer_id] = SendRecord(
            command.seq, command.topic, command.queue_id, first_offset, command.count
        )
        producers.move_to_end(producer_id)
        if len(producers) > self.producers_max:
            producers.popitem(last=False)
        return SendOutcome(False, None)

    def apply_create_topic(self, command: CreateTopicCommand) -> None:
        self.topics[command.topic] = TopicConfig(
            command.read_queues, command.write_queues, command.perm
        )

    def apply_offsets(self, command: OffsetCommand) -> list[tuple[str, int]]:
        """Apply a commit; returns the (topic, queue_id) entries refused as stale."""
        stale: list[tuple[str, int]] = []
        for entry in command.entries:
            key = (command.group, entry.topic)
            if entry.generation != self.generations.get(key, 0):
                stale.append((entry.topic, entry.queue_id))
                continue
            self.offsets.setdefault(key, {})[entry.queue_id] = entry.offset
        return stale

    def apply_reset(self, command: ResetCommand) -> int:
        """Apply an admin reset; returns the new generation of (group, topic)."""
        key = (command.group, command.topic)
        generation = self.generations.get(key, 0) + 1
        self.generations[key] = generation
        queues = self.offsets.setdefault(key, {})
        for queue_id, offset in command.offsets:
            queues[queue_id] = offset
        return generation

    def last_send(self, producer_id: str) -> SendRecord | None:
        return self.producers.get(producer_id)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        return self.offsets.get((group, topic), {})

    def generation(self, group: str, topic: str) -> int:
        return self.generations.get((group, topic), 0)

    # ------------------------------------------------------------------ snapshot

    def encode(self, offset: int) -> bytes:
        """The state as of dispatched CommitLog `offset`, CRC-protected."""
        payload: dict[str, Any] = {
            "v": _SNAPSHOT_VERSION,
            "offset": offset,
            "topics": {
                name: [c.read_queues, c.write_queues, c.perm] for name, c in self.topics.items()
            },
            "producers": [
                [pid, r.seq, r.topic, r.queue_id, r.commit_offset, r.count]
                for pid, r in self.producers.items()
            ],
            "offsets": [
                [group, topic, [[q, o] for q, o in queues.items()]]
                for (group, topic), queues in self.offsets.items()
            ],
            "generations": [[group, topic, g] for (group, topic), g in self.generations.items()],
        }
        return seal(payload)

    @classmethod
    def decode(cls, data: bytes | None, producers_max: int) -> tuple[BrokerState, int] | None:
        """(state, offset) from `encode`'s bytes; None if absent or damaged."""
        payload = unseal(data)
        if payload is None:
            return None
        try:
            if payload["v"] not in _SNAPSHOT_VERSIONS_READ:
                return None
            state = cls(producers_max)
            for name, (read, write, perm) in payload["topics"].items():
                state.topics[name] = TopicConfig(read, write, perm)
            for pid, seq, topic, queue_id, offset, count in payload["producers"]:
                state.producers[pid] = SendRecord(seq, topic, queue_id, offset, count)
            while len(state.producers) > producers_max:
                state.producers.popitem(last=False)
            for group, topic, queues in payload.get("offsets", []):
                state.offsets[(group, topic)] = {int(q): int(o) for q, o in queues}
            for group, topic, generation in payload.get("generations", []):
                state.generations[(group, topic)] = int(generation)
            return state, int(payload["offset"])
        except Exception:
            return None
