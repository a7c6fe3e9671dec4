"""The messages of one assigned queue between the pull that fetched them and their ack.

RocketMQ's ProcessQueue. The push consumer pulls a queue ahead of its handlers and
keeps what it pulled here until each message is handled. Two rules depend on it:

- **Which offset may be committed.** Handlers finish out of order (a slow message at
  offset 5 while 6..9 are done), and a committed offset means "everything below was
  handled" (docs/broker-api.md). So the committable offset is the lowest offset still
  here (in flight or waiting for a retry), or, when nothing is, the offset after the
  last pull (`pulled_to`: messages the tag filter dropped count as handled). A crash
  then redelivers at most what was in flight, and never skips a message.
- **Flow control.** Pulling stops while the queue holds `messages_max` messages or
  `bytes_max` bytes of bodies (RocketMQ's pullThresholdForQueue / SizeForQueue) and
  resumes when handlers make room: a slow handler bounds memory instead of growing it.

A process queue is *dropped* when the queue is taken away (rebalance, reset): its pull
task stops, and acks of its messages that were still in flight are ignored (the new
owner will deliver them again: at-least-once, duplicates only around a rebalance).
"""

from __future__ import annotations

import anyio

from mq.client.queues import MessageQueue
from mq.message import MessageExt


class ProcessQueue:
    def __init__(self, mq: MessageQueue, *, messages_max: int, bytes_max: int) -> None:
        assert messages_max > 0 and bytes_max > 0
        self.mq = mq
        self.messages_max = messages_max
        self.bytes_max = bytes_max
        self.generation = 0
        """The (consumer group, topic) generation the start offset was read under; a
        commit carries it so the broker can refuse commits that predate a reset."""
        self.pulled_to: int | None = None
        """The offset the next pull starts at: past everything received so far. None
        until the start offset is known."""
        self.committed: int | None = None
        """The offset last committed (or read from the store): commits are skipped
        while the committable offset equals it."""
        self.dropped = False
        self.cancel_scope = anyio.CancelScope()
        """Cancels the queue's pull task when the queue is dropped."""
        self._messages: dict[int, MessageExt] = {}
        self._bytes = 0
        self._room = anyio.Event()

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return len(self._messages) >= self.messages_max or self._bytes >= self.bytes_max

    async def wait_for_room(self) -> None:
        """Return once the queue is below both limits (at once if it already is)."""
        while self.full:
            await self._room.wait()

    def start_at(self, offset: int, *, generation: int, committed: int | None) -> None:
        """The queue was taken: consume from `offset` (`committed` is what the store
        holds, None if nothing)."""
        assert offset >= 0
        self.pulled_to = offset
        self.generation = generation
        self.committed = committed

    def put(self, messages: list[MessageExt], next_offset: int) -> list[MessageExt]:
        """Add what a pull returned and move `pulled_to` to its `next_offset`. Returns
        the messages that are new here (a message already held is not delivered twice)."""
        added = []
        for message in messages:
            if message.queue_offset not in self._messages:
                self._messages[message.queue_offset] = message
                self._bytes += len(message.body)
                added.append(message)
        if self.pulled_to is None or next_offset > self.pulled_to:
            self.pulled_to = next_offset
        return added

    def move_to(self, offset: int) -> None:
        """The broker said the pull offset is illegal: continue at `offset`. Messages
        still held keep the commit offset where it is until they are handled."""
        self.pulled_to = offset

    def remove(self, offset: int) -> None:
        """The message at `offset` was handled: it no longer holds the commit offset."""
        was_full = self.full
        message = self._messages.pop(offset, None)
        if message is None:
            return
        self._bytes -= len(message.body)
        if was_full and not self.full:  # only then can anyone be waiting for room
            self._room.set()
            self._room = anyio.Event()

    def holds(self, offset: int) -> bool:
        return offset in self._messages

    def commit_offset(self) -> int | None:
        """The offset that may be committed now: the lowest held, else `pulled_to`.
        (A scan, not the first key: after a pull offset moved back, insertion order is
        no longer offset order. At most `messages_max` keys, once per commit.)"""
        if self._messages:
            return min(self._messages)
        return self.pulled_to

    def drop(self) -> None:
        """Stop the queue: cancel its pull, forget its messages (they are not lost: the
        committed offset is below every one of them)."""
        self.dropped = True
        self.cancel_scope.cancel()
        self._messages.clear()
        self._bytes = 0
        self._room.set()
