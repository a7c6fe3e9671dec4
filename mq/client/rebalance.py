"""Who consumes which queue: RocketMQ's queue allocation strategies, as pure functions.

In clustering mode every member of a consumer group computes its own share of a topic's
queues, independently and without talking to the others. That only works if every
member, given the same inputs, computes the same partition: so a strategy is a pure
function of (consumer group, my client id, every client id, every queue), both lists
sorted by the caller, and nothing else (no clock, no randomness, no salted `hash()`).
Members that see different member lists during a change briefly overlap or leave a
queue unowned; the next rebalance (at the latest `rebalance_interval_ms` later, or at
once on NOTIFY_CONSUMER_IDS_CHANGED) converges.

The strategies mirror RocketMQ's `AllocateMessageQueueStrategy` implementations:

- `AllocateAveragely`: contiguous blocks, sizes differ by at most one.
- `AllocateAveragelyByCircle`: round-robin (member i takes queues i, i+n, i+2n, ...).
- `AllocateConsistentHash`: a hash ring with virtual nodes; a member joining or
  leaving moves only about 1/n of the queues (fewer duplicates around rebalance).
- `AllocateByConfig`: a fixed list of queues, whatever the group looks like (for
  pinning a consumer to queues by hand; the members' lists must not overlap).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from mq.client.queues import MessageQueue

VIRTUAL_NODES_DEFAULT = 10
"""Ring points per member for `AllocateConsistentHash` (RocketMQ's default)."""


class AllocateStrategy(Protocol):
    """Chooses the queues `client_id` consumes. `client_ids` and `queues` are sorted;
    the result is in `queues` order. A `client_id` not among `client_ids` (our heartbeat
    has not reached the broker yet) gets nothing, as in RocketMQ."""

    @property
    def name(self) -> str: ...

    def allocate(
        self,
        group: str,
        client_id: str,
        client_ids: Sequence[str],
        queues: Sequence[MessageQueue],
    ) -> list[MessageQueue]: ...


class _ByPosition:
    """A strategy that needs only this member's position among the sorted members."""

    def allocate(
        self,
        group: str,
        client_id: str,
        client_ids: Sequence[str],
        queues: Sequence[MessageQueue],
    ) -> list[MessageQueue]:
        if client_id not in client_ids:
            return []
        return self.share(client_ids.index(client_id), len(client_ids), queues)

    def share(self, index: int, members: int, queues: Sequence[MessageQueue]) -> list[MessageQueue]:
        raise NotImplementedError


class AllocateAveragely(_ByPosition):
    """RocketMQ's AllocateMessageQueueAveragely: with q queues and n members, member i
    (by sorted id) takes a contiguous block; the first q % n members take one more."""

    name = "averagely"

    def share(self, index: int, members: int, queues: Sequence[MessageQueue]) -> list[MessageQueue]:
        size, extra = divmod(len(queues), members)
        start = index * size + min(index, extra)
        end = start + size + (1 if index < extra else 0)
        return list(queues[start:end])


class AllocateAveragelyByCircle(_ByPosition):
    """RocketMQ's AllocateMessageQueueAveragelyByCircle: member i takes queues
    i, i+n, i+2n, ... (spreads one broker group's queues over the members)."""

    name = "circle"

    def share(self, index: int, members: int, queues: Sequence[MessageQueue]) -> list[MessageQueue]:
        return list(queues[index::members])


class AllocateConsistentHash:
    """RocketMQ's AllocateMessageQueueConsistentHash: every member puts
    `virtual_nodes` points on a 64-bit ring; a queue belongs to the member owning the
    first point at or after the queue's own hash (wrapping around)."""

    name = "consistent_hash"

    def __init__(self, virtual_nodes: int = VIRTUAL_NODES_DEFAULT) -> None:
        if virtual_nodes <= 0:
            raise ValueError("virtual_nodes must be positive")
        self.virtual_nodes = virtual_nodes

    def allocate(
        self,
        group: str,
        client_id: str,
        client_ids: Sequence[str],
        queues: Sequence[MessageQueue],
    ) -> list[MessageQueue]:
        if client_id not in client_ids:
            return []
        ring = sorted(
            (_ring_hash(f"{member}-{i}"), member)
            for member in client_ids
            for i in range(self.virtual_nodes)
        )
        points = [point for point, _ in ring]
        mine = []
        for queue in queues:
            at = bisect.bisect_left(points, _ring_hash(str(queue))) % len(ring)
            if ring[at][1] == client_id:
                mine.append(queue)
        return mine


class AllocateByConfig:
    """RocketMQ's AllocateMessageQueueByConfig: always the configured queues (those
    the topic still has), whatever the members. Each member gets its own list."""

    name = "config"

    def __init__(self, queues: Iterable[MessageQueue]) -> None:
        self.queues = frozenset(queues)

    def allocate(
        self,
        group: str,
        client_id: str,
        client_ids: Sequence[str],
        queues: Sequence[MessageQueue],
    ) -> list[MessageQueue]:
        return [queue for queue in queues if queue in self.queues]


STRATEGIES: dict[
    str, type[AllocateAveragely | AllocateAveragelyByCircle | AllocateConsistentHash]
] = {
    AllocateAveragely.name: AllocateAveragely,
    AllocateAveragelyByCircle.name: AllocateAveragelyByCircle,
    AllocateConsistentHash.name: AllocateConsistentHash,
}
"""The strategies that need no configuration, by name (for the CLI)."""


def _ring_hash(key: str) -> int:
    """MD5's first 8 bytes, as RocketMQ's ring does: the same in every process."""
    return int.from_bytes(hashlib.md5(key.encode(), usedforsecurity=False).digest()[:8], "big")
