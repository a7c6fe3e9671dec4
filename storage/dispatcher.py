"""Applies committed CommitLog frames to the ConsumeQueues and the IndexFile, in order.

This is where queue offsets are born: a message gets the next offset of its
(topic, queue) when its frame is dispatched, so every replica that dispatches the
same committed log builds byte-identical ConsumeQueues (DESIGN.md, write path).

Dispatch is idempotent per frame, which is what makes recovery simple: after a
crash the store re-dispatches from the checkpoint, and a message whose unit is
already in its ConsumeQueue (the queue's last unit points at or past it) or whose
key is already indexed is skipped rather than added twice.

A CommitLog frame is either a message record or a Raft entry whose data is a
sequence of frames (DESIGN.md: "Raft entry framing wraps a batch of records").
Records that are not messages (consumer offsets, topic config, ...) are handed to
`on_record`, which is how the broker's state machine sees them in commit order.
Inside an entry, a hook that returns False for a record drops the message frames that
follow it in that entry (up to the next record): that is how the broker leaves a
duplicate idempotent send undispatched. The decision must be a deterministic function
of the committed log, so every replica drops the same messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from storage.commit_log import CommitLog
from storage.consume_queue import ConsumeQueueSet
from storage.entry_log import ENTRY_HEADER
from storage.index_file import IndexService
from storage.record import (
    FRAME_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    decode_message_header,
    tag_hash,
)

RecordHook = Callable[[int, int, memoryview], "bool | None"]
"""on_record(magic, commit_offset, frame) for frames that are neither messages nor
entries nor segment-tail blank fillers. Returning
False skips the message frames that follow the record in the same entry."""


class Dispatched(NamedTuple):
    """Where a dispatched message landed; the broker turns these into SendResults."""

    commit_offset: int
    size: int
    topic: str
    queue_id: int
    queue_offset: int
    msg_id: str


class Dispatcher:
    def __init__(
        self,
        commit_log: CommitLog,
        queues: ConsumeQueueSet,
        index: IndexService,
        dispatched_offset: int,
        on_record: RecordHook | None = None,
    ) -> None:
        self._log = commit_log
        self._queues = queues
        self._index = index
        self._on_record = on_record
        self.dispatched_offset = dispatched_offset
        self._resuming = False

    def dispatch(self, upto: int, *, resuming: bool = False) -> list[Dispatched]:
        """Dispatch every frame that starts below `upto` (a committed frame boundary).

        Frames are not CRC-checked again here: the CommitLog checked each one when it
        was appended or recovered. `resuming` (after opening the store) turns on the
        per-message check for units that survived the crash.
        """
        self._resuming = resuming
        out: list[Dispatched] = []
        offset = max(self.dispatched_offset, self._log.min_offset)
        while offset < upto:
            frame, next_offset = self._log.frame_at(offset, verify_crc=False)
            magic = int.from_bytes(frame[4:8], "little")
            if magic == MAGIC_MESSAGE:
                self._dispatch_message(offset, frame, out)
            elif magic == MAGIC_ENTRY:
                self._dispatch_entry(offset, frame, out)
            elif magic != MAGIC_BLANK and self._on_record is not None:
                self._on_record(magic, offset, frame)
            offset = next_offset
        self.dispatched_offset = max(self.dispatched_offset, offset)
        return out

    def _dispatch_entry(self, offset: int, frame: memoryview, out: list[Dispatched]) -> None:
        pos = FRAME_HEADER_BYTES + ENTRY_HEADER.size
        end = len(frame)
        skipping = False
        while pos + 12 <= end:
            size = int.from_bytes(frame[pos : pos + 4], "little")
            assert 12 <= size <= end - pos, "entry data is a sequence of whole frames"
            inner = frame[pos : pos + size]
            magic = int.from_bytes(inner[4:8], "little")
            if magic == MAGIC_MESSAGE:
                if not skipping:
                    self._dispatch_message(offset + pos, inner, out)
            elif self._on_record is not None:
                skipping = self._on_record(magic, offset + pos, inner) is False
            pos += size

    def _dispatch_message(self, offset: int, frame: memoryview, out: list[Dispatched]) -> None:
        head = decode_message_header(frame, verify_crc=False)
        topic = head.topic
        indexed = self._index.last_commit_offset
        if indexed is None or indexed < offset:
            if head.msg_id:
                self._index.put(f"{topic}#{head.msg_id}", offset, head.store_timestamp_ms)
            for key in head.keys.split(" ") if head.keys else ():
                if key:
                    self._index.put(f"{topic}#{key}", offset, head.store_timestamp_ms)
        queue = self._queues.get_or_create(topic, head.queue_id)
        if self._resuming:
            last = queue.last_unit()
            if last is not None and last.commit_offset >= offset:
                return  # dispatched before a crash: its unit survived
        queue_offset = queue.max_offset
        queue.put(queue_offset, offset, len(frame), tag_hash(head.tags))
        out.append(Dispatched(offset, len(frame), topic, head.queue_id, queue_offset, head.msg_id))
