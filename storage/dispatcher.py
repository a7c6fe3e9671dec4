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

import zlib
from collections.abc import Callable
from typing import NamedTuple

from storage.commit_log import CommitLog
from storage.consume_queue import ConsumeQueueSet
from storage.entry_log import inner_frames
from storage.errors import CorruptRecordError
from storage.index_file import IndexService
from storage.record import (
    BLANK_HEADER_BYTES,
    FRAME_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    dispatch_fields,
    tag_hash,
)

_CACHE_MAX = 4096
"""Topic names and tag hashes remembered by the dispatcher (few distinct ones in use)."""

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
        self._interrupted = False
        self.newest_store_ms = 0
        """Store time of the newest message dispatched since the owner last set this
        (the broker: since the last segment boundary), so retention knows a segment's
        age without reading it again."""
        self._topics: dict[bytes, tuple[str, int]] = {}
        self._tag_hashes: dict[bytes, int] = {}

    def dispatch(
        self, upto: int, *, resuming: bool = False, out: list[Dispatched] | None = None
    ) -> list[Dispatched]:
        """Dispatch every frame that starts below `upto` (a committed frame boundary);
        returns what was queued, appended to `out` if given.

        Frames are not CRC-checked again here: the CommitLog checked each one when it
        was appended or recovered. `resuming` (after opening the store) turns on the
        per-message check for units that survived the crash. A call that fails (a full
        disk) leaves in `out` what it queued before; the next call resumes after them.
        """
        self._resuming = resuming or self._interrupted
        self._interrupted = True  # until this call returns: a failure (disk full) resumes
        if out is None:
            out = []
        log = self._log
        segment_bytes = log.segment_bytes
        offset = max(self.dispatched_offset, log.min_offset)
        while offset < upto:
            # One zero-copy view per segment; frames inside it are walked by their sizes.
            segment_end = offset - offset % segment_bytes + segment_bytes
            span = min(upto, segment_end) - offset
            view = log.read(offset, span)
            next_offset = offset + span
            pos = 0
            while pos < span:
                if span - pos < BLANK_HEADER_BYTES:
                    next_offset = segment_end  # a tail too short for any frame
                    break
                size = int.from_bytes(view[pos : pos + 4], "little")
                magic = int.from_bytes(view[pos + 4 : pos + 8], "little")
                if magic == MAGIC_BLANK:
                    next_offset = segment_end
                    break
                if size < FRAME_HEADER_BYTES or pos + size > span:
                    raise CorruptRecordError(f"frame at {offset + pos}: bad size {size}")
                frame = view[pos : pos + size]
                if magic == MAGIC_MESSAGE:
                    self._dispatch_message(offset + pos, frame, out)
                elif magic == MAGIC_ENTRY:
                    self._dispatch_entry(offset + pos, frame, out)
                elif self._on_record is not None:
                    self._on_record(magic, offset + pos, frame)
                pos += size
                self.dispatched_offset = offset + pos
            offset = self.dispatched_offset = next_offset
        self._interrupted = False
        return out

    def reset(self, offset: int) -> None:
        """Go on from `offset` after the store was reset there: nothing below it will
        ever be dispatched, and nothing at or past it was, so there is nothing to resume
        (an interrupted call's resuming mode ends here)."""
        self.dispatched_offset = offset
        self._resuming = self._interrupted = False
        self.newest_store_ms = 0

    def _dispatch_entry(self, offset: int, frame: memoryview, out: list[Dispatched]) -> None:
        skipping = False
        run: list[tuple[int, memoryview]] = []  # message frames since the last record
        for pos, magic, inner in inner_frames(frame):
            if magic == MAGIC_MESSAGE:
                if not skipping:
                    run.append((offset + pos, inner))
            else:
                if run:
                    self._dispatch_run(run, out)
                    run = []
                if self._on_record is not None:
                    skipping = self._on_record(magic, offset + pos, inner) is False
        if run:
            self._dispatch_run(run, out)

    def _dispatch_run(self, run: list[tuple[int, memoryview]], out: list[Dispatched]) -> None:
        """Dispatch consecutive message frames of one entry, a producer's batch: each
        stretch of one (topic, queue) is indexed with one IndexFile write and queued with
        one ConsumeQueue write, instead of a handful of small writes per message.

        The result is byte-identical to dispatching them one by one. A resumed call
        (after a crash or a full disk) goes one by one: it skips what already landed,
        and on a disk still full it queues each message whose index entries fit before
        stopping, where a stretch would stop before queueing any.
        """
        if self._resuming or len(run) == 1:
            for offset, frame in run:
                self._dispatch_message(offset, frame, out)
            return
        fields = [(offset, len(frame), *dispatch_fields(frame)) for offset, frame in run]
        start = 0
        while start < len(fields):
            _, _, queue_id, _, _, _, topic_raw, _, _ = fields[start]
            end = start + 1
            while end < len(fields) and fields[end][2] == queue_id and fields[end][6] == topic_raw:
                end += 1
            self._dispatch_stretch(fields[start:end], out)
            start = end

    def _dispatch_stretch(
        self,
        fields: list[tuple[int, int, int, int, str, memoryview, bytes, bytes, bytes]],
        out: list[Dispatched],
    ) -> None:
        """Messages (offset, size, *dispatch_fields) of one (topic, queue), in order."""
        _, _, queue_id, _, _, _, topic_raw, _, _ = fields[0]
        topic_info = self._topics.get(topic_raw)
        if topic_info is None:
            topic_info = self._learn_topic(topic_raw)
        topic, key_prefix = topic_info
        index = self._index
        indexed = index.last_commit_offset
        if indexed is None:
            indexed = -1
        newest_ms = self.newest_store_ms
        entries: list[tuple[int, int, int]] = []
        ends: list[int] = []
        for offset, _, _, store_ms, _, msg_id_raw, _, _, keys_raw in fields:
            if store_ms > newest_ms:
                newest_ms = store_ms
            if offset > indexed:
                _index_entries(entries, offset, store_ms, msg_id_raw, keys_raw, key_prefix)
                ends.append(len(entries))
        self.newest_store_ms = newest_ms
        index.put_messages(entries, ends)
        queue = self._queues.get_or_create(topic, queue_id)
        tag_hashes = self._tag_hashes
        units: list[tuple[int, int, int]] = []
        for offset, size, _, _, _, _, _, tags_raw, _ in fields:
            if tags_raw:
                hashed = tag_hashes.get(tags_raw)
                if hashed is None:
                    hashed = self._learn_tag(tags_raw)
            else:
                hashed = 0
            units.append((offset, size, hashed))
        first = queue.max_offset
        try:
            queue.put_many(first, units)
        finally:
            # On a full disk, report the units that landed: the next call resumes after.
            for i in range(queue.max_offset - first):
                offset, size, _, _, msg_id, _, _, _, _ = fields[i]
                out.append(Dispatched(offset, size, topic, queue_id, first + i, msg_id))

    def _dispatch_message(self, offset: int, frame: memoryview, out: list[Dispatched]) -> None:
        # The hot path of every replica, per message: fields are read as bytes where
        # that is all they are needed as (the index hashes keys straight from the
        # frame; topic names and tag hashes are cached by their bytes).
        queue_id, store_ms, msg_id, msg_id_raw, topic_raw, tags_raw, keys_raw = dispatch_fields(
            frame
        )
        if store_ms > self.newest_store_ms:
            self.newest_store_ms = store_ms
        topic_info = self._topics.get(topic_raw)
        if topic_info is None:
            topic_info = self._learn_topic(topic_raw)
        topic, key_prefix = topic_info
        indexed = self._index.last_commit_offset
        if indexed is None or indexed < offset:
            entries: list[tuple[int, int, int]] = []
            _index_entries(entries, offset, store_ms, msg_id_raw, keys_raw, key_prefix)
            self._index.put_messages(entries, (len(entries),))
        queue = self._queues.get_or_create(topic, queue_id)
        if self._resuming:
            last = queue.last_unit()
            if last is not None and last.commit_offset >= offset:
                return  # dispatched before a crash: its unit survived
        if tags_raw:
            hashed = self._tag_hashes.get(tags_raw)
            if hashed is None:
                hashed = self._learn_tag(tags_raw)
        else:
            hashed = 0
        queue_offset = queue.max_offset
        queue.put(queue_offset, offset, len(frame), hashed)
        out.append(Dispatched(offset, len(frame), topic, queue_id, queue_offset, msg_id))

    def _learn_topic(self, raw: bytes) -> tuple[str, int]:
        """(topic, CRC of "topic#"): index keys are "topic#key", hashed as one string."""
        try:
            topic = str(raw, "ascii")
        except UnicodeDecodeError as exc:
            raise CorruptRecordError(f"message topic is not ASCII: {exc}") from None
        if len(self._topics) >= _CACHE_MAX:
            self._topics.clear()
        info = self._topics[raw] = (topic, zlib.crc32(raw + b"#"))
        return info

    def _learn_tag(self, raw: bytes) -> int:
        try:
            hashed = tag_hash(str(raw, "utf-8"))
        except UnicodeDecodeError as exc:
            raise CorruptRecordError(f"message tags are not UTF-8: {exc}") from None
        if len(self._tag_hashes) >= _CACHE_MAX:
            self._tag_hashes.clear()
        self._tag_hashes[raw] = hashed
        return hashed


def _index_entries(
    out: list[tuple[int, int, int]],
    offset: int,
    store_ms: int,
    msg_id_raw: memoryview,
    keys_raw: bytes,
    key_prefix: int,
) -> None:
    """A message's index entries: its unique id and each key, as "topic#key" hashes."""
    if msg_id_raw:
        out.append((zlib.crc32(msg_id_raw, key_prefix), offset, store_ms))
    if keys_raw:
        for key in keys_raw.split(b" "):
            if key:
                out.append((zlib.crc32(key, key_prefix), offset, store_ms))
