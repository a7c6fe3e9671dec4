"""MessageStore: the facade the broker talks to — put, get, query, recover, retain.

It owns one CommitLog, the ConsumeQueues, the IndexFile and the checkpoint, and
keeps them consistent across crashes:

* `put_messages` validates and appends; nothing is visible to readers until
  `dispatch(upto)` applies it (the broker calls it with the Raft commit point; a
  standalone store with the append point). Readers only ever see dispatched data.
* `open` recovers: with the abort marker present (the last run did not close
  cleanly) it validates CommitLog frames from the checkpoint on and truncates a
  torn or corrupt tail; then it drops ConsumeQueue units and index entries that
  point past the CommitLog, and re-dispatches what they miss.
* `delete_expired` removes whole old segments by age or disk pressure.
* `reset` empties the store for a replica that installs a snapshot, keeping the
  leader's CommitLog offset and queue offsets for what comes next.

The store never reads a clock: every time is a `now_ms` argument.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from storage.checkpoint import Checkpoint
from storage.commit_log import CommitLog
from storage.consume_queue import (
    BLANK_SIZE,
    ConsumeQueue,
    ConsumeQueueSet,
    Unit,
    validate_queue_next,
)
from storage.dispatcher import Dispatched, Dispatcher, RecordHook
from storage.entry_log import ENTRY_HEADER
from storage.errors import CorruptRecordError, DiskFullError, OffsetOutOfRangeError
from storage.files import FileSystem
from storage.flush import FlushMode
from storage.index_file import IndexFile, IndexService
from storage.record import (
    FRAME_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    STORE_TIMESTAMP_OFFSET,
    MessageRecord,
    decode_message_header,
    encode_messages,
    tag_hash,
    validate_topic,
)

log = logging.getLogger(__name__)


class GetStatus(Enum):
    """RocketMQ's GetMessageStatus, with the same meanings for `next_offset`."""

    FOUND = "FOUND"
    NO_MATCHED_MESSAGE = "NO_MATCHED_MESSAGE"
    NO_MATCHED_LOGIC_QUEUE = "NO_MATCHED_LOGIC_QUEUE"
    NO_MESSAGE_IN_QUEUE = "NO_MESSAGE_IN_QUEUE"
    OFFSET_TOO_SMALL = "OFFSET_TOO_SMALL"
    OFFSET_OVERFLOW_ONE = "OFFSET_OVERFLOW_ONE"
    OFFSET_OVERFLOW_BADLY = "OFFSET_OVERFLOW_BADLY"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    segment_bytes: int = 1 << 30
    cq_units_per_segment: int = 300_000
    index_slots: int = 5_000_000
    index_entries_max: int = 20_000_000
    message_bytes_max: int = 4 << 20
    flush_mode: FlushMode = FlushMode.ASYNC
    flush_interval_ms: int = 500
    flush_bytes_min: int = 16 << 10
    retention_ms: int = 72 * 3600 * 1000
    disk_ratio_max: float = 0.75
    pull_bytes_max: int = 256 << 10
    pull_count_max: int = 32


@dataclass(slots=True)
class GetResult:
    status: GetStatus
    next_offset: int
    min_offset: int
    max_offset: int
    messages: list[tuple[int, memoryview]] = field(default_factory=list)
    """(queue offset, the message frame) pairs, frames are zero-copy views."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    clean: bool
    commitlog_max: int
    truncated_bytes: int
    redispatched: int


@dataclass(slots=True)
class CheckpointPlan:
    """A checkpoint's I/O, made by `MessageStore.prepare_checkpoint` so that it can run
    in a worker thread: a broker leader's event loop then goes on taking sends while the
    queues, the index and the checkpoint file are fsynced (about ten fsyncs a second,
    each up to tens of milliseconds on a busy disk)."""

    fs: FileSystem
    path: str
    checkpoint: Checkpoint
    queues: tuple[ConsumeQueue, ...]
    index_file: IndexFile | None
    written: bool = False
    disk_full: DiskFullError | None = None
    """Set by `run` when the checkpoint file did not fit: the previous one stands, and
    recovery re-dispatches a little more after a crash."""

    def run(self) -> None:
        """Sync, then write the record: recovery trusts it only for what was synced."""
        self.disk_full = None
        names: set[str] = set()  # directories to sync once, not once per new queue
        for queue in self.queues:
            queue.flush(names)
        try:
            for directory in sorted(names):
                self.fs.sync_dir(directory)
        except DiskFullError as exc:  # out of file descriptors: the next one tries again
            self.queues[0].names_not_synced(names)
            self.disk_full = exc
            return
        if self.index_file is not None:
            self.index_file.flush()
        try:
            self.fs.write_atomic(self.path, self.checkpoint.encode())
        except DiskFullError as exc:
            self.disk_full = exc
            return
        self.written = True


class MessageStore:
    def __init__(
        self,
        fs: FileSystem,
        root: str,
        config: StoreConfig | None = None,
        on_record: RecordHook | None = None,
    ) -> None:
        """Open (and recover) the store under `root`; see `recovery` for what happened."""
        self.config = config or StoreConfig()
        self.fs = fs
        self.root = root.rstrip("/")
        fs.makedirs(self.root)
        self._abort_path = f"{self.root}/abort"
        self._checkpoint_path = f"{self.root}/checkpoint"
        clean = not fs.exists(self._abort_path)
        fs.write_atomic(self._abort_path, b"")
        checkpoint = Checkpoint.decode(fs.read_bytes(self._checkpoint_path)) or Checkpoint()
        self._checkpoint = checkpoint
        cfg = self.config
        self.commit_log = CommitLog(fs, f"{self.root}/commitlog", cfg.segment_bytes)
        self.queues = ConsumeQueueSet(fs, f"{self.root}/consumequeue", cfg.cq_units_per_segment)
        self.index = IndexService(fs, self.root, cfg.index_slots, cfg.index_entries_max)
        self.recovery = self._recover(clean, checkpoint, on_record)
        self._segment_last_store_ms: dict[int, int] = {}

    # ------------------------------------------------------------------ recovery

    def _recover(self, clean: bool, cp: Checkpoint, on_record: RecordHook | None) -> RecoveryReport:
        cl = self.commit_log
        # A clean stop flushed everything, so the scan from the checkpoint is empty; after a
        # crash it validates every frame written since the last durable checkpoint.
        if cl.recovered:  # a new, empty log
            truncated = 0
        else:
            flushed = (
                cp.commitlog_flushed if cp.commitlog_flushed >= cl.min_offset else cl.min_offset
            )
            start = flushed - flushed % cl.segment_bytes
            segments = cl.segments()
            if segments:  # a truncate may have cut below the checkpoint
                start = min(start, segments[-1][0])
            report = cl.recover(max(start, cl.min_offset))
            truncated = report.truncated_bytes
            if report.truncated:
                log.warning(
                    "commitlog truncated at %d (%s): %d bytes dropped, segments %s deleted",
                    report.valid_until,
                    report.stopped_because,
                    report.truncated_bytes,
                    list(report.segments_deleted),
                )
        self.queues.recover(cl.max_offset, self._unit_matches)
        self.queues.delete_before_commit_offset(cl.min_offset)
        dispatched_from = max(min(cp.dispatched, cl.max_offset), cl.min_offset)
        # A message puts several index entries (id, keys); a crash can keep some of them.
        # Rebuilding the index from the checkpoint is exact; ConsumeQueues hold one unit a
        # message, so the dispatcher skips the units they already have instead.
        self.index.truncate_to_commit_offset(dispatched_from)
        self.dispatcher = Dispatcher(cl, self.queues, self.index, dispatched_from, on_record)
        redispatched = len(self.dispatcher.dispatch(self.dispatch_limit_on_open(), resuming=True))
        return RecoveryReport(clean, cl.max_offset, truncated, redispatched)

    def _unit_matches(self, queue: ConsumeQueue, queue_offset: int, unit: Unit) -> bool:
        """Does the CommitLog hold, at the unit's offset and size, a message of that queue
        with that tag hash? Every field is compared: a crash can tear a 20-byte unit
        anywhere, e.g. after the offset and size but before the tag hash, and a unit with a
        wrong tag hash would make tag-filtered pulls skip its message for good.

        A unit whose message lies wholly below the CommitLog's min offset (retention
        deleted its segment) matches without a look: it cannot be checked, and dropping
        it would move the queue's max offset back, so offsets already handed out would be
        handed out again (re-dispatch cannot rebuild it, its frame is gone). Keeping it
        cannot keep a torn unit that should not exist: a unit is commit_offset u64 |
        size u32 | tag u64, written over zeros, so a write torn inside the commit offset
        leaves size 0, which is no unit at all; one torn later has the whole, true commit
        offset of a message that was dispatched, and a wrong size or tag hash below the
        min offset is never used (such units are never served)."""
        if unit.commit_offset + unit.size <= self.commit_log.min_offset:
            return True
        try:
            head = decode_message_header(
                self._frame(unit.commit_offset, unit.size), verify_crc=False
            )
        except (CorruptRecordError, OffsetOutOfRangeError):
            return False
        return (
            head.topic == queue.topic
            and head.queue_id == queue.queue_id
            and tag_hash(head.tags) == unit.tag_hash
        )

    def dispatch_limit_on_open(self) -> int:
        """How far to re-dispatch on open. A standalone store treats everything in the
        CommitLog as committed; a replicated one overrides this with its commit point."""
        return self.commit_log.max_offset

    # ------------------------------------------------------------------ writes

    def encode(self, records: Sequence[MessageRecord]) -> tuple[bytearray, list[int]]:
        """Validate and encode a batch into one buffer of frames (and their sizes)."""
        for record in records:
            validate_topic(record.topic)
        return encode_messages(records, message_bytes_max=self.config.message_bytes_max)

    def put_messages(self, records: Sequence[MessageRecord]) -> list[int]:
        """Append a batch; returns the commit offsets. Invisible until dispatched."""
        buf, sizes = self.encode(records)
        # The buffer was encoded (and CRC'd) just now, in this process: no need to re-check.
        return self.commit_log.append_buffer(buf, sizes, verify_crc=False)

    def truncate(self, offset: int) -> None:
        """Drop an undispatched suffix (a Raft conflict); dispatched data is never undone."""
        if offset < self.dispatcher.dispatched_offset:
            raise ValueError(
                f"cannot truncate at {offset}: dispatched up to {self.dispatcher.dispatched_offset}"
            )
        # Appends will rewrite bytes below the old checkpoint: recovery must scan them.
        # Lowered first, so that a full disk refusing the checkpoint leaves everything
        # as it was (the other order would cut the log and then fail).
        cp = self._checkpoint
        if cp.commitlog_flushed > offset:
            self._store_checkpoint(Checkpoint(offset, min(cp.dispatched, offset), cp.written_ms))
        self.commit_log.truncate(offset)  # durable when it returns

    def reset(
        self, commit_offset: int, queue_next: Mapping[tuple[str, int], int], now_ms: int
    ) -> None:
        """Drop every message and go on as a store whose CommitLog starts at `commit_offset`
        and whose queue (topic, queue_id) assigns `queue_next[(topic, queue_id)]` next (0
        for queues not named), durably.

        For a replica that installs a Raft snapshot because the leader's retention
        deleted the log it lacks: it must then append at the leader's physical offsets
        (`commit_offset`, the leader's CommitLog min offset, a multiple of
        segment_bytes) and number messages as the leader does, or the replicas would
        build different logs and ConsumeQueues from the same entries. Reads below a
        queue's start answer OFFSET_TOO_SMALL, as after retention.

        Arguments are checked before anything is deleted. The CommitLog goes first, so
        a reopen part way has no message left to dispatch into a half-reset queue; then
        the index, the queues, and the checkpoint last. Every step is durable when it
        returns, so after `reset` returned a reopen (clean or not) finds this state.
        A crash part way leaves a mix of old and new files that opens; the caller must
        then call `reset` again with the same arguments (it keeps a marker until `reset`
        returned), which ends in exactly the state an uninterrupted call leaves. So does
        calling it again on the same store after an error part way (a full disk). The
        CommitLog, queue set, index and dispatcher stay the same objects, so whoever
        holds them sees the reset. No CommitLog FlushPlan may be in flight.
        """
        validate_queue_next(queue_next)
        self.commit_log.reset(commit_offset)  # checks commit_offset before it deletes anything
        self._segment_last_store_ms.clear()
        self.index.clear()
        self.queues.reset(queue_next)
        self.dispatcher.reset(commit_offset)
        self._store_checkpoint(Checkpoint(commit_offset, commit_offset, now_ms))

    def dispatch(self, upto: int | None = None) -> list[Dispatched]:
        """Make frames below `upto` (default: everything appended) visible to readers."""
        return self.dispatcher.dispatch(self.commit_log.max_offset if upto is None else upto)

    # ------------------------------------------------------------------ flush / checkpoint

    def flush(self, now_ms: int) -> int:
        """Sync CommitLog, queues and index, then record the checkpoint; returns flushed offset."""
        flushed = self.commit_log.flush()
        self.checkpoint(now_ms)
        return flushed

    def checkpoint(self, now_ms: int) -> int:
        """Sync queues and index and record the checkpoint at the CommitLog's flushed offset,
        without flushing the CommitLog: for an owner that flushes it itself (off-thread,
        with prepare_flush / complete_flush). Returns the checkpointed dispatched offset."""
        plan = self.prepare_checkpoint(self.commit_log.flushed_offset, now_ms)
        plan.run()
        if plan.disk_full is not None:
            raise plan.disk_full
        self.complete_checkpoint(plan)
        return plan.checkpoint.dispatched

    def prepare_checkpoint(self, flushed: int, now_ms: int) -> CheckpointPlan:
        """First half of a checkpoint whose fsyncs run off the owner's thread: what to
        sync (the queues and index file holding unsynced units and entries) and the
        record to write once they are durable. `flushed` is where the CommitLog will be
        durable by the time `CheckpointPlan.run` begins: the owner runs the plan after
        the CommitLog flush that gets it there.

        Between this call and `complete_checkpoint` the owner must not dispatch,
        truncate, reset or delete (the plan syncs the queues' tails and the newest index
        file in place, and records `dispatched` as it is now). Reads may go on."""
        dispatched = self.dispatcher.dispatched_offset
        return CheckpointPlan(
            self.fs,
            self._checkpoint_path,
            Checkpoint(flushed, min(dispatched, flushed), now_ms),
            tuple(queue for queue in self.queues if queue.dirty),
            self.index.newest_dirty(),
        )

    def complete_checkpoint(self, plan: CheckpointPlan) -> None:
        """Second half, back on the owner's thread, after `plan.run()` wrote the record
        (a plan refused by a full disk leaves the previous checkpoint standing)."""
        if plan.written:
            self._checkpoint = plan.checkpoint

    def _store_checkpoint(self, cp: Checkpoint) -> None:
        self.fs.write_atomic(self._checkpoint_path, cp.encode())
        self._checkpoint = cp

    def close(self, now_ms: int) -> None:
        """Clean stop: flush everything, then remove the abort marker (fast load next time)."""
        self.flush(now_ms)
        self.commit_log.close()
        self.queues.close()
        self.index.close()
        self.fs.remove(self._abort_path)

    # ------------------------------------------------------------------ reads

    def min_offset(self, topic: str, queue_id: int) -> int:
        queue = self.queues.get(topic, queue_id)
        return 0 if queue is None else queue.min_offset

    def max_offset(self, topic: str, queue_id: int) -> int:
        queue = self.queues.get(topic, queue_id)
        return 0 if queue is None else queue.max_offset

    def get_messages(
        self,
        topic: str,
        queue_id: int,
        queue_offset: int,
        max_count: int | None = None,
        max_bytes: int | None = None,
        tag_hashes: frozenset[int] | None = None,
    ) -> GetResult:
        """Up to `max_count` messages from `queue_offset`, as RocketMQ's getMessage.

        With `tag_hashes`, units whose tag hash is not in the set are skipped without
        reading the CommitLog (the client checks the exact tag, hashes collide).
        A unit whose frame fails its CRC is skipped and logged, never served.
        """
        max_count = min(max_count or self.config.pull_count_max, 1024)
        max_bytes = max_bytes or self.config.pull_bytes_max
        queue = self.queues.get(topic, queue_id)
        if queue is None:
            return GetResult(GetStatus.NO_MATCHED_LOGIC_QUEUE, 0, 0, 0)
        lo, hi = queue.min_offset, queue.max_offset
        if hi == 0:
            return GetResult(GetStatus.NO_MESSAGE_IN_QUEUE, 0, lo, hi)
        if queue_offset < lo:
            return GetResult(GetStatus.OFFSET_TOO_SMALL, lo, lo, hi)
        if queue_offset == hi:
            return GetResult(GetStatus.OFFSET_OVERFLOW_ONE, queue_offset, lo, hi)
        if queue_offset > hi:
            return GetResult(GetStatus.OFFSET_OVERFLOW_BADLY, lo if lo == 0 else hi, lo, hi)
        result = GetResult(GetStatus.NO_MATCHED_MESSAGE, queue_offset, lo, hi)
        total = 0
        next_offset = queue_offset
        log_min = self.commit_log.min_offset
        # Scan more units than we return when filtering, as RocketMQ does, but bounded.
        scan = max_count if tag_hashes is None else max_count * 8
        for unit in queue.get_range(queue_offset, scan):
            if result.messages and (
                len(result.messages) >= max_count or total + unit.size > max_bytes
            ):
                break
            current = next_offset
            next_offset += 1
            if unit.commit_offset < log_min or unit.size == BLANK_SIZE:
                continue  # its segment was deleted by retention, or no message (a blank)
            if tag_hashes is not None and unit.tag_hash not in tag_hashes:
                continue
            try:
                frame = self._frame(unit.commit_offset, unit.size)
            except (CorruptRecordError, OffsetOutOfRangeError) as exc:
                log.warning(
                    "skipping unreadable message %s/%d@%d: %s", topic, queue_id, current, exc
                )
                continue
            result.messages.append((current, frame))
            total += unit.size
        result.next_offset = next_offset
        if result.messages:
            result.status = GetStatus.FOUND
        return result

    def _frame(self, commit_offset: int, size: int | None = None) -> memoryview:
        """The CRC-checked frame at `commit_offset`; raises if it is not `size` bytes."""
        frame, _next = self.commit_log.frame_at(commit_offset)
        if size is not None and len(frame) != size:
            raise CorruptRecordError(
                f"frame at {commit_offset} has {len(frame)} bytes, unit says {size}"
            )
        return frame

    def read_message(self, commit_offset: int, size: int | None = None) -> MessageRecord:
        return MessageRecord.decode(self._frame(commit_offset, size), verify_crc=False)

    def offset_for_timestamp(self, topic: str, queue_id: int, ts_ms: int) -> int:
        queue = self.queues.get(topic, queue_id)
        if queue is None:
            return 0
        return queue.offset_for_timestamp(ts_ms, self._store_time_of)

    def _store_time_of(self, commit_offset: int, size: int) -> int | None:
        try:
            return decode_message_header(
                self._frame(commit_offset, size), verify_crc=False
            ).store_timestamp_ms
        except (CorruptRecordError, OffsetOutOfRangeError):
            return None

    def query_by_key(
        self, topic: str, key: str, begin_ms: int = 0, end_ms: int = 2**63 - 1, max_count: int = 64
    ) -> list[MessageRecord]:
        """Messages of `topic` carrying `key`, newest first; hash collisions filtered out."""
        found: list[MessageRecord] = []
        for offset in self.index.query(f"{topic}#{key}", begin_ms, end_ms, max_count * 2):
            record = self._message_at(offset)
            if record is not None and record.topic == topic and key in record.keys.split(" "):
                found.append(record)
                if len(found) >= max_count:
                    break
        return found

    def query_by_id(self, topic: str, msg_id: str) -> MessageRecord | None:
        for offset in self.index.query(f"{topic}#{msg_id}", 0, 2**63 - 1, 16):
            record = self._message_at(offset)
            if record is not None and record.topic == topic and record.msg_id == msg_id:
                return record
        return None

    def _message_at(self, commit_offset: int) -> MessageRecord | None:
        try:
            return self.read_message(commit_offset)
        except (CorruptRecordError, OffsetOutOfRangeError):
            return None

    # ------------------------------------------------------------------ retention

    def delete_expired(self, now_ms: int) -> int:
        """Delete whole CommitLog segments older than the retention time, or the oldest
        ones while the disk is fuller than `disk_ratio_max`; never the active segment
        nor one a checkpoint does not cover. Returns how many segments were deleted."""
        deleted = 0
        while self.first_segment_expired(now_ms):
            self.delete_first_segment()
            deleted += 1
        return deleted

    def first_segment_expired(self, now_ms: int, newest_ms: int | None = None) -> bool:
        """Whether retention may delete the oldest segment now: it is not the active one,
        a checkpoint covers it, and it is older than the retention time or the disk is
        fuller than `disk_ratio_max`. Its age is that of its newest message: `newest_ms`
        if the owner knows it, else read from the segment (once)."""
        segments = self.commit_log.segments()
        if len(segments) <= 1:
            return False
        start, end = segments[0]
        # Dispatched is not enough: ConsumeQueue units not yet synced could be lost in a
        # crash, and re-dispatch cannot rebuild them from a deleted segment.
        if end > min(self.dispatcher.dispatched_offset, self._checkpoint.dispatched):
            return False
        if newest_ms is None:
            newest_ms = self._last_store_ms(start)
        if now_ms - newest_ms >= self.config.retention_ms:
            return True
        return self.fs.usage_ratio(self.root) > self.config.disk_ratio_max

    def delete_first_segment(self) -> None:
        """Delete the oldest CommitLog segment and what the queues and index hold of it."""
        cl = self.commit_log
        start = cl.min_offset
        if cl.delete_first_segment():
            self._segment_last_store_ms.pop(start, None)
            self.queues.delete_before_commit_offset(cl.min_offset)
            self.index.delete_before_commit_offset(cl.min_offset)

    def _last_store_ms(self, segment_start: int) -> int:
        """Store time of the newest message in a segment that is no longer written (0
        if it holds none), cached. Every frame is read: the last one may hold no message
        (a replicated command, a Raft no-op), and store times need not grow along the
        log (each is the clock of the leader that stored it; a new leader's may be
        behind its predecessor's), so the last message is not always the newest."""
        cached = self._segment_last_store_ms.get(segment_start)
        if cached is None:
            end = min(segment_start + self.commit_log.segment_bytes, self.commit_log.max_offset)
            cached = self.newest_store_ms(segment_start, end)
            self._segment_last_store_ms[segment_start] = cached
        return cached

    def newest_store_ms(self, start: int, end: int) -> int:
        """Store time of the newest message in the frames of [start, end), a range of
        one segment starting at a frame (0 if none). Each stamp is read in place, not
        decoded with its header: a 1 GiB segment holds a million 1 KiB messages."""
        if end <= start:
            return 0
        view = self.commit_log.read(start, end - start)
        try:
            return _newest_in(view)
        finally:
            del view


_STAMP = struct.Struct("<Q")
_ENTRY_DATA = FRAME_HEADER_BYTES + ENTRY_HEADER.size


def _newest_in(view: memoryview) -> int:
    newest = 0
    unpack = _STAMP.unpack_from
    stamp_at = STORE_TIMESTAMP_OFFSET
    end = len(view)
    pos = 0
    while pos + FRAME_HEADER_BYTES <= end:
        size = int.from_bytes(view[pos : pos + 4], "little")
        magic = int.from_bytes(view[pos + 4 : pos + 8], "little")
        if magic == MAGIC_BLANK or size < FRAME_HEADER_BYTES or pos + size > end:
            break  # the segment's blank tail (or its end)
        if magic == MAGIC_MESSAGE:
            stored = unpack(view, pos + stamp_at)[0]
            if stored > newest:
                newest = stored
        elif magic == MAGIC_ENTRY:
            inner = pos + _ENTRY_DATA
            stop = pos + size
            while inner + FRAME_HEADER_BYTES <= stop:
                inner_size = int.from_bytes(view[inner : inner + 4], "little")
                if inner_size < FRAME_HEADER_BYTES:
                    break
                if int.from_bytes(view[inner + 4 : inner + 8], "little") == MAGIC_MESSAGE:
                    stored = unpack(view, inner + stamp_at)[0]
                    if stored > newest:
                        newest = stored
                inner += inner_size
        pos += size
    return newest
