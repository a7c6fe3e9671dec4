"""Queue safety checkers for `mq sim broker`, built around a reference model of the
broker's replicated state machine.

The model is the oracle. It reads the Raft entries a node has *committed* (its Raft
commit index, never its dispatch progress), in index order, and applies them as
docs/broker-api.md specifies, independently of mq/broker: a send command's messages
get the next queue offsets of their queue, unless (producer_id, seq) is at or below the
producer's last applied seq (an idempotent retry, not stored again); an offset command
sets a consumer group's committed offsets (of the current generation). So the model
says, for every queue offset, which message id (and tags) a correct broker must hold
there, and which offsets a group committed; it only ever grows. Every observation is
compared with it the moment it is made:

* an acknowledged send (OK SendResult): its messages must be in the model at the queue
  offsets the ack gave (`acked_durable`);
* a pulled message: its queue offset must already be in the model (anything else was
  served before it was committed: `committed_only`) and hold the same message id
  (`queue_order`); the offsets of a pull response must be contiguous from the offset
  asked for, or, for a tag-filtered pull, every message with a subscribed tag in the
  range the node examined must be served (`queue_order`);
* an acknowledged offset commit must be in the model (`acked_durable`); an offset a
  node answers to QUERY_CONSUMER_OFFSET must be one the group committed
  (`committed_only`);
* an acknowledged reset must be a committed reset with that generation and those
  offsets (`acked_durable`); after it, a commit of an older generation must be
  reported stale, and a node that has applied the reset answers queries with at least
  its generation (`offset_generation`);
* a node's ConsumeQueues, scanned after every restart and every second: a prefix of the
  model (`queue_order`), never longer than it (`committed_only`);
* the committed Raft prefixes of all nodes: the same term at every index
  (`log_matching`), and a message id stored twice (`no_duplicate`).

Retention deletes old CommitLog segments on each node, and with them the Raft entries
(the log is compacted) and the ConsumeQueue units below the queue's new min offset; a
follower that needs deleted entries installs the leader's snapshot instead. So a node
holds a *suffix* of each queue, from its min offset; what is below is gone by design,
but only for a reason (`retention`), checked the moment the host reports that where
the node's log begins moved (sim/broker_host.py `on_log_start`):

* deleted by the node's retention: each message that left must be `retention_ms` old
  by the node's clock (its store timestamp, the leader's clock when it was stored,
  against the node's `now_ms` plus its wall offset);
* left with a snapshot install: the node's queues must then continue exactly where
  the model says they do after the snapshot's Raft index (`queue_order`: an install
  never shifts or reuses an offset), the snapshot's (index, term) must be committed
  (`log_matching`), and each message the node lost must have been deleted already by
  the leader that sent the snapshot when it sent it (the host reports every snapshot
  a core hands Raft, and the sender's queue min offsets then).

A min offset that moves at any other time (a restart that did not finish an install,
a scan that finds it moved) is a `retention` violation too, as is an OFFSET_ILLEGAL
answer that claims a queue begins past what the node was seen deleting.

The model reads committed entries from the node whose commit index moved; an entry a
node compacted is read from any node that has committed and still holds it, and if
none does, that is a violation (`log_matching`), never skipped.

At the end, after the heal, every node must serve exactly the model from its min
offset on, read back through PULL_MESSAGE (following OFFSET_ILLEGAL to the min offset),
unfiltered and filtered by tag; every node must hold the same ConsumeQueue units from
the highest min offset on, up to the same end; and every node must answer the
committed consumer offsets (`replicas_identical`; a missing acknowledged message is
reported as `acked_durable`, a missing delivered one as `committed_only`).

Why a model and not "compare the nodes with each other": replicas that agree can still
all be wrong (a retry stored twice everywhere, an entry dispatched before commit on
every node), and a message delivered and then lost is only visible against a record
of what was committed. The model is fed by the Raft commit index, which the raft
simulator (`mq sim raft`) checks on its own; here it is the ground truth.

Catch-up is incremental: each node's committed prefix is read once, when its commit
index moves, and compared term by term with the model's.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mq.broker.commands import (
    MAGIC_COMMAND,
    CommandError,
    OffsetCommand,
    ResetCommand,
    SendCommand,
    decode_command,
)
from mq.protocol import Frame, RequestCode, request
from raft.messages import EntryKind
from raft.ready import SnapshotMeta
from sim.checkers import Violation
from storage.record import FRAME_HEADER_BYTES, MAGIC_MESSAGE, decode_message_header, tag_hash

if TYPE_CHECKING:
    from sim.broker_host import BrokerHost

QueueKey = tuple[str, int]

QUEUE_CHECKERS: dict[str, str] = {
    "acked_durable": "every acknowledged message stays at the queue offset its ack gave",
    "committed_only": "a consumer is only ever served committed messages, and they stay",
    "queue_order": "queue offsets are contiguous; an offset always holds the same message",
    "replicas_identical": "after the heal, every node holds the same ConsumeQueues",
    "no_duplicate": "a message of an idempotent producer is stored at most once",
    "log_matching": "all nodes hold the same entry terms at every committed index",
    "retention": "a message leaves a node only once retention_ms old by its clock, or "
    "with a snapshot from a leader that had deleted it",
    "offset_generation": "after a reset of generation G is acknowledged, commits of an "
    "older generation are stale and a node that applied it answers queries with >= G",
    "group_membership": "a node notifies only its group's members; after the heal and a "
    "settle period every node lists exactly the running consumers",
    "liveness": "after the heal, a leader acknowledges a send every node then serves",
    "workload": "the broker refuses a well-formed request for what it is",
}


def message_frames(body: bytes | bytearray | memoryview) -> Iterator[memoryview]:
    """The concatenated message frames of a pull response or send request body."""
    view = memoryview(body)
    pos = 0
    while pos + FRAME_HEADER_BYTES <= len(view):
        size = int.from_bytes(view[pos : pos + 4], "little")
        if size < FRAME_HEADER_BYTES or pos + size > len(view):
            raise ValueError(f"bad frame size {size} at {pos}")
        yield view[pos : pos + size]
        pos += size


@dataclass
class _Delivered:
    """What consumers were served at a queue offset (to report a later loss as such)."""

    msg_id: str
    by: str


@dataclass
class QueueModel:
    """The committed history: Raft entry terms and per-queue message ids."""

    terms: list[int] = field(default_factory=lambda: [0])  # terms[i] = term of entry i
    queues: dict[QueueKey, list[str]] = field(default_factory=dict)
    # Per queue offset: the store timestamp of its message (the leader's clock) and
    # the Raft index of the entry that holds it.
    stamps: dict[QueueKey, list[int]] = field(default_factory=dict)
    indexes: dict[QueueKey, list[int]] = field(default_factory=dict)
    where: dict[str, tuple[QueueKey, int]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # msg id -> its tags
    # Consumer offsets: (group, topic, queue) -> committed offset, and every offset
    # ever committed there; (group, topic) -> generation.
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    offset_history: dict[tuple[str, str, int], set[int]] = field(default_factory=dict)
    generations: dict[tuple[str, str], int] = field(default_factory=dict)
    # (group, topic) -> generation -> (Raft index, offsets) of the reset that made it
    resets: dict[tuple[str, str], dict[int, tuple[int, list[list[int]]]]] = field(
        default_factory=dict
    )
    producers: dict[str, int] = field(default_factory=dict)

    @property
    def committed(self) -> int:
        return len(self.terms) - 1

    def length_at(self, key: QueueKey, index: int) -> int:
        """How many messages of the queue entries up to `index` hold."""
        return bisect_right(self.indexes.get(key, []), index)

    def apply(self, index: int, term: int, kind: EntryKind, data: bytes) -> None:
        assert index == len(self.terms)
        self.terms.append(term)
        if kind is EntryKind.NOOP or not data:
            return
        store = True
        for frame in message_frames(data):
            magic = int.from_bytes(frame[4:8], "little")
            if magic == MAGIC_COMMAND:
                try:
                    command = decode_command(frame)
                except CommandError:
                    store = False
                    continue
                store = True
                if isinstance(command, OffsetCommand | ResetCommand):
                    self._apply_offsets(index, command)
                elif isinstance(command, SendCommand) and command.producer_id is not None:
                    assert command.seq is not None
                    last = self.producers.get(command.producer_id)
                    if last is not None and command.seq <= last:
                        store = False
                    else:
                        self.producers[command.producer_id] = command.seq
            elif magic == MAGIC_MESSAGE and store:
                head = decode_message_header(frame, verify_crc=False)
                key = (head.topic, head.queue_id)
                queue = self.queues.setdefault(key, [])
                if head.msg_id in self.where:
                    (topic, qid), offset = self.where[head.msg_id]
                    raise Violation(
                        "no_duplicate",
                        f"message {head.msg_id} committed twice: {topic}/{qid}@{offset} and "
                        f"{head.topic}/{head.queue_id}@{len(queue)} (entry {index})",
                    )
                self.where[head.msg_id] = (key, len(queue))
                self.tags[head.msg_id] = head.tags
                queue.append(head.msg_id)
                self.stamps.setdefault(key, []).append(head.store_timestamp_ms)
                self.indexes.setdefault(key, []).append(index)

    def _apply_offsets(self, index: int, command: OffsetCommand | ResetCommand) -> None:
        group = command.group
        if isinstance(command, ResetCommand):
            key = (group, command.topic)
            generation = self.generations.get(key, 0) + 1
            self.generations[key] = generation
            offsets = [[q, o] for q, o in command.offsets]
            self.resets.setdefault(key, {})[generation] = (index, offsets)
            pairs = [(command.topic, q, o) for q, o in command.offsets]
        else:
            pairs = [
                (e.topic, e.queue_id, e.offset)
                for e in command.entries
                if e.generation == self.generations.get((group, e.topic), 0)
            ]
        for topic, queue_id, offset in pairs:
            self.offsets[(group, topic, queue_id)] = offset
            self.offset_history.setdefault((group, topic, queue_id), set()).add(offset)


@dataclass(frozen=True, slots=True)
class _Sent:
    """A snapshot a node handed Raft to send, and where that node's queues began then."""

    sender: int
    at_ms: int
    log_min: int
    queue_mins: dict[QueueKey, int]


class QueueCheckers:
    def __init__(
        self, node_ids: tuple[int, ...], topic: str, retention_ms: int | None = None
    ) -> None:
        self.node_ids = node_ids
        self.topic = topic
        self.retention_ms = retention_ms
        self.model = QueueModel()
        self.hosts: dict[int, BrokerHost] = {}
        """Every node, for reading entries another node compacted (set by the run)."""
        # (node, queue) -> the queue's min offset on the node, as last checked: below
        # it, the node's messages are gone, each for a reason that was checked.
        self._floor: dict[tuple[int, QueueKey], int] = {}
        # (sender, snapshot index, term) -> the first time it was sent
        self._sent: dict[tuple[int, int, int], _Sent] = {}
        self.expired = 0
        self.lost_to_installs = 0
        self.installs_checked = 0
        # Per node: the committed index up to which its log terms were compared.
        self._verified: dict[int, int] = {n: 0 for n in node_ids}
        self.delivered: dict[tuple[QueueKey, int], _Delivered] = {}
        self.acked: dict[tuple[QueueKey, int], str] = {}
        self.acks = 0
        self.deliveries = 0
        self.scans = 0
        self.offsets_acked = 0
        # The end also reads every queue from every node with this tag filter.
        self.final_tags: frozenset[str] = frozenset()
        # (node, queue) -> ConsumeQueue units already compared since the node started
        self._scanned: dict[tuple[int, QueueKey], int] = {}
        # (group, topic) -> the highest generation an acknowledged reset gave it, and
        # reply id -> (group, topic, that generation when the query was sent)
        self._reset_floor: dict[tuple[str, str], int] = {}
        self._queries: dict[int, tuple[str, str, int]] = {}
        self.resets_acked = 0

    # -- the model

    def catch_up(self, host: BrokerHost) -> None:
        """Extend the model with what `host` has committed, and compare its committed
        prefix with the model's (one term lookup per new committed index)."""
        core = host.core
        if core is None:
            return
        raft = core.raft
        commit = raft.commit_index
        model = self.model
        log = core.log
        if commit > model.committed:
            if log.last_index() < commit:
                raise Violation(
                    "log_matching",
                    f"n{host.id} has commit index {commit} but its log ends at {log.last_index()}",
                )
            self._extend(host, commit)
        verified = self._verified[host.id]
        if commit > verified:
            terms = model.terms
            # From the entry the log begins after (a compacted or installed snapshot's).
            for index in range(max(verified + 1, log.first_index() - 1), commit + 1):
                term = log.term_at(index)
                if term != terms[index]:
                    raise Violation(
                        "log_matching",
                        f"n{host.id} committed entry {index} of term {term}, but entry "
                        f"{index} was committed with term {terms[index]}",
                    )
            self._verified[host.id] = commit

    def _extend(self, host: BrokerHost, commit: int) -> None:
        """Apply the committed entries up to `commit` to the model, each read from a
        node that has committed it and still holds it (`host` first): retention may
        have compacted it away on some. If no node holds the next one any more, the
        model can no longer know what was committed there."""
        model = self.model
        others = [self.hosts[n] for n in self.node_ids if n != host.id and n in self.hosts]
        while model.committed < commit:
            lo = model.committed + 1
            source = None
            for candidate in (host, *others):
                core = candidate.core
                if core is None:
                    continue
                log = core.log
                if core.raft.commit_index >= lo and log.first_index() <= lo <= log.last_index():
                    source = core
                    break
            if source is None:
                raise Violation(
                    "log_matching",
                    f"n{host.id} committed entries up to {commit}, but no node holds entry "
                    f"{lo} any more: it was compacted everywhere before it could be read",
                )
            hi = min(commit, source.raft.commit_index, source.log.last_index())
            for entry in source.log.entries(lo, hi + 1, 1 << 62):
                model.apply(entry.index, entry.term, entry.kind, entry.data)

    def on_disk_replaced(self, host: BrokerHost) -> None:
        """The node starts on a new, empty disk (the `wipe` fault): what it held is gone
        for a known reason, so its queues may begin again wherever the leader's data lets
        them, and its log is compared from the start."""
        for key in [k for k in self._floor if k[0] == host.id]:
            del self._floor[key]
        for key in [k for k in self._scanned if k[0] == host.id]:
            del self._scanned[key]
        self._verified[host.id] = 0

    def on_restart(self, host: BrokerHost, installed: bool = False) -> None:
        """A restarted node: re-verify its whole committed prefix and its ConsumeQueues
        (recovery rebuilt them from a CommitLog that may have lost a torn tail). If it
        finished an interrupted snapshot install on the way up (`installed`), that is
        checked as an install; else its queues must begin where they did."""
        self._verified[host.id] = 0
        for key in self.model.queues:
            self._scanned.pop((host.id, key), None)
        self.catch_up(host)
        self.on_log_start(host, "install" if installed else "restart")
        self.scan(host)

    # -- retention and snapshot installs

    def on_snapshot_sent(self, host: BrokerHost, meta: SnapshotMeta) -> None:
        """`host`'s core handed Raft a snapshot to send: remember where its queues began
        (only the first time: they only move forward)."""
        core = host.core
        assert core is not None
        key = (host.id, meta.last_index, meta.last_term)
        if key in self._sent:
            return
        mins = {(q.topic, q.queue_id): q.min_offset for q in core.store.queues}
        self._sent[key] = _Sent(host.id, host.now_ms(), core.commit_log.min_offset, mins)

    def on_log_start(self, host: BrokerHost, cause: str) -> None:
        """Where `host`'s log begins moved (or may have, on a restart), because of
        `cause`: "retention", "install", "restart" (nothing may move then) or "scan"
        (nothing may have moved unseen)."""
        core = host.core
        assert core is not None
        self.catch_up(host)
        sent: _Sent | None = None
        index = core.log.first_index() - 1
        if cause == "install":
            sent = self._check_install(host, index)
        now = host.now_ms() + core.wall_offset_ms
        model = self.model
        for key, model_queue in sorted(model.queues.items()):
            queue = core.store.queues.get(*key)
            begins = 0 if queue is None else queue.min_offset
            floor = self._floor.get((host.id, key), 0)
            if begins <= floor:
                continue
            where = f"n{host.id}'s ConsumeQueue {key[0]}/{key[1]}"
            if begins > len(model_queue):
                raise Violation(
                    "committed_only",
                    f"{where} begins at {begins}, only {len(model_queue)} messages are committed",
                )
            if sent is not None:
                held = sent.queue_mins.get(key, 0)
                if begins > held:
                    raise Violation(
                        "retention",
                        f"{where} begins at {begins} after installing n{sent.sender}'s snapshot "
                        f"at entry {index} (commit offset {core.commit_log.min_offset}), so "
                        f"{model_queue[max(floor, held)]} at {max(floor, held)} is gone from it, "
                        f"but n{sent.sender} still held {key[0]}/{key[1]} from {held} (its "
                        f"CommitLog from {sent.log_min}) when it sent the snapshot",
                    )
                self.lost_to_installs += begins - floor
            elif cause == "retention":
                self._check_expired(host, where, key, floor, begins, now)
            else:
                raise Violation(
                    "retention",
                    f"{where} begins at {begins}, it began at {floor} (found on {cause}, "
                    f"neither retention nor a snapshot install moved it)",
                )
            self._floor[(host.id, key)] = begins

    def _check_install(self, host: BrokerHost, index: int) -> _Sent:
        """`host` installed the snapshot of entry `index`: a committed entry, sent by a
        leader, after which every queue continues exactly where the model says."""
        core = host.core
        assert core is not None
        self.installs_checked += 1
        model = self.model
        term = core.log.term_at(index)
        if index > model.committed:
            raise Violation(
                "committed_only",
                f"n{host.id} installed a snapshot of entry {index}, only {model.committed} "
                f"entries are committed",
            )
        if term != model.terms[index]:
            raise Violation(
                "log_matching",
                f"n{host.id} installed a snapshot of entry {index} term {term}, but entry "
                f"{index} was committed with term {model.terms[index]}",
            )
        for key in sorted(model.queues):
            queue = core.store.queues.get(*key)
            begins, ends = (0, 0) if queue is None else (queue.min_offset, queue.max_offset)
            want = model.length_at(key, index)
            if begins != want or ends != want:
                raise Violation(
                    "queue_order",
                    f"n{host.id} installed the snapshot of entry {index}: its ConsumeQueue "
                    f"{key[0]}/{key[1]} continues at {ends} (begins at {begins}), but entries "
                    f"up to {index} hold {want} messages of it",
                )
        leader = core.raft.leader_id
        sent = self._sent.get((leader, index, term)) if leader is not None else None
        if sent is None:
            # The chunks came from a leader that is no longer known as such: any node
            # that sent this snapshot.
            sent = next(
                (v for (_n, i, t), v in sorted(self._sent.items()) if (i, t) == (index, term)),
                None,
            )
        if sent is None:
            raise Violation(
                "retention",
                f"n{host.id} installed a snapshot of entry {index} term {term} no node sent",
            )
        return sent

    def _check_expired(
        self, host: BrokerHost, where: str, key: QueueKey, floor: int, begins: int, now: int
    ) -> None:
        """Retention on `host` deleted offsets [floor, begins) of a queue at `now` (the
        node's clock): each message must be retention_ms old by then."""
        retention = self.retention_ms
        stamps = self.model.stamps[key]
        for at in range(floor, begins):
            age = now - stamps[at]
            if retention is None or age < retention:
                raise Violation(
                    "retention",
                    f"{where} now begins at {begins}: retention deleted "
                    f"{self.model.queues[key][at]} at {at}, stored at {stamps[at]}, when it "
                    f"was {age} ms old by the node's clock (now {now}), retention_ms is "
                    f"{retention}",
                )
        self.expired += begins - floor

    def on_offset_illegal(
        self, consumer: str, host: BrokerHost, queue_id: int, offset: int, response: Frame
    ) -> None:
        """An OFFSET_ILLEGAL pull answer: a queue that begins past `offset` must have been
        seen deleting up to where the answer says it begins."""
        begins = response.fields.get("min_offset")
        if not isinstance(begins, int) or begins <= offset:
            return
        key = (self.topic, queue_id)
        floor = self._floor.get((host.id, key), 0)
        if begins > floor:
            raise Violation(
                "retention",
                f"n{host.id} told {consumer} that {key[0]}/{key[1]} begins at {begins} "
                f"(asked for {offset}), but it was only seen deleting up to {floor}",
            )

    # -- observations

    def on_ack(
        self, producer: str, seq: int, queue_id: int, msg_ids: list[str], result: Frame
    ) -> None:
        """An OK SendResult for a batch of `msg_ids` sent to `queue_id`."""
        self.acks += 1
        f = result.fields
        got_ids = f.get("msg_ids") or []
        offset = f.get("queue_offset", -1)
        key = (self.topic, queue_id)
        queue = self.model.queues.get(key, [])
        if got_ids and list(got_ids) != msg_ids:
            raise Violation(
                "acked_durable",
                f"{producer}:s{seq} acked with message ids {got_ids}, sent {msg_ids}",
            )
        if not isinstance(offset, int) or offset < 0:
            # A duplicate whose original result is no longer known: the messages must
            # be stored somewhere all the same.
            for msg_id in msg_ids:
                if msg_id not in self.model.where:
                    raise Violation(
                        "acked_durable",
                        f"{producer}:s{seq} acked (duplicate, no offset) but {msg_id} is not "
                        f"in any committed entry",
                    )
            return
        for k, msg_id in enumerate(msg_ids):
            at = offset + k
            held = queue[at] if at < len(queue) else None
            if held != msg_id:
                raise Violation(
                    "acked_durable",
                    f"{producer}:s{seq} acked {msg_id} at {self.topic}/{queue_id}@{at}, but the "
                    f"committed log holds {held or 'nothing'} there",
                )
            self.acked[(key, at)] = f"{producer}:s{seq}"

    def on_pull(
        self,
        consumer: str,
        host: BrokerHost,
        queue_id: int,
        offset: int,
        response: Frame,
        tags: frozenset[str] | None = None,
    ) -> list[tuple[int, str]]:
        """A FOUND or NO_MATCHED_MSG pull response for `queue_id` from `offset`, by a
        consumer subscribed to `tags` (None: everything); returns (offset, msg id) of
        each message served, checked.

        Without a filter the offsets must be contiguous from `offset` and `next_offset`
        right after the last. With one, the node examined [offset, next_offset): the
        offsets served must lie there, ascending, and every committed message there
        that carries a subscribed tag must have been served."""
        f = response.fields
        offsets = list(f.get("queue_offsets") or [])
        frames = list(message_frames(response.body))
        key = (self.topic, queue_id)
        next_offset = f.get("next_offset")
        where = f"{consumer} pulled {self.topic}/{queue_id}@{offset} from n{host.id}"
        if len(frames) != len(offsets) or not isinstance(next_offset, int):
            raise Violation(
                "queue_order",
                f"{where}: {len(frames)} frames, {len(offsets)} queue offsets, next {next_offset}",
            )
        if tags is None:
            if not offsets or offsets != list(range(offset, offset + len(offsets))):
                raise Violation(
                    "queue_order", f"{where}: offsets {offsets} are not contiguous from it"
                )
            if next_offset != offsets[-1] + 1:
                raise Violation(
                    "queue_order", f"{where}: next_offset {next_offset} after {offsets[-1]}"
                )
        elif offsets != sorted(set(offsets)) or (
            offsets and not offset <= offsets[0] <= offsets[-1] < next_offset
        ):
            raise Violation(
                "queue_order", f"{where}: offsets {offsets} not ascending in [it, {next_offset})"
            )
        served: list[tuple[int, str]] = []
        for at, frame in zip(offsets, frames, strict=True):
            head = decode_message_header(frame, verify_crc=True)
            if (head.topic, head.queue_id) != key:
                raise Violation(
                    "queue_order", f"{where}: got a message of {head.topic}/{head.queue_id}"
                )
            served.append((at, head.msg_id))
        self.check_served(consumer, host.id, key, served)
        if tags is not None:
            self._check_skipped(where, key, offset, next_offset, offsets, tags)
        return served

    def _check_skipped(
        self,
        where: str,
        key: QueueKey,
        offset: int,
        next_offset: int,
        offsets: list[int],
        tags: frozenset[str],
    ) -> None:
        queue = self.model.queues.get(key, [])
        if next_offset > len(queue):
            raise Violation(
                "committed_only",
                f"{where}: examined up to {next_offset}, only {len(queue)} messages are committed",
            )
        served = set(offsets)
        model_tags = self.model.tags
        for at in range(offset, next_offset):
            if at in served or model_tags[queue[at]] not in tags:
                continue
            # A subscribed consumer never gets it from this node: for an acknowledged
            # message that is a lost acknowledged message.
            acked = self.acked.get((key, at))
            checker = "queue_order" if acked is None else "acked_durable"
            what = f"{where}: skipped {queue[at]} at {at}, which has a subscribed tag" + (
                "" if acked is None else f" (acknowledged to {acked})"
            )
            raise Violation(checker, what)

    def check_served(
        self, consumer: str, node_id: int, key: QueueKey, served: list[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        queue = self.model.queues.get(key, [])
        for at, msg_id in served:
            self.deliveries += 1
            if at >= len(queue):
                raise Violation(
                    "committed_only",
                    f"{consumer} was served {msg_id} at {key[0]}/{key[1]}@{at} by n{node_id}, "
                    f"but only {len(queue)} messages of that queue are committed",
                )
            if queue[at] != msg_id:
                raise Violation(
                    "queue_order",
                    f"{consumer} was served {msg_id} at {key[0]}/{key[1]}@{at} by n{node_id}, "
                    f"but {queue[at]} is committed there",
                )
            self.delivered.setdefault((key, at), _Delivered(msg_id, consumer))
        return served

    # -- consumer offsets

    def reset_floor(self, group: str, topic: str) -> int:
        """The generation of the latest acknowledged reset of (group, topic), 0 if none:
        a commit or query sent now is served after it was applied."""
        return self._reset_floor.get((group, topic), 0)

    def on_reset_acked(self, admin: str, group: str, topic: str, response: Frame) -> None:
        """An OK RESET_CONSUMER_OFFSET: a committed reset made that generation with those
        offsets; commits and queries sent from now on must see it (`offset_generation`)."""
        generation = response.fields.get("generation")
        offsets = response.fields.get("offsets")
        made = self.model.resets.get((group, topic), {}).get(generation)  # type: ignore[arg-type]
        if made is None or made[1] != offsets:
            raise Violation(
                "acked_durable",
                f"{admin}'s reset of {group}/{topic} was acknowledged as generation "
                f"{generation} with offsets {offsets}, but the committed resets made "
                f"{ {g: o for g, (_i, o) in self.model.resets.get((group, topic), {}).items()} }",
            )
        assert isinstance(generation, int)
        key = (group, topic)
        self._reset_floor[key] = max(self._reset_floor.get(key, 0), generation)
        self.resets_acked += 1

    def expect_query(self, reply_id: int, group: str, topic: str) -> None:
        """A QUERY_CONSUMER_OFFSET is sent now: checked when a node answers it."""
        self._queries[reply_id] = (group, topic, self.reset_floor(group, topic))

    def on_reply(self, host: BrokerHost, reply_id: int, response: Frame) -> None:
        """A node answers a request (before the answer travels). A query sent after a
        reset of generation G was acknowledged, answered by a node that has applied the
        reset's entry, must report a generation >= G."""
        query = self._queries.pop(reply_id, None)
        if query is None or not response.ok or host.core is None:
            return
        group, topic, floor = query
        generation = response.fields.get("generation")
        if not isinstance(generation, int) or generation >= floor:
            return
        index, _offsets = self.model.resets[(group, topic)][floor]
        applied = host.core.applied_index
        if applied >= index:
            raise Violation(
                "offset_generation",
                f"n{host.id} (applied {applied}) answered a query of {group}/{topic} with "
                f"generation {generation}, but the reset to generation {floor} (entry "
                f"{index}) was acknowledged before the query was sent",
            )

    def on_offsets_acked(
        self,
        consumer: str,
        group: str,
        offsets: list[list[Any]],
        response: Frame,
        floor: int = 0,
    ) -> None:
        """An OK UPDATE_CONSUMER_OFFSET: every entry not reported stale is committed;
        an entry older than `floor` (the acknowledged reset generation when the commit
        was sent, so applied after the reset) must have been reported stale."""
        stale = {(t, q) for t, q in response.fields.get("stale") or []}
        for topic, queue_id, offset, generation in offsets:
            if (topic, queue_id) in stale:
                continue
            if generation < floor:
                raise Violation(
                    "offset_generation",
                    f"{consumer}'s offset commit {group} {topic}/{queue_id}={offset} of "
                    f"generation {generation} was applied, not reported stale, though a "
                    f"reset to generation {floor} was acknowledged before it was sent",
                )
            if offset not in self.model.offset_history.get((group, topic, queue_id), ()):
                raise Violation(
                    "acked_durable",
                    f"{consumer}'s offset commit {group} {topic}/{queue_id}={offset} was "
                    f"acknowledged, but no committed entry holds it",
                )
            self.offsets_acked += 1

    def on_offsets_queried(
        self, consumer: str, host: BrokerHost, group: str, response: Frame
    ) -> dict[int, int]:
        """A QUERY_CONSUMER_OFFSET answer: each offset must be one the group committed."""
        got: dict[int, int] = {}
        for queue_id, offset in response.fields.get("offsets") or []:
            if offset not in self.model.offset_history.get((group, self.topic, queue_id), ()):
                raise Violation(
                    "committed_only",
                    f"n{host.id} told {consumer} that {group} committed {self.topic}/{queue_id}="
                    f"{offset}, an offset no committed entry holds",
                )
            got[queue_id] = offset
        return got

    # -- ConsumeQueue scans

    def scan(self, host: BrokerHost) -> None:
        """Compare `host`'s ConsumeQueues with the model: from each queue's min offset
        (below it, retention or an install removed them: checked when it happened, so
        a min offset that moved unseen fails here), a prefix of the model.

        Incremental while the node is up (a unit is never rewritten, so only units
        past those already compared are read; a queue that got shorter fails); a
        restart resets it, so what recovery rebuilt is read in full."""
        core = host.core
        if core is None:
            return
        self.scans += 1
        self.on_log_start(host, "scan")
        for key, model_queue in sorted(self.model.queues.items()):
            where = f"n{host.id}'s ConsumeQueue {key[0]}/{key[1]}"
            checked = self._scanned.get((host.id, key), 0)
            queue = core.store.queues.get(*key)
            end = 0 if queue is None else queue.max_offset
            if end < checked:
                raise Violation(
                    "committed_only",
                    f"{where} shrank from {checked} to {end} units while the node was up",
                )
            if end > len(model_queue):
                raise Violation(
                    "committed_only",
                    f"{where} holds {end} messages, only {len(model_queue)} are committed",
                )
            start = checked if queue is None else max(checked, queue.min_offset)
            for at, msg_id in enumerate(self.queue_ids(host, *key, start=start), start):
                if msg_id != model_queue[at]:
                    raise Violation(
                        "queue_order",
                        f"{where} holds {msg_id} at {at}, {model_queue[at]} is committed there",
                    )
            self._scanned[(host.id, key)] = end

    @staticmethod
    def queue_ids(host: BrokerHost, topic: str, queue_id: int, start: int = 0) -> list[str]:
        """The message ids of a node's ConsumeQueue from `start`, read through the
        CommitLog (CRC checked)."""
        core = host.core
        assert core is not None
        queue = core.store.queues.get(topic, queue_id)
        if queue is None:
            return []
        start = max(start, queue.min_offset)
        ids: list[str] = []
        for unit in queue.get_range(start, queue.max_offset - start):
            frame, _ = core.commit_log.frame_at(unit.commit_offset, verify_crc=True)
            ids.append(decode_message_header(frame, verify_crc=False).msg_id)
        return ids

    # -- the end

    def check_final(self, hosts: list[BrokerHost]) -> None:
        """After the heal: every node serves exactly the model from its min offset on
        through PULL_MESSAGE, then every node holds the same ConsumeQueue units (commit
        offset, size, tag hash) from the highest min offset on, up to the same end. The
        first comparison runs on every node before the second, so a lost message is
        reported as such, not as a replica difference."""
        for host in hosts:
            self.catch_up(host)
            self.on_log_start(host, "the final check")
        for host in hosts:
            for key, model_queue in sorted(self.model.queues.items()):
                first, served = self._pull_all(host, key)
                self._compare_final(host, key, model_queue, first, served)
                if self.final_tags:
                    self._pull_filtered(host, key, self.final_tags)
        for host in hosts:
            self._compare_offsets(host)
        for key in sorted(self.model.queues):
            units = {host.id: self._units(host, key) for host in hosts}
            begins = max(lo for lo, _ in units.values())
            ref: tuple[int, int, list[tuple[int, int, int]]] | None = None
            for node, (lo, got) in units.items():
                end, held = lo + len(got), got[begins - lo :]
                if ref is None:
                    ref = (node, end, held)
                elif end != ref[1]:
                    raise Violation(
                        "replicas_identical",
                        f"ConsumeQueue {key[0]}/{key[1]} ends at {end} on n{node} and at "
                        f"{ref[1]} on n{ref[0]}",
                    )
                else:
                    for at, (a, b) in enumerate(zip(ref[2], held, strict=True), begins):
                        if a != b:
                            raise Violation(
                                "replicas_identical",
                                f"ConsumeQueue {key[0]}/{key[1]} unit {at} (commit offset, "
                                f"size, tag hash) is {a} on n{ref[0]} and {b} on n{node}",
                            )

    @staticmethod
    def _units(host: BrokerHost, key: QueueKey) -> tuple[int, list[tuple[int, int, int]]]:
        """The queue's min offset on `host`, and its units from there."""
        core = host.core
        assert core is not None
        queue = core.store.queues.get(*key)
        if queue is None:
            return 0, []
        lo = queue.min_offset
        return lo, [
            (u.commit_offset, u.size, u.tag_hash)
            for u in queue.get_range(lo, queue.max_offset - lo)
        ]

    def _compare_final(
        self,
        host: BrokerHost,
        key: QueueKey,
        model_queue: list[str],
        first: int,
        served: list[str],
    ) -> None:
        floor = self._floor.get((host.id, key), 0)
        if first != floor:
            raise Violation(
                "retention",
                f"n{host.id} serves {key[0]}/{key[1]} from {first}, but its min offset was "
                f"last seen at {floor}",
            )
        for at in range(first, max(len(model_queue), first + len(served))):
            want = model_queue[at] if at < len(model_queue) else None
            got = served[at - first] if at - first < len(served) else None
            if want == got:
                continue
            where = f"n{host.id} serves {got or 'nothing'} at {key[0]}/{key[1]}@{at}"
            acked = self.acked.get((key, at))
            if acked is not None:
                raise Violation("acked_durable", f"{where}, where {acked} was acked with {want}")
            delivered = self.delivered.get((key, at))
            if delivered is not None:
                raise Violation(
                    "committed_only",
                    f"{where}, where {delivered.by} was served {delivered.msg_id}",
                )
            raise Violation(
                "replicas_identical", f"{where}, {want or 'nothing'} is committed there"
            )

    def _compare_offsets(self, host: BrokerHost) -> None:
        """Every node answers QUERY_CONSUMER_OFFSET with the committed offsets."""
        core = host.core
        assert core is not None
        for group in sorted({g for g, _t, _q in self.model.offsets}):
            frame = request(
                RequestCode.QUERY_CONSUMER_OFFSET, {"group": group, "topic": self.topic}
            )
            response = core.handle(frame, 0, host.now_ms())
            assert response is not None
            got = {q: o for q, o in response.fields.get("offsets") or []}
            want = {
                q: o
                for (g, t, q), o in self.model.offsets.items()
                if g == group and t == self.topic
            }
            if got != want:
                raise Violation(
                    "replicas_identical",
                    f"n{host.id} answers {group}'s offsets {got}, the committed ones are {want}",
                )

    def _pull_filtered(self, host: BrokerHost, key: QueueKey, tags: frozenset[str]) -> None:
        """Read a queue from a node as a consumer subscribed to `tags` would, from the
        start (moved to the min offset by OFFSET_ILLEGAL): every committed message with
        one of the tags must be served."""
        core = host.core
        assert core is not None
        hashes = sorted(tag_hash(t) for t in tags)
        offset = 0
        for _ in range(1 << 20):
            frame = request(
                RequestCode.PULL_MESSAGE,
                {
                    "topic": key[0],
                    "queue_id": key[1],
                    "offset": offset,
                    "max_count": 256,
                    "tag_hashes": hashes,
                },
            )
            response = core.handle(frame, 0, host.now_ms())
            assert response is not None
            status = response.fields.get("status")
            if status == "OFFSET_ILLEGAL" and response.fields.get("min_offset", 0) > offset:
                self.on_offset_illegal("a final filtered read", host, key[1], offset, response)
                offset = response.fields["next_offset"]
                continue
            if status not in ("FOUND", "NO_MATCHED_MSG"):
                break
            self.on_pull("a final filtered read", host, key[1], offset, response, tags)
            offset = response.fields["next_offset"]

    def _pull_all(self, host: BrokerHost, key: QueueKey) -> tuple[int, list[str]]:
        """The queue offset a node serves a queue from (OFFSET_ILLEGAL moves a read at 0
        there), and the message ids it serves from there."""
        core = host.core
        assert core is not None
        ids: list[str] = []
        offset = first = 0
        for _ in range(1 << 20):
            frame = request(
                RequestCode.PULL_MESSAGE,
                {"topic": key[0], "queue_id": key[1], "offset": offset, "max_count": 256},
            )
            response = core.handle(frame, 0, host.now_ms())
            assert response is not None
            status = response.fields.get("status")
            if (
                status == "OFFSET_ILLEGAL"
                and not ids
                and response.fields.get("min_offset", 0) > offset
            ):
                self.on_offset_illegal("a final read", host, key[1], offset, response)
                offset = first = response.fields["next_offset"]
                continue
            if status != "FOUND":
                break
            for msg in message_frames(response.body):
                ids.append(decode_message_header(msg, verify_crc=True).msg_id)
            offset = response.fields["next_offset"]
        return first, ids
