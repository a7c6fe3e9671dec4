"""Message queues and how a producer picks one.

A topic is spread over broker groups, each hosting `write_queues` queues for it; a
`MessageQueue` names one (topic, group, queue id). `MessageQueueSelector` is the hook
for ordered messages: every message with the same shard key must land in the same
queue, so the selector maps (queues, message, arg) to one queue deterministically, and
the producer never moves an ordered send to another queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mq.message import Message
from mq.route import Perm, TopicRoute


@dataclass(frozen=True, slots=True, order=True)
class MessageQueue:
    topic: str
    group: str
    queue_id: int

    def __str__(self) -> str:
        return f"{self.topic}@{self.group}#{self.queue_id}"


def writable_queues(route: TopicRoute) -> list[MessageQueue]:
    """Every queue of the topic that takes writes, ordered by group then queue id (the
    order is part of the ordered-message contract: it must not depend on timing)."""
    return [
        MessageQueue(route.topic, g.group, queue_id)
        for g in route.groups
        if g.topic.perm & Perm.WRITE
        for queue_id in range(g.topic.write_queues)
    ]


def readable_queues(route: TopicRoute) -> list[MessageQueue]:
    return [
        MessageQueue(route.topic, g.group, queue_id)
        for g in route.groups
        if g.topic.perm & Perm.READ
        for queue_id in range(g.topic.read_queues)
    ]


class MessageQueueSelector(Protocol):
    """Chooses the queue of an ordered send. Must be deterministic in (queues, arg):
    the same shard key must map to the same queue for as long as the route is stable."""

    def select(
        self, queues: Sequence[MessageQueue], message: Message, arg: Any
    ) -> MessageQueue: ...


def stable_hash(value: Any) -> int:
    """A hash that is the same in every process (Python's hash() of str is salted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    data = value if isinstance(value, bytes) else str(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class SelectByHash:
    """RocketMQ's `SelectMessageQueueByHash`: queue = queues[hash(shard key) % len].
    Ints hash to their absolute value (order ids spread evenly and predictably)."""

    def select(self, queues: Sequence[MessageQueue], message: Message, arg: Any) -> MessageQueue:
        if not queues:
            raise ValueError("no queue to select from")
        return queues[stable_hash(arg) % len(queues)]
