"""BrokerCore: one broker node, sans-IO — requests and peer messages in, outputs out.

A node owns a MessageStore whose CommitLog holds only Raft entries (the Raft log *is*
the CommitLog, as in DLedger), the Raft node over it, and the replicated state
(mq/broker/state.py). It never touches a socket or a clock: time enters as `now_ms`
arguments, fsyncs are handed to the driver as `Work`, and everything to send leaves
through `take_outputs()`. The trio server (mq/broker/server.py) and the simulator
drive the same object.

The driver's loop (the Raft Ready contract of raft/ready.py, plus our checkpoints):

    work = core.ready(now_ms)        # None: nothing to do until the next input
    send core.take_outputs()         # Raft appends may leave before the fsync
    work.run()                       # blocking: hard state write + CommitLog fsync;
                                     # may run in a worker thread
    core.advance(work, now_ms)       # acks/votes go out, committed entries apply
    send core.take_outputs()         # responses, acks, role changes

Inputs may arrive at any time, even while `work.run()` is in flight: `handle()`
serves reads and proposes writes (appending to the CommitLog is safe while an fsync
of it runs), and Raft messages that arrive then are queued and stepped in `advance`:
stepping one could truncate the log under the fsync in flight.

Write path (docs/broker-api.md). The leader validates a batch, patches each message's
store timestamp (and CRC) in place, and proposes one entry = a command frame
(mq/broker/commands.py) + the message frames. Once the entry is committed, `advance`
dispatches the store up to its end: the dispatcher hands the command to `_on_record`,
which applies it to the replicated state and decides whether the messages after it
are dispatched (not for a duplicate idempotent send), and assigns queue offsets. The
SendResult is built from what was dispatched and answered once the entry is also
flushed on this node as the flush mode requires.

Sync flush holds by construction: the leader counts itself towards a commit only up
to its durable index, and even where a majority of followers alone commits an entry,
they can only acknowledge entries they were sent in an earlier Ready, whose fsync
finished before `advance` steps their (queued) acknowledgements. The response still
checks `flushed_offset` and waits for a flush if needed, so the rule does not rest
on that reasoning alone.

Consumer groups. Membership is per node and in memory (mq/broker/consumer_groups.py):
the driver names each client connection with an int token (`handle(...,
connection=token)`, `connection_closed(token, now_ms)`), and the core answers a change
of a group's member set with `Notify(token, frame)` outputs for the members left.
Consumer offsets are replicated state: commits and resets are command-only entries
answered after apply, like CREATE_TOPIC.

Restart. The store is opened without re-dispatching (`ReplicatedMessageStore`); the
replicated state is loaded from its snapshot and the commands between the snapshot
and the store's dispatched checkpoint are re-applied (`_replay`); then the store is
re-dispatched up to the persisted commit index, with the live hook. Only committed
entries are ever dispatched: the uncommitted tail of the log stays invisible until
the leader says it is committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from mq.broker.commands import (
    MAGIC_COMMAND,
    OFFSET_ENTRIES_MAX,
    Command,
    CommandError,
    CreateTopicCommand,
    OffsetCommand,
    OffsetEntry,
    ResetCommand,
    SendCommand,
    decode_command,
    encode_command,
)
from mq.broker.config import BrokerConfig
from mq.broker.consumer_groups import MODELS, TOPICS_PER_MEMBER_MAX, ConsumerGroups, GroupsFullError
from mq.broker.hard_state import decode_hard_state, encode_hard_state
from mq.broker.loop_lag import LOG_EVERY_MS, LoopLag
from mq.broker.raft_codec import RaftCodecError, decode_envelope, encode_envelope
from mq.broker.raft_log import CommitLogStore
from mq.broker.segment_snapshot import SegmentSnapshot, SnapshotFiles
from mq.broker.state import BrokerState, SendOutcome, SendRecord
from mq.fields import NAME_CHARS_MAX, FieldError, get_int, get_list, get_name, get_str
from mq.protocol import ErrorCode, Flag, Frame, RequestCode
from mq.route import PERM_READ_WRITE, QUEUES_MAX, BrokerRegistration, Perm, TopicConfig
from mq.route import Role as RouteRole
from raft.config import RandomSource
from raft.errors import BacklogFullError, NotLeaderError
from raft.messages import Envelope, HardState
from raft.node import RaftNode, Role
from raft.ready import Ready, ReceivedSnapshot, SnapshotMeta
from storage.commit_log import FlushPlan
from storage.consume_queue import ConsumeQueue
from storage.dispatcher import Dispatched
from storage.entry_log import EntryLog
from storage.errors import (
    CorruptRecordError,
    DiskFullError,
    InvalidTopicError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    StorageError,
)
from storage.files import FileSystem
from storage.flush import FlushMode
from storage.message_store import CheckpointPlan, GetStatus, MessageStore, StoreConfig
from storage.record import (
    FRAME_HEADER_BYTES,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    decode_message_header,
    stamp_batch,
    validate_topic,
)

_log = structlog.get_logger("mq.broker")

BATCH_COUNT_MAX = 65_536
"""Most messages one SEND_BATCH may carry (the frame size bounds it further)."""
DEFERRED_RAFT_MAX = 16_384
"""Raft messages queued while an fsync is in flight; more are dropped (Raft retries)."""
DISK_USAGE_CHECK_EVERY_MS = 1000
"""How often a node reads how full its disk is (statvfs), for `disk_refuse_ratio`."""
DISK_FULL_RETRY_MS = 100
"""How soon a Work whose hard state did not fit on the disk is tried again."""
DISK_FULL_HAND_OVER_EVERY_MS = 30_000
"""A leader whose disk refuses a send hands leadership over at most this often: a
follower with room can take the writes, and if every disk is full, leadership does not
move on every refused send."""
PULL_COUNT_MAX = 1024
PULL_BYTES_MAX = 8 * 1024 * 1024
"""A pull's `max_bytes` above this is lowered to it: the answer must fit one frame
(FRAME_BYTES_MAX, 16 MiB; a message bigger than the budget still comes alone), or a
consumer asking for more would be refused at that offset for good."""
OFFSET_GROUP_TOPICS_MAX = 100_000
"""(group, topic) pairs the replicated offset table may hold; a commit that would add
more is refused (SYSTEM_BUSY) by the leader, so the table cannot grow without bound."""
ENTRY_FRAME_OVERHEAD_BYTES = FRAME_HEADER_BYTES + 17  # entry header: term, index, kind


_PULL_STATUS = {
    GetStatus.FOUND: "FOUND",
    GetStatus.OFFSET_OVERFLOW_ONE: "NO_NEW_MSG",
    GetStatus.NO_MESSAGE_IN_QUEUE: "NO_NEW_MSG",
    GetStatus.NO_MATCHED_LOGIC_QUEUE: "NO_NEW_MSG",
    GetStatus.NO_MATCHED_MESSAGE: "NO_MATCHED_MSG",
    GetStatus.OFFSET_TOO_SMALL: "OFFSET_ILLEGAL",
    GetStatus.OFFSET_OVERFLOW_BADLY: "OFFSET_ILLEGAL",
}
_ROLE_NAMES = {
    Role.LEADER: "leader",
    Role.FOLLOWER: "follower",
    Role.CANDIDATE: "candidate",
    Role.PRE_CANDIDATE: "candidate",
}


# ---------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Reply:
    """The response to the request the driver handed in with `reply_to`."""

    reply_to: int
    frame: Frame


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A one-way RAFT_MESSAGE frame for another node of the group (drop it if the peer
    is unreachable: Raft retries)."""

    node_id: int
    frame: Frame


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """This node's role, term or known leader changed: re-register with NameServers."""

    role: str
    term: int
    leader_id: int | None


@dataclass(frozen=True, slots=True)
class TopicsChanged:
    """The replicated topic table changed: re-register with NameServers."""


@dataclass(frozen=True, slots=True)
class Notify:
    """A one-way frame to push to a client connection: the `connection` token the driver
    passed with that client's HEARTBEAT. Delivery is best effort (drop it if the
    connection is gone or its queue is full): consumers also rebalance on a timer."""

    connection: int
    frame: Frame


Output = Reply | PeerMessage | RoleChanged | TopicsChanged | Notify


@dataclass(slots=True)
class Work:
    """Blocking work for the driver: `run()` it (in a worker thread if it likes), then
    hand it back to `BrokerCore.advance`. `run` writes the hard state file, fsyncs
    CommitLog segments and, for a checkpoint, syncs the queues and index and writes the
    checkpoint and state snapshot files. It is safe against concurrent `handle()` calls:
    those only append to the CommitLog and read, and the core dispatches, truncates,
    resets and deletes only in `ready` and `advance`, never while a Work is out."""

    fs: FileSystem
    hard_state_path: str
    ready: Ready | None = None
    hard_state: bytes | None = None
    plan: FlushPlan | None = None
    checkpoint: CheckpointPlan | None = None
    snapshot_due: bool = False
    state_snapshot: tuple[str, bytes] | None = None
    """A state snapshot (path, bytes) to write once the checkpoint is written."""
    state_disk_full: DiskFullError | None = None
    commit_only: bool = False
    """The hard state changes only in its commit index, which Raft keeps volatile: if it
    does not fit on the disk, the Work goes on without it."""
    disk_full: DiskFullError | None = None
    """Set by `run` when the hard state did not fit. Unless `commit_only`, `advance` then
    holds this Work and `ready` hands it out again later: nothing it releases (votes,
    acknowledgements) may go out before the term and vote are durable."""

    @property
    def blocking(self) -> bool:
        """Whether `run` does any I/O at all (the driver may skip the thread hop)."""
        return (
            self.hard_state is not None
            or self.checkpoint is not None
            or (self.plan is not None and bool(self.plan.segments))
        )

    def run(self) -> None:
        self.disk_full = None
        if self.hard_state is not None:
            try:
                self.fs.write_atomic(self.hard_state_path, self.hard_state)
            except DiskFullError as exc:
                self.disk_full = exc
                if not self.commit_only:
                    return
        if self.plan is not None:
            self.plan.sync()
        checkpoint = self.checkpoint
        if checkpoint is not None:
            checkpoint.run()
            self.state_disk_full = None
            if checkpoint.written and self.state_snapshot is not None:
                self.state_disk_full = _write_or_full(self.fs, *self.state_snapshot)


# ---------------------------------------------------------------------- internals


def _write_or_full(fs: FileSystem, path: str, data: bytes) -> DiskFullError | None:
    """`write_atomic`, with a full disk as a result: the previous file stays intact."""
    try:
        fs.write_atomic(path, data)
    except DiskFullError as exc:
        return exc
    return None


class ReplicatedMessageStore(MessageStore):
    """A MessageStore that does not re-dispatch on open: what is committed is only known
    once the Raft log is open, and the replicated state must be rebuilt first."""

    def dispatch_limit_on_open(self) -> int:
        return 0


@dataclass(slots=True)
class _Pending:
    reply_to: int
    request: Frame
    term: int
    deadline_ms: int


@dataclass(slots=True)
class _Held:
    """A long-polling pull waiting for messages in its queue."""

    reply_to: int
    request: Frame
    deadline_ms: int
    done: bool = False


@dataclass(slots=True)
class _Applied:
    """What `_on_record` applied for the entry being dispatched."""

    command: Command
    outcome: SendOutcome | None
    offset: int
    fields: dict[str, Any] | None = None
    """The response fields of an offset commit or reset, decided by applying it."""


class InstallDiskFullError(DiskFullError):
    """A snapshot install found no room on the disk. Fatal to the process: Raft already
    gave up the log in memory, so the node cannot go on; on disk the log is the old one
    (a restart asks the leader for the snapshot again) or the `installing` marker is
    there (a start finishes the install once there is room)."""


class RequestError(Exception):
    """Refuse a request with `error`; raised inside handlers, answered by `handle`."""

    def __init__(self, error: ErrorCode, remark: str = "", fields: dict[str, Any] | None = None):
        super().__init__(remark)
        self.error = error
        self.remark = remark
        self.fields = fields


@dataclass(slots=True)
class _Stats:
    deferred_dropped: int = 0
    bad_raft_frames: int = 0
    fsync_works: int = 0
    proposals: int = 0
    applied_entries: int = 0
    timeouts: int = 0
    disk_full_errors: int = 0
    segments_deleted: int = 0
    snapshots_installed: int = 0


class BrokerCore:
    def __init__(
        self,
        config: BrokerConfig,
        fs: FileSystem,
        now_ms: int,
        *,
        rng: RandomSource | None = None,
        wall_offset_ms: int = 0,
        pid: int = 0,
    ) -> None:
        """Open (and recover) the node's data under `config.data_dir` on `fs`.

        `wall_offset_ms` turns the driver's monotonic `now_ms` into wall-clock time for
        store timestamps (wall = now + offset). `pid` is reported by GET_BROKER_STATUS.
        """
        self.config = config
        self.fs = fs
        self.pid = pid
        self.wall_offset_ms = wall_offset_ms
        self.voters = config.voters
        self.address = self.voters[config.node_id]
        self._sync_flush = config.flush is FlushMode.SYNC
        root = config.data_dir.rstrip("/") or "/"
        fs.makedirs(root)
        self._hard_state_path = f"{root}/hardstate"
        self._state_path = f"{root}/state"
        self._install_path = f"{root}/installing"
        self._snapshots = SnapshotFiles(fs, f"{root}/snapshots")
        self._outbox: list[Output] = []
        self._stats = _Stats()
        self._loop_lag = LoopLag()
        self._state = BrokerState(config.producers_max)
        self._applied_ops: list[_Applied] = []
        self._ops_by_offset: dict[int, _Applied] = {}
        """The commands applied by the dispatch call under way (or interrupted by a full
        disk), by offset: a resumed dispatch re-reads them and must not apply them twice."""
        self._dispatch_partial: list[Dispatched] = []
        """What a dispatch that a full disk interrupted had queued."""
        self._next_disk_full_hand_over_ms = 0
        self._held_work: Work | None = None
        self._held_until_ms = 0
        self._next_apply_retry_ms = 0
        self._next_disk_check_ms = 0
        self._disk_full: dict[str, str] = {}
        """What a full disk holds back now ("sends", "log append", "dispatch", ...), and
        why (the error that started it)."""
        self._topics_changed = False
        self._consumers = ConsumerGroups(config.consumer_expire_ms, config.consumers_max)

        store_config = StoreConfig(
            segment_bytes=config.segment_bytes,
            cq_units_per_segment=config.cq_units_per_segment,
            index_slots=config.index_slots,
            index_entries_max=config.index_entries_max,
            message_bytes_max=config.message_bytes_max,
            flush_mode=config.flush,
            flush_interval_ms=config.flush_interval_ms,
            retention_ms=config.retention_ms,
            disk_ratio_max=config.disk_retention_ratio,
        )
        self.store = ReplicatedMessageStore(
            fs, f"{root}/store", store_config, on_record=self._on_record
        )
        self.commit_log = self.store.commit_log
        self.entry_log = EntryLog(
            fs,
            self.commit_log,
            f"{root}/raft-meta",
            index_dir=f"{root}/raft-index",
            chunk_entries=config.raft_index_chunk_entries,
        )
        self.log = CommitLogStore(
            self.entry_log,
            durable_on_append=not self._sync_flush,
            before_truncate=self.store.truncate,
        )
        marker = fs.read_bytes(self._install_path)
        if marker is not None:
            # A snapshot install did not finish: do it again (every step is idempotent).
            snapshot = self._decode_snapshot(marker, self._install_path)
            self._install_files(snapshot, marker, now_ms, marked=True)
        self._finish_retention()
        self._captured = max(self._snapshots.offsets(), default=0)
        """The newest segment boundary whose snapshot is on disk."""
        self._next_retention_ms = now_ms + config.retention_check_interval_ms
        self._warned_no_snapshot: set[int] = set()
        self._boundary_cache: SegmentSnapshot | None = None
        raw_hard_state = fs.read_bytes(self._hard_state_path)
        hard_state = decode_hard_state(raw_hard_state)
        raft_config = config.raft_config()
        if raw_hard_state is None and self.entry_log.last_index() > 0:
            # The log survived but its term and vote did not (the file was deleted, or
            # lost with a crash before it was first written): the vote this node may
            # have cast is forgotten, so it must not vote again until a leader has
            # caught it up, exactly as a node on a replaced disk.
            _log.warning(
                "hard_state_missing",
                last_index=self.entry_log.last_index(),
                detail="no vote or campaign until a leader caught this node up",
            )
            raft_config = dataclasses.replace(raft_config, join_existing=True)
        self._hard_state = hard_state
        self._hs_persisted = hard_state
        applied = self._recover(hard_state)
        self._check_queues_against_snapshot()
        self._applied = applied
        """The last entry dispatched (its commands applied, its messages queued)."""
        self._committed = applied
        """The last entry Raft handed over as committed; above `_applied` only while a
        full disk holds the dispatch back."""
        self.raft = RaftNode(
            config.node_id,
            sorted(self.voters),
            self.log,
            hard_state,
            raft_config,
            rng if rng is not None else random.Random(),
            applied=applied,
            snapshot_source=self,
        )
        self._topics_changed = False

        self._in_flight = False
        self._deferred: deque[Envelope] = deque()
        self._pending: dict[int, _Pending] = {}  # entry index -> request, in index order
        self._flush_waiters: deque[tuple[int, Reply]] = deque()
        self._held: dict[tuple[str, int], list[_Held]] = {}
        self._held_count = 0
        self._held_deadlines: list[tuple[int, int, _Held, tuple[str, int]]] = []
        self._held_seq = itertools.count()
        self._last_store_ms = 0
        self._last_flush_ms = now_ms
        self._next_checkpoint_ms = now_ms + config.checkpoint_interval_ms
        self._next_snapshot_ms = now_ms + config.state_snapshot_interval_ms
        self._checkpointed = (self.store.dispatcher.dispatched_offset, hard_state.commit)
        self._role_view = (self.raft.role, self.raft.term, self.raft.leader_id)
        _log.info(
            "broker_opened",
            group=config.group,
            node_id=config.node_id,
            term=hard_state.term,
            commit=hard_state.commit,
            applied=applied,
            last_index=self.log.last_index(),
            dispatched=self.store.dispatcher.dispatched_offset,
            recovery_clean=self.store.recovery.clean,
            entries_from_index=self.entry_log.opened_from_index,
            entries_scanned=self.entry_log.opened_by_scan,
            topics=len(self._state.topics),
        )
        if self.raft.joining:
            _log.info(
                "joining_existing_group",
                detail="no vote or campaign until a leader caught this node up",
            )
        elif config.join:
            _log.info("join_ignored", detail="the node has a durable term: it is a member already")

    # ------------------------------------------------------------------ recovery

    def _check_queues_against_snapshot(self) -> None:
        """Every queue holds at least the units the newest segment snapshot behind the
        dispatch counted (queue offsets only grow, and an install starts them there):
        a queue that holds fewer lost its files, and would hand out queue offsets the
        other replicas gave to other messages. Raises StorageError: the node must not
        start so (restore the files, or replace its disk with --join)."""
        dispatched = self.store.dispatcher.dispatched_offset
        behind = [offset for offset in self._snapshots.offsets() if offset <= dispatched]
        if not behind:
            return
        snapshot = self._snapshots.load(max(behind))
        if snapshot is None:
            return  # damaged: found (and said) when a follower needs it
        for (topic, queue_id), next_offset in sorted(snapshot.queues.items()):
            held = self.store.max_offset(topic, queue_id)
            if held < next_offset:
                raise StorageError(
                    f"ConsumeQueue {topic}/{queue_id} (store/consumequeue/{topic}/{queue_id}) "
                    f"ends at queue offset {held}, but the segment snapshot at CommitLog "
                    f"offset {snapshot.offset} counted {next_offset} units: its files were "
                    "lost or damaged"
                )

    def _recover(self, hard_state: HardState) -> int:
        """Rebuild the replicated state and dispatch up to the persisted commit index;
        returns the Raft index the state machine has applied."""
        dispatcher = self.store.dispatcher
        dispatched = dispatcher.dispatched_offset
        if dispatched > self.commit_log.max_offset:
            raise StorageError(
                f"dispatched offset {dispatched} is past the end of the Raft log "
                f"({self.commit_log.max_offset}): the CommitLog lost committed entries"
            )
        snapshot = BrokerState.decode(
            self.fs.read_bytes(self._state_path), self.config.producers_max
        )
        start = self.commit_log.min_offset
        if start > 0 and (snapshot is None or not start <= snapshot[1] <= dispatched):
            # Retention deleted the log before `start`: the state there is in the
            # segment snapshot taken when dispatch passed it.
            base = self._snapshots.load(start)
            if base is None:
                raise StorageError(
                    f"no state snapshot covers the CommitLog, which begins at {start}"
                )
            snapshot = BrokerState.decode(base.state, self.config.producers_max)
            if snapshot is None:
                raise StorageError(f"the segment snapshot at {start} holds a damaged state")
        if snapshot is not None and snapshot[1] <= dispatched:
            self._state, start = snapshot
        elif snapshot is not None:
            _log.warning(
                "state_snapshot_ahead_of_checkpoint", snapshot=snapshot[1], dispatched=dispatched
            )
        self._replay(max(start, self.commit_log.min_offset), dispatched)
        # Units a crash left in the ConsumeQueues past the checkpoint are skipped, not
        # added twice, by dispatching in resuming mode until past the last of them.
        # What dispatch noted of the current segment's messages before the restart is
        # gone: read it back (one segment at most), so the snapshot at the segment's end
        # says how old the segment is.
        segment_bytes = self.commit_log.segment_bytes
        first = dispatched - dispatched % segment_bytes
        if first == dispatched and dispatched > self._captured:
            first -= segment_bytes  # the boundary here is still to be captured
        first = max(first, self.commit_log.min_offset)
        dispatcher.newest_store_ms = self.store.newest_store_ms(first, dispatched)
        self._resume_until = self.store.queues.max_commit_end()
        log = self.entry_log
        commit = min(hard_state.commit, log.last_index())
        if commit >= log.first_index():
            try:
                self._dispatch(log.end_of(commit))
            except DiskFullError as exc:
                # Raft hands the entries not dispatched over again (they are past
                # `applied`); `_apply` retries them until there is space.
                self._note_disk_full("dispatch", exc)
        self._applied_ops.clear()
        return self._index_at(dispatcher.dispatched_offset)

    def _dispatch(self, end: int) -> list[Dispatched]:
        dispatcher = self.store.dispatcher
        if end <= dispatcher.dispatched_offset:
            return []
        # What an interrupted call queued before the disk filled is part of this call's
        # answer: a send's result lists every message of its entry.
        out, self._dispatch_partial = self._dispatch_partial, []
        segment_bytes = self.commit_log.segment_bytes
        try:
            while True:
                at = dispatcher.dispatched_offset
                if at % segment_bytes == 0 and at > 0:
                    if at > self._captured:
                        self._capture(at)
                    else:  # captured before a restart: the segment from here is new
                        dispatcher.newest_store_ms = 0
                upto = min(end, at - at % segment_bytes + segment_bytes)
                dispatcher.dispatch(upto, resuming=at < self._resume_until, out=out)
                if upto >= end:
                    break
        except DiskFullError:
            self._dispatch_partial = out
            raise
        self._ops_by_offset.clear()
        return out

    def _capture(self, offset: int) -> None:
        """Dispatch stands exactly at the segment boundary `offset`: save the state
        there, the Raft snapshot retention will need once the segments before it go.
        Raises DiskFullError (nothing saved) when there is no room; dispatch then waits
        here, as for any file it cannot create."""
        index = self._index_at(offset)
        term = self.entry_log.term_at(index)
        assert term is not None
        queues = {}
        for queue in self.store.queues:
            # Units past the boundary may be there already (dispatched before a crash).
            if after := _first_unit_at_or_after(queue, offset):
                queues[(queue.topic, queue.queue_id)] = after
        dispatcher = self.store.dispatcher
        snapshot = SegmentSnapshot(
            offset, index, term, queues, self._state.encode(offset), dispatcher.newest_store_ms
        )
        self._snapshots.write(offset, snapshot.encode())
        self._captured = offset
        dispatcher.newest_store_ms = 0  # the next segment's messages from here

    def _replay(self, start: int, end: int) -> None:
        """Re-apply the commands in [start, end) to the state, dispatching nothing."""
        replayed = 0
        for _offset, frame in self.commit_log.iter_frames(start, end, verify_crc=False):
            if int.from_bytes(frame[4:8], "little") != MAGIC_ENTRY:
                continue
            pos = FRAME_HEADER_BYTES + 17
            size_total = len(frame)
            while pos + FRAME_HEADER_BYTES <= size_total:
                size = int.from_bytes(frame[pos : pos + 4], "little")
                magic = int.from_bytes(frame[pos + 4 : pos + 8], "little")
                if magic == MAGIC_COMMAND:
                    self._apply_command(_offset + pos, frame[pos : pos + size])
                    replayed += 1
                pos += size
        self._applied_ops.clear()
        if replayed:
            _log.info("state_replayed", start=start, end=end, commands=replayed)

    def _index_at(self, offset: int) -> int:
        """The last Raft index whose entry ends at or before commit offset `offset`."""
        log = self.entry_log
        lo, hi = log.first_index(), log.last_index()
        answer = lo - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if log.end_of(mid) <= offset:
                answer = mid
                lo = mid + 1
            else:
                hi = mid - 1
        return answer

    # ------------------------------------------------------------------ state machine

    def _on_record(self, magic: int, offset: int, frame: memoryview) -> bool | None:
        """The dispatcher's hook: apply a command; False drops the messages after it."""
        if magic != MAGIC_COMMAND:
            _log.warning("unknown_record_skipped", magic=magic, offset=offset)
            return None
        applied = self._ops_by_offset.get(offset)
        if applied is None:
            applied = self._ops_by_offset[offset] = self._apply_command(offset, frame)
        else:
            # Dispatching the entry a full disk interrupted again: its command was
            # applied then; replay that outcome (the same messages kept or dropped).
            self._applied_ops.append(applied)
        if applied.outcome is not None and applied.outcome.duplicate:
            return False
        return None

    def _apply_command(self, offset: int, frame: memoryview) -> _Applied:
        try:
            command = decode_command(frame)
        except CommandError as exc:
            # Committed, so every replica has it: skip it the same way everywhere.
            _log.error("bad_command_skipped", offset=offset, error=str(exc))
            applied = _Applied(CreateTopicCommand("", 0, 0, 0), SendOutcome(True, None), offset)
            self._applied_ops.append(applied)
            return applied
        state = self._state
        if isinstance(command, SendCommand):
            known = command.topic in state.topics
            outcome = state.apply_send(command, offset + len(frame))
            if not known and command.topic in state.topics:
                self._topics_changed = True
            applied = _Applied(command, outcome, offset)
        elif isinstance(command, CreateTopicCommand):
            state.apply_create_topic(command)
            self._topics_changed = True
            applied = _Applied(command, None, offset)
        elif isinstance(command, OffsetCommand):
            stale = state.apply_offsets(command)
            applied = _Applied(command, None, offset, {"stale": [list(s) for s in stale]})
        else:
            generation = state.apply_reset(command)
            applied = _Applied(
                command,
                None,
                offset,
                {"offsets": [list(o) for o in command.offsets], "generation": generation},
            )
        self._applied_ops.append(applied)
        return applied

    @property
    def topics(self) -> dict[str, TopicConfig]:
        return dict(self._state.topics)

    # ------------------------------------------------------------------ inputs

    def handle(
        self, request: Frame, reply_to: int, now_ms: int, *, connection: int | None = None
    ) -> Frame | None:
        """Serve one request. Returns its response now, or None when it will come later
        as a `Reply(reply_to, ...)` output (writes, long polls) or never (one-way).

        `connection` is the driver's token for the client connection the request came
        on: a HEARTBEAT's member is notified through it (`Notify` outputs) and dropped
        when the driver reports it closed (`connection_closed`)."""
        code = request.code
        try:
            if code == RequestCode.RAFT_MESSAGE:
                self.receive_raft(request)
                return None
            if code == RequestCode.HEARTBEAT:
                return self._handle_heartbeat(request, now_ms, connection)
            if code == RequestCode.SEND_MESSAGE or code == RequestCode.SEND_BATCH:
                return self._handle_send(request, reply_to, now_ms)
            if code == RequestCode.PULL_MESSAGE:
                return self._handle_pull(request, reply_to, now_ms)
            handler = self._simple_handlers.get(code)
            if handler is not None:
                return handler(self, request, reply_to, now_ms)
            return request.make_error(
                ErrorCode.REQUEST_CODE_NOT_SUPPORTED, f"broker does not serve code {code}"
            )
        except RequestError as exc:
            return request.make_response(exc.fields, error=exc.error, remark=exc.remark)
        except FieldError as exc:
            return request.make_error(ErrorCode.INVALID_REQUEST, str(exc))
        finally:
            self._check_role()

    def receive_raft(self, frame: Frame) -> None:
        """A RAFT_MESSAGE from a peer; dropped if malformed or not for us."""
        try:
            group, env = decode_envelope(frame)
        except RaftCodecError as exc:
            self._stats.bad_raft_frames += 1
            _log.warning("bad_raft_message", error=str(exc))
            return
        if group != self.config.group or env.dst != self.config.node_id:
            self._stats.bad_raft_frames += 1
            return
        if self._in_flight:
            if len(self._deferred) >= DEFERRED_RAFT_MAX:
                self._stats.deferred_dropped += 1
                return
            self._deferred.append(env)
            return
        self._step_raft(env)
        self._check_role()

    def step(self, env: Envelope) -> None:
        """Step an already decoded envelope (the simulator's path; same rules)."""
        if self._in_flight:
            if len(self._deferred) < DEFERRED_RAFT_MAX:
                self._deferred.append(env)
            return
        self._step_raft(env)
        self._check_role()

    def _step_raft(self, env: Envelope | None) -> None:
        """Step `env` (None: a tick) into Raft. A full disk can refuse the log append a
        message or a tick leads to (a follower's new entries, a new leader's no-op).
        Storage appends are all-or-nothing and Raft changes nothing after a failed one
        that it relies on, so the message counts as lost: the leader sends it again
        (or the next leader its no-op), which works once there is space."""
        blocked = "log append" in self._disk_full
        last = self.log.last_index() if blocked else 0
        try:
            if env is None:
                self.raft.tick()
            else:
                self.raft.step(env)
        except DiskFullError as exc:
            self._note_disk_full("log append", exc)
        else:
            if blocked and self.log.last_index() > last:
                self._note_disk_full("log append", None)

    def tick(self, now_ms: int) -> None:
        """One Raft tick (config.tick_ms) passed; also expires timed-out requests, long
        polls and consumers not heard from."""
        self._step_raft(None)
        self._retry_apply(now_ms)
        if now_ms >= self._next_disk_check_ms:
            self._next_disk_check_ms = now_ms + DISK_USAGE_CHECK_EVERY_MS
            self._check_disk_usage()
        self._expire(now_ms)
        if now_ms >= self._next_retention_ms:
            again = self._retain(now_ms)
            self._next_retention_ms = now_ms + (
                0 if again else self.config.retention_check_interval_ms
            )
        for group in sorted(self._consumers.expire(now_ms)):
            self._notify_group(group)
        self._check_role()

    def connection_closed(self, connection: int, now_ms: int) -> None:
        """The client connection with this token closed: its consumers leave their groups
        (and the members that remain are notified)."""
        for group in sorted(self._consumers.connection_closed(connection)):
            self._notify_group(group)

    # ------------------------------------------------------------------ driver loop

    def ready(self, now_ms: int) -> Work | None:
        """The next piece of work, or None. Between `ready` and `advance(work)` the core
        holds back Raft messages; `ready` must not be called again before `advance`."""
        held = self._held_work
        if held is not None:
            # The last Work's hard state did not fit on the disk: nothing it releases
            # (votes, acknowledgements) may go out before it is durable. Try again.
            if now_ms < self._held_until_ms:
                return None
            self._held_work = None
            return held
        assert not self._in_flight, "advance() the previous Work first"
        rd = self.raft.ready()
        if rd is None:
            return self._timed_work(now_ms)
        if rd.snapshot is not None:
            self._install(rd.snapshot, now_ms)
        group = self.config.group
        for env in rd.messages:
            self._outbox.append(PeerMessage(env.dst, encode_envelope(group, env)))
        work = Work(self.fs, self._hard_state_path, ready=rd)
        if rd.hard_state is not None:
            hs = rd.hard_state
            self._hard_state = hs
            persisted = self._hs_persisted
            # Term and vote must be durable before we answer anyone; the commit index
            # is volatile in Raft and is written with the next checkpoint.
            if hs.term != persisted.term or hs.vote != persisted.vote:
                work.hard_state = encode_hard_state(hs)
        if rd.sync_log and self._sync_flush:
            work.plan = self.commit_log.prepare_flush()
        self._in_flight = True
        return work

    def _timed_work(self, now_ms: int) -> Work | None:
        """A periodic flush (async mode, or sync-mode responses waiting for one) or a
        checkpoint, when one is due."""
        log = self.commit_log
        unflushed = log.max_offset > log.flushed_offset
        checkpoint = now_ms >= self._next_checkpoint_ms and (
            (self.store.dispatcher.dispatched_offset, self._hard_state.commit) != self._checkpointed
            or unflushed
        )
        flush = unflushed and (
            bool(self._flush_waiters)
            or (
                not self._sync_flush
                and now_ms - self._last_flush_ms >= self.config.flush_interval_ms
            )
        )
        if not (checkpoint or flush):
            if now_ms >= self._next_checkpoint_ms:
                self._next_checkpoint_ms = now_ms + self.config.checkpoint_interval_ms
            return None
        plan = log.prepare_flush()
        work = Work(self.fs, self._hard_state_path, plan=plan)
        if checkpoint:
            self._prepare_checkpoint(work, max(log.flushed_offset, plan.target), now_ms)
        if checkpoint and self._hard_state != self._hs_persisted:
            hs, persisted = self._hard_state, self._hs_persisted
            work.hard_state = encode_hard_state(hs)
            work.commit_only = (hs.term, hs.vote) == (persisted.term, persisted.vote)
        self._in_flight = True
        return work

    def advance(self, work: Work, now_ms: int) -> None:
        """`work.run()` has returned: publish what became durable, send what waited for
        it, apply committed entries, and step the Raft messages held back meanwhile."""
        assert self._in_flight
        if work.disk_full is not None:
            self._note_disk_full("hard state", work.disk_full)
            if not work.commit_only:
                self._held_work = work  # still in flight: Raft messages keep waiting
                self._held_until_ms = now_ms + DISK_FULL_RETRY_MS
                return
            work.hard_state = None  # not persisted; the next checkpoint tries again
        elif work.hard_state is not None:
            self._note_disk_full("hard state", None)
        if work.plan is not None:
            self.commit_log.complete_flush(work.plan)
            self.entry_log.refresh_durable()
            self._last_flush_ms = now_ms
            self._stats.fsync_works += 1
        if work.hard_state is not None:
            self._hs_persisted = decode_hard_state(work.hard_state)
        rd = work.ready
        if rd is not None:
            group = self.config.group
            for env in rd.persisted_messages:
                self._outbox.append(PeerMessage(env.dst, encode_envelope(group, env)))
            if rd.committed:
                self._stats.applied_entries += len(rd.committed)
                self._committed = rd.committed[-1].index
                self._apply(now_ms)
            self.raft.advance(rd)
        if work.checkpoint is not None:
            self._finish_checkpoint(work, now_ms)
        self._in_flight = False
        deferred = self._deferred
        while deferred:
            self._step_raft(deferred.popleft())
        self._release_flush_waiters()
        if self._topics_changed:
            self._topics_changed = False
            self._outbox.append(TopicsChanged())
        self._check_role()

    def take_outputs(self) -> list[Output]:
        out = self._outbox
        self._outbox = []
        return out

    def close(self, now_ms: int) -> None:
        """Clean stop: everything flushed, checkpoint + state snapshot + hard state
        written, the store closed (its next open skips the recovery scan)."""
        held = self._held_work
        if held is not None:
            # Its hard state never became durable, so nothing it held was released: the
            # node restarts from the last durable one, as after a crash. Its log flush is
            # done here (the flush plan took those segments off the dirty list).
            self._held_work = None
            self._in_flight = False
            if held.plan is not None:
                with contextlib.suppress(OSError):
                    held.plan.sync()
                    self.commit_log.complete_flush(held.plan)
        assert not self._in_flight, "finish the Work in flight before closing"
        wall = now_ms + self.wall_offset_ms
        self.release_held_pulls()
        try:
            self.store.flush(wall)
            self.entry_log.refresh_durable()
            self.entry_log.seal(self.raft.commit_index)
            self._write_state_snapshot()
            self.fs.write_atomic(self._hard_state_path, encode_hard_state(self._hard_state))
            self.store.close(wall)
        except DiskFullError as exc:
            # The stop is then not clean: the next start recovers as after a crash,
            # from the last checkpoint, state snapshot and hard state that were written.
            _log.error("close_disk_full", error=str(exc))
        for index in list(self._pending):
            self._fail_pending(index, ErrorCode.SERVICE_NOT_AVAILABLE, "broker shutting down")

    # ------------------------------------------------------------------ apply

    def _apply(self, now_ms: int) -> None:
        """Dispatch the committed entries after `_applied`, answering their requests.

        A full disk (a ConsumeQueue or IndexFile that cannot be created) stops this part
        way; the rest waits for a later tick (`_retry_apply`). The dispatcher resumes the
        interrupted entry without queueing a message twice, and `_ops_by_offset` keeps
        its command from being applied twice."""
        log = self.entry_log
        upto = self._committed
        everything: list[Dispatched] = []
        try:
            if not self._pending:
                self._applied_ops.clear()
                everything = self._dispatch(log.end_of(upto))
                self._applied = upto
            while self._applied < upto:
                index = self._applied + 1
                self._applied_ops.clear()
                end = log.end_of(index)
                dispatched = self._dispatch(end)
                everything.extend(dispatched)
                self._applied = index
                pending = self._pending.pop(index, None)
                if pending is None:
                    continue
                if pending.term != log.term_at(index):
                    self._reply(pending, pending.request.make_error(*self._not_leader_error()))
                    continue
                self._complete(pending, dispatched, end)
        except DiskFullError as exc:
            self._applied = self._index_at(self.store.dispatcher.dispatched_offset)
            self._note_disk_full("dispatch", exc)
        else:
            if self._disk_full:  # the common case skips the call: this runs per commit
                self._note_disk_full("dispatch", None)
        finally:
            self._applied_ops.clear()
            self._wake_pulls(everything, now_ms)

    def _retry_apply(self, now_ms: int) -> None:
        """Dispatch what a full disk held back, if anything is, every DISK_FULL_RETRY_MS
        (each try may ask the file system for a whole ConsumeQueue or IndexFile)."""
        if (
            self._applied < self._committed
            and not self._in_flight
            and now_ms >= self._next_apply_retry_ms
            # Raft forgot the log for a snapshot that `ready()` has yet to install:
            # nothing of the old log is left to dispatch.
            and self._committed >= self.log.first_index() - 1
        ):
            self._next_apply_retry_ms = now_ms + DISK_FULL_RETRY_MS
            self._apply(now_ms)

    def _hand_over_for_disk(self, now_ms: int) -> None:
        """Followers may have room: let one lead (and take the writes) meanwhile."""
        if now_ms >= self._next_disk_full_hand_over_ms:
            self._next_disk_full_hand_over_ms = now_ms + DISK_FULL_HAND_OVER_EVERY_MS
            self.hand_over()

    def _check_disk_usage(self) -> None:
        try:
            usage = self.fs.usage_ratio(self.config.data_dir)
        except OSError as exc:
            _log.warning("disk_usage_unknown", error=str(exc))
            return
        ratio = self.config.disk_refuse_ratio
        over = f"{usage:.1%} used, disk_refuse_ratio {ratio}" if usage > ratio else None
        self._note_disk_full("sends", over, count=False)  # refusals count one by one

    def _note_disk_full(
        self, what: str, error: OSError | str | None, *, count: bool = True
    ) -> None:
        """Log when a full disk starts or stops holding `what` back (not every retry);
        count a refusal in `disk_full_errors`."""
        if error is not None:
            if count:
                self._stats.disk_full_errors += 1
            if what not in self._disk_full:
                self._disk_full[what] = str(error)
                _log.error("disk_full", blocked=what, error=str(error))
        elif what in self._disk_full:
            del self._disk_full[what]
            _log.warning("disk_full_over", resumed=what)

    def _complete(self, pending: _Pending, dispatched: list[Dispatched], end: int) -> None:
        request = pending.request
        ops = self._applied_ops
        if not ops:
            response = request.make_error(ErrorCode.SYSTEM_ERROR, "entry applied no command")
        elif isinstance(ops[0].command, CreateTopicCommand):
            response = request.make_response({})
        elif ops[0].fields is not None:
            response = request.make_response(ops[0].fields)
            reset = ops[0].command
            if isinstance(reset, ResetCommand):
                # Only the node that served the reset notifies (members heartbeat every
                # node; one notification per member is enough).
                self._notify_group(reset.group, reset_topic=reset.topic)
        else:
            op = ops[0]
            command = op.command
            assert isinstance(command, SendCommand) and op.outcome is not None
            if op.outcome.duplicate:
                response = request.make_response(self._duplicate_result(command, op.outcome))
            else:
                response = request.make_response(_send_result(command.queue_id, dispatched))
        reply = Reply(pending.reply_to, response)
        if self._sync_flush and self.commit_log.flushed_offset < end:
            self._flush_waiters.append((end, reply))
        else:
            self._outbox.append(reply)

    def _duplicate_result(self, command: SendCommand, outcome: SendOutcome) -> dict[str, Any]:
        if outcome.original is None:
            return {
                "msg_ids": [],
                "queue_id": command.queue_id,
                "queue_offset": -1,
                "commit_offset": -1,
                "duplicate": True,
            }
        return self._result_of(outcome.original)

    def _result_of(self, record: SendRecord) -> dict[str, Any]:
        """The SendResult of a stored idempotent batch, read back from the store."""
        msg_ids: list[str] = []
        offset = record.commit_offset
        try:
            for _ in range(record.count):
                frame, offset = self.commit_log.frame_at(offset, verify_crc=False)
                msg_ids.append(decode_message_header(frame, verify_crc=False).msg_id)
        except (CorruptRecordError, OffsetOutOfRangeError):
            msg_ids = []
        return {
            "msg_ids": msg_ids,
            "queue_id": record.queue_id,
            "queue_offset": self._queue_offset_of(
                record.topic, record.queue_id, record.commit_offset
            ),
            "commit_offset": record.commit_offset,
            "duplicate": True,
        }

    def _queue_offset_of(self, topic: str, queue_id: int, commit_offset: int) -> int:
        """Binary search the ConsumeQueue for the unit of `commit_offset`; -1 if gone."""
        queue = self.store.queues.get(topic, queue_id)
        if queue is None:
            return -1
        lo = _first_unit_at_or_after(queue, commit_offset)
        unit = queue.get(lo)
        return lo if unit is not None and unit.commit_offset == commit_offset else -1

    def _release_flush_waiters(self) -> None:
        flushed = self.commit_log.flushed_offset
        waiters = self._flush_waiters
        while waiters and waiters[0][0] <= flushed:
            self._outbox.append(waiters.popleft()[1])

    # ------------------------------------------------------------------ retention

    def _retain(self, now_ms: int) -> bool:
        """Delete the oldest CommitLog segment if retention lets it go, compacting the
        Raft log with it: a follower that still needs its entries gets the snapshot
        taken where the next segment begins. True if one was deleted or the check must
        wait for a Work in flight (then the next tick looks again).

        A segment goes only once a checkpoint is past it (the store's rule: recovery
        never re-dispatches from a deleted segment) and its end's snapshot is on disk.
        One segment a tick: a node back from a long stop has many to delete, and each
        deletion syncs files while requests wait."""
        if self._in_flight or self._held_work is not None:
            return True
        store = self.store
        segments = store.commit_log.segments()
        # Not held back by a dispatch that waits for room: deleting is what makes room,
        # and it touches only segments a checkpoint covers, behind the stopped entry.
        if len(segments) < 2:
            return False
        end = segments[1][0]
        snapshot = self._boundary(end)
        if snapshot is None:
            return False
        # The segment's age is its newest message's, noted when dispatch left it.
        if not store.first_segment_expired(now_ms + self.wall_offset_ms, snapshot.newest_ms):
            return False
        try:
            self.raft.compact(snapshot.index)  # durable before the entries' bytes go
        except DiskFullError as exc:
            # Where the log begins could not be written (the log is unchanged): the
            # segment stays until the next check finds room.
            self._note_disk_full("retention", exc)
            return False
        if self._disk_full:
            self._note_disk_full("retention", None)
        self._delete_first_segment(end, snapshot.index + 1)
        return True

    def _delete_first_segment(self, end: int, first_index: int, *, on_open: bool = False) -> None:
        """The log already begins at `first_index` (durably): let the segment ending at
        `end` go, with its queue units, index entries and the snapshots before it."""
        self.store.delete_first_segment()
        self._snapshots.delete_below(end)
        self._stats.segments_deleted += 1
        _log.info("segment_deleted", begins=end, first_index=first_index, on_open=on_open)

    def _finish_retention(self) -> None:
        """Retention compacts the Raft log (durably) and then deletes the segment; a
        crash between the two leaves a log that begins past the CommitLog's first
        segment. Delete such segments now: the snapshot Raft sends must be the one
        where the CommitLog begins, and its index must be the log's boundary."""
        boundary = self.entry_log.first_index() - 1
        while len(segments := self.commit_log.segments()) >= 2:
            end = segments[1][0]
            snapshot = self._snapshots.load(end)
            if snapshot is None or snapshot.index > boundary:
                return
            self._delete_first_segment(end, boundary + 1, on_open=True)

    def _boundary(self, offset: int) -> SegmentSnapshot | None:
        """The snapshot at segment boundary `offset`, kept in memory between checks."""
        cached = self._boundary_cache
        if cached is not None and cached.offset == offset:
            return cached
        snapshot = self._snapshots.load(offset)
        if snapshot is None:
            if offset not in self._warned_no_snapshot:
                self._warned_no_snapshot.add(offset)
                _log.warning("retention_without_snapshot", offset=offset)
            return None
        self._boundary_cache = snapshot
        return snapshot

    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """raft's SnapshotSource: the snapshot where the CommitLog (the Raft log) begins."""
        start = self.commit_log.min_offset
        data = self._snapshots.read(start)
        snapshot = self._decode_snapshot(data, f"segment snapshot {start}")
        return SnapshotMeta(snapshot.index, snapshot.term), data or b""

    @staticmethod
    def _decode_snapshot(data: bytes | None, what: str) -> SegmentSnapshot:
        snapshot = SegmentSnapshot.decode(data)
        if snapshot is None:
            raise StorageError(f"{what}: missing or damaged snapshot")
        return snapshot

    def _install(self, received: ReceivedSnapshot, now_ms: int) -> None:
        """Replace this node's store and state with the leader's snapshot, durably, before
        the log reset Raft made in memory is synced (raft/ready.py, step 3).

        The marker written first holds the snapshot: a crash part way through redoes
        the install on the next start. A full disk here is fatal to the process (the
        log on disk is still the old one, so a restart asks the leader again)."""
        data = received.data
        snapshot = self._decode_snapshot(data, "snapshot received from the leader")
        assert (snapshot.index, snapshot.term) == (
            received.meta.last_index,
            received.meta.last_term,
        )
        self.release_held_pulls()
        for index in list(self._pending):
            self._fail_pending(index, *self._not_leader_error())
        self._install_files(snapshot, data, now_ms, marked=False)
        self._applied = self._committed = snapshot.index
        self._ops_by_offset.clear()
        self._dispatch_partial = []
        self._applied_ops.clear()
        self._resume_until = 0
        self._checkpointed = (snapshot.offset, self._hard_state.commit)
        self._topics_changed = True
        if self._disk_full:
            self._note_disk_full("dispatch", None)  # nothing of the old log waits now
        self._stats.snapshots_installed += 1
        _log.info(
            "snapshot_installed",
            index=snapshot.index,
            term=snapshot.term,
            offset=snapshot.offset,
            queues=len(snapshot.queues),
        )

    def _install_files(
        self, snapshot: SegmentSnapshot, data: bytes, now_ms: int, *, marked: bool
    ) -> None:
        """The on-disk part of an install, between writing the marker (unless `marked`:
        a start found it) and removing it; running it again after a crash is harmless.
        A full disk raises InstallDiskFullError."""
        state = BrokerState.decode(snapshot.state, self.config.producers_max)
        if state is None:
            raise StorageError(f"the snapshot at {snapshot.offset} holds a damaged state")
        try:
            if not marked:
                self.fs.write_atomic(self._install_path, data)
            self.store.reset(snapshot.offset, snapshot.queues, now_ms + self.wall_offset_ms)
            self.entry_log.install(snapshot.index, snapshot.term, snapshot.offset)
            self.log.installed()
            self._snapshots.write(snapshot.offset, data)
            self._snapshots.delete_except(snapshot.offset)
            self.fs.write_atomic(self._state_path, snapshot.state)
            self.fs.remove(self._install_path)
        except DiskFullError as exc:
            raise InstallDiskFullError(str(exc.filename), exc.needed_bytes) from exc
        self._state = state[0]
        self._captured = snapshot.offset

    # ------------------------------------------------------------------ checkpoints

    def _prepare_checkpoint(self, work: Work, flushed: int, now_ms: int) -> None:
        """Give the Work a checkpoint at `flushed` (where its CommitLog flush gets the log)
        and, if due, the state snapshot at the checkpoint's offset: the Work syncs queues
        and index and writes both files (the driver runs it in a worker thread). Nothing
        is dispatched before `advance`, so the state encoded now is the one at that offset."""
        store = self.store
        plan = store.prepare_checkpoint(flushed, now_ms + self.wall_offset_ms)
        work.checkpoint = plan
        if (
            now_ms >= self._next_snapshot_ms
            and plan.checkpoint.dispatched == store.dispatcher.dispatched_offset
        ):
            work.snapshot_due = True
            work.state_snapshot = self._state_snapshot()

    def _finish_checkpoint(self, work: Work, now_ms: int) -> None:
        """After the Work wrote (or a full disk refused) its checkpoint and state snapshot."""
        plan = work.checkpoint
        assert plan is not None
        self._next_checkpoint_ms = now_ms + self.config.checkpoint_interval_ms
        if not plan.written:
            # The previous checkpoint stands (its file is replaced atomically); recovery
            # from it re-dispatches a little more. The next interval tries again.
            self._note_disk_full("checkpoint", plan.disk_full)
            return
        self._note_disk_full("checkpoint", None)
        self.store.complete_checkpoint(plan)
        self._checkpointed = (self.store.dispatcher.dispatched_offset, self._hard_state.commit)
        # Committed entries never leave the log but from its front: seal where they sit
        # into the on-disk index, so memory keeps only the rest and the next start
        # need not walk them (a full disk only skips this; the next checkpoint retries).
        self.entry_log.seal(self.raft.commit_index)
        if work.snapshot_due:
            if work.state_snapshot is not None:
                # A refused snapshot leaves the previous one intact (the write is atomic),
                # and with the log after it that still rebuilds the state: a later one will do.
                self._note_disk_full("state snapshot", work.state_disk_full)
            self._next_snapshot_ms = now_ms + self.config.state_snapshot_interval_ms

    def _state_snapshot(self) -> tuple[str, bytes] | None:
        """The state snapshot at `dispatched_offset`, to write once that is checkpointed;
        None while a full disk holds a dispatch part way: the state then holds the
        command of an entry past `dispatched_offset`, and a restart would replay it a
        second time (the previous snapshot and the log are enough)."""
        if self._ops_by_offset:
            return None
        return self._state_path, self._state.encode(self.store.dispatcher.dispatched_offset)

    def _write_state_snapshot(self) -> None:
        snapshot = self._state_snapshot()
        if snapshot is None:
            return
        assert self.store.dispatcher.dispatched_offset <= self.commit_log.flushed_offset
        self._note_disk_full("state snapshot", _write_or_full(self.fs, *snapshot))

    # ------------------------------------------------------------------ role

    def _check_role(self) -> None:
        raft = self.raft
        view = (raft.role, raft.term, raft.leader_id)
        if view == self._role_view:
            return
        was_leader = self._role_view[0] is Role.LEADER
        self._role_view = view
        if was_leader and raft.role is not Role.LEADER:
            error, remark = self._not_leader_error()
            for index in list(self._pending):
                self._fail_pending(index, error, remark)
        # Campaigns of a cut-off node repeat every election timeout: keep them quiet.
        log_at = _log.debug if raft.role in (Role.PRE_CANDIDATE, Role.CANDIDATE) else _log.info
        log_at(
            "role_changed",
            role=_ROLE_NAMES[raft.role],
            term=raft.term,
            leader=raft.leader_id,
            node_id=self.config.node_id,
        )
        self._outbox.append(RoleChanged(_ROLE_NAMES[raft.role], raft.term, raft.leader_id))

    def hand_over(self) -> int | None:
        """Start handing leadership to the most caught-up other node (Raft's transfer:
        it is brought up to date, then told to campaign at once), so that a planned stop
        costs the group a round trip instead of an election timeout. Until the transfer
        ends (at most an election timeout) sends are refused with NOT_LEADER and retried
        by producers. Returns the chosen node, or None when this node does not lead or
        leads alone."""
        raft = self.raft
        if raft.role is not Role.LEADER:
            return None
        others = [p for p in raft.peers if p != self.config.node_id]
        if not others:
            return None
        target = max(others, key=lambda p: (raft.match_index(p) or 0, -p))
        raft.transfer_leadership(target)
        _log.info("leadership_hand_over", to=target, term=raft.term)
        return target

    @property
    def applied_index(self) -> int:
        """The last entry dispatched: its commands applied, its messages queued. Raft's
        own applied index runs ahead of it while a full disk holds dispatch back."""
        return self._applied

    @property
    def is_leader(self) -> bool:
        return self.raft.role is Role.LEADER

    @property
    def leader_address(self) -> str | None:
        leader = self.raft.leader_id
        return None if leader is None else self.voters.get(leader)

    def _not_leader_error(self) -> tuple[ErrorCode, str]:
        return ErrorCode.NOT_LEADER, f"leader is {self.leader_address}"

    def _require_leader(self) -> None:
        """Writes go to the leader only; anyone else answers NOT_LEADER with its address."""
        if self.raft.role is not Role.LEADER:
            raise self._not_leader()

    def _not_leader(self) -> RequestError:
        transferee = self.raft.transferee if self.raft.role is Role.LEADER else None
        if transferee is not None:
            # Handing over: the transferee leads in a moment (if it does not, it names
            # us again and the sender comes back).
            return RequestError(
                ErrorCode.NOT_LEADER,
                f"node {self.config.node_id} is handing {self.config.group} over to "
                f"node {transferee}",
                {"leader": self.voters.get(transferee), "group": self.config.group},
            )
        return RequestError(
            ErrorCode.NOT_LEADER,
            f"node {self.config.node_id} is not the leader of {self.config.group}",
            {"leader": self.leader_address, "group": self.config.group},
        )

    def _fail_pending(self, index: int, error: ErrorCode, remark: str) -> None:
        pending = self._pending.pop(index)
        fields = None
        if error == ErrorCode.NOT_LEADER:
            fields = {"leader": self.leader_address, "group": self.config.group}
        self._reply(pending, pending.request.make_response(fields, error=error, remark=remark))

    def _reply(self, pending: _Pending, frame: Frame) -> None:
        self._outbox.append(Reply(pending.reply_to, frame))

    def registration(self) -> BrokerRegistration:
        return BrokerRegistration(
            cluster=self.config.cluster,
            group=self.config.group,
            node_id=self.config.node_id,
            address=self.address,
            role=RouteRole.LEADER if self.is_leader else RouteRole.FOLLOWER,
            term=self.raft.term,
            topics=dict(self._state.topics),
        )

    # ------------------------------------------------------------------ timeouts

    def _expire(self, now_ms: int) -> None:
        pending = self._pending
        if pending:
            # A committed entry is answered once dispatched (a full disk may hold that
            # back): "not committed" would be false, and a retry could store it twice.
            committed = self._committed
            expired = [
                i
                for i, p in itertools.islice(pending.items(), 64)
                if p.deadline_ms <= now_ms and i > committed
            ]
            # Deadlines grow with the index (same timeout, non-decreasing clock), so the
            # oldest few are the only candidates; the slice bounds the work per tick.
            for index in expired:
                self._stats.timeouts += 1
                self._fail_pending(
                    index,
                    ErrorCode.REPLICATION_TIMEOUT,
                    f"not committed within {self.config.send_timeout_ms} ms",
                )
        heap = self._held_deadlines
        while heap and heap[0][0] <= now_ms:
            _, _, held, key = heapq.heappop(heap)
            if held.done:
                continue
            waiting = self._held.get(key)
            if waiting is not None:
                waiting.remove(held)
                if not waiting:
                    del self._held[key]
            response = self._pull_response(held.request)
            assert response is not None
            self._finish_held(held, response)

    # ------------------------------------------------------------------ sends

    def _handle_send(self, request: Frame, reply_to: int, now_ms: int) -> Frame | None:
        self._require_leader()
        if "sends" in self._disk_full:
            self._stats.disk_full_errors += 1
            self._hand_over_for_disk(now_ms)
            raise RequestError(
                ErrorCode.SERVICE_NOT_AVAILABLE,
                f"the broker's disk is full: {self._disk_full['sends']}",
            )
        f = request.fields
        topic = get_str(f, "topic")
        try:
            validate_topic(topic)
        except InvalidTopicError as exc:
            raise RequestError(ErrorCode.INVALID_TOPIC, str(exc)) from None
        queue_id = get_int(f, "queue_id", high=QUEUES_MAX - 1)
        count = get_int(f, "count", default=1, low=1, high=BATCH_COUNT_MAX)
        producer_id = f.get("producer_id")
        seq: int | None = None
        if producer_id is not None:
            producer_id = get_str(f, "producer_id")
            seq = get_int(f, "seq")
        config = self._state.topics.get(topic)
        create_queues = 0
        if config is None:
            if not self.config.auto_create_topics:
                raise RequestError(ErrorCode.TOPIC_NOT_EXIST, f"topic {topic} does not exist")
            create_queues = write_queues = self.config.default_queues
        else:
            if not config.perm & Perm.WRITE:
                raise RequestError(ErrorCode.NO_PERMISSION, f"topic {topic} is not writable")
            write_queues = config.write_queues
        if queue_id >= write_queues:
            # The sender's route is provisional (auto-create) or stale: it may retry.
            raise RequestError(
                ErrorCode.NO_ROUTE,
                f"queue_id {queue_id} >= write queues {write_queues} of topic {topic}",
                fields={"write_queues": write_queues},
            )
        if producer_id is not None:
            assert seq is not None
            last = self._state.last_send(producer_id)
            if last is not None and seq <= last.seq:
                # Stored before and already applied here: answer from the table.
                if last.seq == seq:
                    return request.make_response(self._result_of(last))
                return request.make_response(
                    self._duplicate_result(
                        SendCommand(topic, queue_id, count), SendOutcome(True, None)
                    )
                )
        if len(self._pending) >= self.config.pending_requests_max:
            raise RequestError(ErrorCode.SYSTEM_BUSY, "too many sends await replication")
        store_ms = max(now_ms + self.wall_offset_ms, self._last_store_ms)
        self._last_store_ms = store_ms
        body = bytearray(request.body)
        self._prepare_batch(body, topic, queue_id, count, store_ms)
        command = encode_command(
            SendCommand(topic, queue_id, count, producer_id, seq, create_queues)
        )
        data = command + body
        self._require_fits_segment(len(data), ErrorCode.MESSAGE_TOO_LARGE, "batch")
        self._propose(request, reply_to, data, now_ms)
        return None

    def _prepare_batch(
        self, body: bytearray, topic: str, queue_id: int, count: int, store_ms: int
    ) -> None:
        """Check every frame of the batch (CRC, fields, topic/queue, size) and stamp the
        store time in place, re-computing the frame's CRC (storage.record.stamp_batch)."""
        try:
            frames = stamp_batch(body, topic, queue_id, store_ms, self.config.message_bytes_max)
        except MessageTooLargeError as exc:
            raise RequestError(ErrorCode.MESSAGE_TOO_LARGE, str(exc)) from None
        except CorruptRecordError as exc:
            raise RequestError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        if frames != count:
            raise RequestError(
                ErrorCode.INVALID_REQUEST, f"count is {count}, body has {frames} frames"
            )

    def _require_fits_segment(
        self, size: int, code: ErrorCode, what: str, advice: str = ""
    ) -> None:
        """An entry never spans two segments, so one larger than a segment is refused."""
        segment_bytes = self.commit_log.segment_bytes
        if size + ENTRY_FRAME_OVERHEAD_BYTES > segment_bytes:
            raise RequestError(
                code, f"{what} of {size} bytes does not fit a {segment_bytes}-byte segment{advice}"
            )

    def _propose(self, request: Frame, reply_to: int, data: bytes | bytearray, now_ms: int) -> None:
        try:
            index = self.raft.propose(bytes(data))
        except NotLeaderError:
            raise self._not_leader() from None
        except BacklogFullError as exc:
            raise RequestError(ErrorCode.SYSTEM_BUSY, str(exc)) from None
        except DiskFullError as exc:
            self._note_disk_full("log append", exc)
            self._hand_over_for_disk(now_ms)
            raise RequestError(
                ErrorCode.SERVICE_NOT_AVAILABLE, f"the broker's disk is full: {exc}"
            ) from None
        except StorageError as exc:
            _log.error("append_failed", error=str(exc))
            raise RequestError(ErrorCode.SYSTEM_ERROR, f"append failed: {exc}") from None
        if self._disk_full:  # per proposal: only look when something is held back
            self._note_disk_full("log append", None)
        self._stats.proposals += 1
        self._pending[index] = _Pending(
            reply_to, request, self.raft.term, now_ms + self.config.send_timeout_ms
        )

    # ------------------------------------------------------------------ topics

    def _handle_create_topic(self, request: Frame, reply_to: int, now_ms: int) -> Frame | None:
        self._require_leader()
        f = request.fields
        topic = get_str(f, "topic")
        try:
            validate_topic(topic)
        except InvalidTopicError as exc:
            raise RequestError(ErrorCode.INVALID_TOPIC, str(exc)) from None
        read_queues = get_int(
            f, "read_queues", default=self.config.default_queues, low=1, high=QUEUES_MAX
        )
        write_queues = get_int(
            f, "write_queues", default=self.config.default_queues, low=1, high=QUEUES_MAX
        )
        perm = get_int(f, "perm", default=int(PERM_READ_WRITE), high=0xFF)
        command = CreateTopicCommand(topic, read_queues, write_queues, perm)
        self._propose_command(request, reply_to, command, now_ms)
        return None

    def _handle_get_all_topics(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        return request.make_response(
            {"topics": {name: c.to_fields() for name, c in self._state.topics.items()}}
        )

    # ------------------------------------------------------------------ consumer groups

    def _handle_heartbeat(self, request: Frame, now_ms: int, connection: int | None) -> Frame:
        f = request.fields
        group = get_name(f, "group")
        client_id = get_name(f, "client_id")
        model = get_str(f, "model", default="clustering")
        if model not in MODELS:
            raise FieldError(f"field 'model' must be one of {', '.join(MODELS)}, got {model!r}")
        topics = get_list(f, "topics", default=[])
        if len(topics) > TOPICS_PER_MEMBER_MAX:
            raise FieldError(f"field 'topics' lists more than {TOPICS_PER_MEMBER_MAX} topics")
        for topic in topics:
            if not isinstance(topic, str) or not topic or len(topic) > NAME_CHARS_MAX:
                raise FieldError("field 'topics' must be a list of topic names")
        consume_from = get_str(f, "consume_from", default="")
        try:
            added = self._consumers.heartbeat(
                group,
                client_id,
                model=model,
                topics=topics,
                consume_from=consume_from,
                connection=connection,
                now_ms=now_ms,
            )
        except GroupsFullError as exc:
            raise RequestError(ErrorCode.SYSTEM_BUSY, str(exc)) from None
        if added:
            self._notify_group(group)
        return request.make_response({})

    def _handle_unregister_client(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        group = get_name(request.fields, "group")
        if self._consumers.unregister(group, get_name(request.fields, "client_id")):
            self._notify_group(group)
        return request.make_response({})

    def _notify_group(self, group: str, *, reset_topic: str | None = None) -> None:
        """Push NOTIFY_CONSUMER_IDS_CHANGED to every connection of the group's members."""
        fields: dict[str, Any] = {"group": group}
        if reset_topic is not None:
            fields["reset_topic"] = reset_topic
        frame = Frame(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, flags=Flag.ONEWAY, fields=fields)
        for connection in self._consumers.connections(group):
            self._outbox.append(Notify(connection, frame))

    def _handle_get_consumer_list(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        group = get_name(request.fields, "group")
        return request.make_response(
            {"client_ids": [m.client_id for m in self._consumers.members(group)]}
        )

    def _handle_get_consumer_groups(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        consumers = self._consumers
        topics: dict[str, set[str]] = {}
        for group, topic in self._state.offsets:
            topics.setdefault(group, set()).add(topic)
        groups: dict[str, Any] = {}
        for group in sorted(set(consumers.group_names()) | topics.keys()):
            members = consumers.members(group)
            subscribed = topics.get(group, set()).union(*(m.topics for m in members))
            groups[group] = {
                "members": [m.client_id for m in members],
                "model": consumers.model(group),
                "topics": sorted(subscribed),
            }
        return request.make_response({"groups": groups})

    # ------------------------------------------------------------------ consumer offsets

    def _handle_update_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame | None:
        self._require_leader()
        f = request.fields
        group = get_name(f, "group")
        entries = _offset_entries(get_list(f, "offsets"))
        if not entries:
            return request.make_response({"stale": []})
        state = self._state
        new_keys = {(group, e.topic) for e in entries} - state.offsets.keys()
        if new_keys and len(state.offsets) + len(new_keys) > OFFSET_GROUP_TOPICS_MAX:
            raise RequestError(
                ErrorCode.SYSTEM_BUSY,
                f"the offset table holds {len(state.offsets)} (group, topic) pairs already",
            )
        self._propose_command(request, reply_to, OffsetCommand(group, entries), now_ms)
        return None

    def _handle_query_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        f = request.fields
        group = get_name(f, "group")
        topic = get_name(f, "topic")
        queues = self._state.committed_offsets(group, topic)
        if f.get("queue_id") is not None:
            queue_id = get_int(f, "queue_id", high=QUEUES_MAX - 1)
            offsets = [[queue_id, queues[queue_id]]] if queue_id in queues else []
        else:
            offsets = [[q, o] for q, o in sorted(queues.items())]
        return request.make_response(
            {"offsets": offsets, "generation": self._state.generation(group, topic)}
        )

    def _handle_reset_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame | None:
        self._require_leader()
        f = request.fields
        group = get_name(f, "group")
        topic = get_name(f, "topic")
        to = get_str(f, "to")
        if to not in ("first", "last", "timestamp"):
            raise FieldError(f"field 'to' must be first, last or timestamp, got {to!r}")
        timestamp_ms = get_int(f, "timestamp_ms") if to == "timestamp" else 0
        config = self._state.topics.get(topic)
        if config is None:
            raise RequestError(ErrorCode.TOPIC_NOT_EXIST, f"topic {topic} does not exist")
        offsets = tuple(
            (q, self._reset_position(topic, q, to, timestamp_ms)) for q in range(config.read_queues)
        )
        self._propose_command(request, reply_to, ResetCommand(group, topic, offsets), now_ms)
        return None

    def _reset_position(self, topic: str, queue_id: int, to: str, timestamp_ms: int) -> int:
        """Where a reset `to` first / last / timestamp puts one queue, by this node's store."""
        if to == "first":
            return self.store.min_offset(topic, queue_id)
        if to == "last":
            return self.store.max_offset(topic, queue_id)
        return self.store.offset_for_timestamp(topic, queue_id, timestamp_ms)

    def _propose_command(
        self, request: Frame, reply_to: int, command: Command, now_ms: int
    ) -> None:
        """Propose a command-only entry; the request is answered once it is applied."""
        if len(self._pending) >= self.config.pending_requests_max:
            raise RequestError(ErrorCode.SYSTEM_BUSY, "too many requests await replication")
        try:
            data = encode_command(command)
        except CommandError as exc:
            raise RequestError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        self._require_fits_segment(
            len(data), ErrorCode.INVALID_REQUEST, "request", ": send fewer entries"
        )
        self._propose(request, reply_to, data, now_ms)

    # ------------------------------------------------------------------ reads

    def _handle_pull(self, request: Frame, reply_to: int, now_ms: int) -> Frame | None:
        f = request.fields
        topic = get_str(f, "topic")
        queue_id = get_int(f, "queue_id", high=QUEUES_MAX - 1)
        get_int(f, "offset")
        get_int(f, "max_count", default=32, low=1, high=PULL_COUNT_MAX)
        if f.get("max_bytes") is not None:
            get_int(f, "max_bytes", low=1)
        for value in get_list(f, "tag_hashes", default=[]):
            if not isinstance(value, int) or isinstance(value, bool):
                raise FieldError("field 'tag_hashes' must be a list of integers")
        suspend_ms = min(get_int(f, "suspend_ms", default=0), self.config.pull_suspend_ms_max)
        if suspend_ms <= 0 or self._held_count >= self.config.held_pulls_max:
            return self._pull_response(request)
        response = self._pull_response(request, hold=True)
        if response is not None:
            return response
        key = (topic, queue_id)
        held = _Held(reply_to, request, now_ms + suspend_ms)
        self._held.setdefault(key, []).append(held)
        self._held_count += 1
        heapq.heappush(self._held_deadlines, (held.deadline_ms, next(self._held_seq), held, key))
        return None

    def _pull_response(self, request: Frame, *, hold: bool = False) -> Frame | None:
        """The pull's answer; with `hold`, None instead of an answer with nothing new."""
        f = request.fields
        tag_hashes = f.get("tag_hashes")
        max_bytes = f.get("max_bytes")
        result = self.store.get_messages(
            f["topic"],
            f["queue_id"],
            f["offset"],
            f.get("max_count", 32),
            None if max_bytes is None else min(max_bytes, PULL_BYTES_MAX),
            frozenset(tag_hashes) if tag_hashes else None,
        )
        status = _PULL_STATUS[result.status]
        if hold and status == "NO_NEW_MSG":
            return None
        messages = result.messages
        return request.make_response(
            {
                "status": status,
                "next_offset": result.next_offset,
                "min_offset": result.min_offset,
                "max_offset": result.max_offset,
                "queue_offsets": [offset for offset, _ in messages],
            },
            b"".join(frame for _, frame in messages),
        )

    def _wake_pulls(self, dispatched: list[Dispatched], now_ms: int) -> None:
        """Answer held pulls whose queue just got messages."""
        if not self._held or not dispatched:
            return
        for key in {(d.topic, d.queue_id) for d in dispatched}:
            waiting = self._held.get(key)
            if not waiting:
                continue
            still: list[_Held] = []
            for held in waiting:
                response = self._pull_response(held.request, hold=True)
                if response is None:
                    still.append(held)
                else:
                    self._finish_held(held, response)
            if still:
                self._held[key] = still
            else:
                del self._held[key]

    def release_held_pulls(self) -> None:
        """Answer every long poll with what its queue has now (the node is closing: the
        consumer should not wait out its suspend time for a node that is gone). `close`
        does it too; a driver calls it first, while connections can still carry the
        answers."""
        for waiting in self._held.values():
            for held in waiting:
                response = self._pull_response(held.request)
                assert response is not None
                self._finish_held(held, response)
        self._held.clear()
        self._held_deadlines.clear()

    def release_held(self, pulls: Iterable[tuple[int, str, int]]) -> None:
        """Answer now the long polls among `pulls` (reply_to, topic, queue_id) that are
        still held: their client hung up, so they should not count against
        `held_pulls_max` (nor be answered) for the rest of their suspend time."""
        by_queue: dict[tuple[str, int], set[int]] = {}
        for reply_to, topic, queue_id in pulls:
            by_queue.setdefault((topic, queue_id), set()).add(reply_to)
        for key, reply_tos in by_queue.items():
            waiting = self._held.get(key)
            if not waiting:
                continue
            still: list[_Held] = []
            for held in waiting:
                if held.reply_to in reply_tos:
                    response = self._pull_response(held.request)
                    assert response is not None
                    self._finish_held(held, response)
                else:
                    still.append(held)
            if still:
                self._held[key] = still
            else:
                del self._held[key]

    def _finish_held(self, held: _Held, response: Frame) -> None:
        held.done = True
        self._held_count -= 1
        self._outbox.append(Reply(held.reply_to, response))

    def _handle_min_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        topic, queue_id = _topic_queue(request)
        return request.make_response({"offset": self.store.min_offset(topic, queue_id)})

    def _handle_max_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        topic, queue_id = _topic_queue(request)
        return request.make_response({"offset": self.store.max_offset(topic, queue_id)})

    def _handle_search_offset(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        topic, queue_id = _topic_queue(request)
        ts = get_int(request.fields, "timestamp_ms")
        return request.make_response(
            {"offset": self.store.offset_for_timestamp(topic, queue_id, ts)}
        )

    def _handle_query(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        f = request.fields
        topic = get_str(f, "topic")
        key = get_str(f, "key", chars_max=0xFFFF)
        begin = get_int(f, "begin_ms", default=0)
        end = get_int(f, "end_ms", default=2**63 - 1)
        max_count = get_int(f, "max_count", default=32, low=1, high=PULL_COUNT_MAX)
        frames = self._indexed_frames(
            f"{topic}#{key}", begin, end, max_count,
            lambda h: h.topic == topic and key in h.keys.split(" "),
        )  # fmt: skip
        return request.make_response({"count": len(frames)}, b"".join(frames))

    def _handle_view(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        f = request.fields
        topic = get_str(f, "topic")
        msg_id = get_str(f, "msg_id")
        frames = self._indexed_frames(
            f"{topic}#{msg_id}", 0, 2**63 - 1, 1, lambda h: h.topic == topic and h.msg_id == msg_id
        )
        if not frames:
            raise RequestError(ErrorCode.QUERY_NOT_FOUND, f"no message {msg_id} in {topic}")
        return request.make_response({}, frames[0])

    def _indexed_frames(
        self, key: str, begin_ms: int, end_ms: int, max_count: int, keep: Callable[[Any], bool]
    ) -> list[bytes]:
        out: list[bytes] = []
        for offset in self.store.index.query(key, begin_ms, end_ms, max_count * 2):
            try:
                frame, _ = self.commit_log.frame_at(offset)
                head = decode_message_header(frame, verify_crc=False)
            except (CorruptRecordError, OffsetOutOfRangeError):
                continue
            if int.from_bytes(frame[4:8], "little") == MAGIC_MESSAGE and keep(head):
                out.append(bytes(frame))
                if len(out) >= max_count:
                    break
        return out

    def _handle_status(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        return request.make_response(self.status())

    def _handle_ping(self, request: Frame, reply_to: int, now_ms: int) -> Frame:
        return request.make_response({})

    def status(self) -> dict[str, Any]:
        raft = self.raft
        return {
            "cluster": self.config.cluster,
            "group": self.config.group,
            "node_id": self.config.node_id,
            "address": self.address,
            "role": _ROLE_NAMES[raft.role],
            "term": raft.term,
            "leader": self.leader_address,
            "commit_index": raft.commit_index,
            "applied_index": self.applied_index,
            "commit_offset": self.store.dispatcher.dispatched_offset,
            "max_offset": self.commit_log.max_offset,
            "min_offset": self.commit_log.min_offset,
            "first_index": self.log.first_index(),
            "sealed_index": self.entry_log.sealed_index,
            "entries_in_memory": self.entry_log.entries_in_memory,
            "pid": self.pid,
            "disk_full": sorted(self._disk_full),
            "loop_lag_ms": round(self._loop_lag.worst_ms, 1),
            "loop_stalls": self._loop_lag.stalls,
            "synced": raft.synced,
            "joining": raft.joining,
        }

    def record_loop_lag(self, now_ms: int, lag_ms: float) -> None:
        """The driver's tick came `lag_ms` later than it asked (mq/broker/loop_lag.py)."""
        stalls = self._loop_lag.record(now_ms, lag_ms)
        if stalls:
            _log.warning(
                "loop_stalled", lag_ms=round(lag_ms, 1), stalls=stalls, since_ms=LOG_EVERY_MS
            )

    def stats(self) -> dict[str, int]:
        """Counters for logs and debugging (not part of the wire API)."""
        stats = self._stats
        return {
            "proposals": stats.proposals,
            "applied_entries": stats.applied_entries,
            "fsync_works": stats.fsync_works,
            "timeouts": stats.timeouts,
            "deferred_dropped": stats.deferred_dropped,
            "bad_raft_frames": stats.bad_raft_frames,
            "disk_full_errors": stats.disk_full_errors,
            "segments_deleted": stats.segments_deleted,
            "snapshots_installed": stats.snapshots_installed,
            "pending": len(self._pending),
            "held_pulls": self._held_count,
            "consumers": len(self._consumers),
        }

    _simple_handlers: dict[int, Callable[[BrokerCore, Frame, int, int], Frame | None]] = {
        RequestCode.CREATE_TOPIC: _handle_create_topic,
        RequestCode.GET_ALL_TOPICS: _handle_get_all_topics,
        RequestCode.GET_MIN_OFFSET: _handle_min_offset,
        RequestCode.GET_MAX_OFFSET: _handle_max_offset,
        RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: _handle_search_offset,
        RequestCode.QUERY_MESSAGE: _handle_query,
        RequestCode.VIEW_MESSAGE_BY_ID: _handle_view,
        RequestCode.GET_BROKER_STATUS: _handle_status,
        RequestCode.PING: _handle_ping,
        RequestCode.UNREGISTER_CLIENT: _handle_unregister_client,
        RequestCode.GET_CONSUMER_LIST: _handle_get_consumer_list,
        RequestCode.GET_CONSUMER_GROUPS: _handle_get_consumer_groups,
        RequestCode.UPDATE_CONSUMER_OFFSET: _handle_update_offset,
        RequestCode.QUERY_CONSUMER_OFFSET: _handle_query_offset,
        RequestCode.RESET_CONSUMER_OFFSET: _handle_reset_offset,
    }


def _first_unit_at_or_after(queue: ConsumeQueue, commit_offset: int) -> int:
    """The first queue offset the queue serves whose message starts at or past
    `commit_offset`, or its max offset: a queue's units are in commit order."""
    lo, hi = queue.min_offset, queue.max_offset
    while lo < hi:
        mid = (lo + hi) // 2
        unit = queue.get(mid)
        assert unit is not None
        if unit.commit_offset < commit_offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _send_result(queue_id: int, dispatched: list[Dispatched]) -> dict[str, Any]:
    first = dispatched[0] if dispatched else None
    return {
        "msg_ids": [d.msg_id for d in dispatched],
        "queue_id": queue_id,
        "queue_offset": first.queue_offset if first else -1,
        "commit_offset": first.commit_offset if first else -1,
        "duplicate": False,
    }


def _offset_entries(raw: list[Any]) -> tuple[OffsetEntry, ...]:
    """UPDATE_CONSUMER_OFFSET's `offsets`, checked entry by entry (FieldError names the
    first bad one, and nothing of the request is applied)."""
    if len(raw) > OFFSET_ENTRIES_MAX:
        raise FieldError(
            f"field 'offsets' has {len(raw)} entries, at most {OFFSET_ENTRIES_MAX} per request"
        )
    entries: list[OffsetEntry] = []
    for i, item in enumerate(raw):
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise FieldError(f"offsets[{i}] must be [topic, queue_id, offset, generation]")
        topic, queue_id, offset, generation = item
        try:
            validate_topic(topic)
        except InvalidTopicError as exc:
            raise FieldError(f"offsets[{i}]: {exc}") from None
        for name, value, high in (
            ("queue_id", queue_id, QUEUES_MAX - 1),
            ("offset", offset, 2**63 - 1),
            ("generation", generation, 2**63 - 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
                raise FieldError(f"offsets[{i}]: {name} must be an integer within [0, {high}]")
        entries.append(OffsetEntry(topic, queue_id, offset, generation))
    return tuple(entries)


def _topic_queue(request: Frame) -> tuple[str, int]:
    return get_str(request.fields, "topic"), get_int(
        request.fields, "queue_id", high=QUEUES_MAX - 1
    )


# Re-exported for drivers that only need the message types.
__all__ = [
    "BrokerCore",
    "Notify",
    "Output",
    "PeerMessage",
    "Reply",
    "RoleChanged",
    "TopicsChanged",
    "Work",
]
