"""The clients of `mq sim broker`: idempotent producers and a consumer group.

Producers (`p1`, `p2`, ...) each send batches of 1-4 messages to a random queue of the
topic, one batch at a time, as SEND_BATCH frames with their `producer_id` and a `seq`
that grows by one per batch. A batch is retried with the *same* seq until it is
acknowledged: on a timeout (to another node), on NOT_LEADER (to the leader the
response names, else to another node), on REPLICATION_TIMEOUT / SYSTEM_BUSY /
SERVICE_NOT_AVAILABLE (after a short backoff). That is the contract of
docs/broker-api.md: a batch with a higher seq never overtakes one still to be stored.
Message ids are chosen by the producer (`p1s42m0`), so a retry carries the same ids
and a duplicate is visible as one id stored twice.

Consumers (`c1`, `c2`, ...) form one group; queue q belongs to consumer q mod N. Each
queue is pulled in a loop from a random node, leader or follower (followers serve
committed data), from the consumer's position; half the pulls long-poll. Every other
consumer subscribes to two of the three tags and its pulls carry their tag hashes, so
the broker filters by the ConsumeQueue units' tag hashes. Every response is handed to
the checkers. Positions are committed through the broker every 300 ms
(UPDATE_CONSUMER_OFFSET to the leader, replicated through the log), and now and then a
consumer restarts: it forgets everything and resumes from the offsets QUERY_CONSUMER_OFFSET
returns (from the leader it knows, a third of the time from any node: followers may
lag). Messages after those offsets are served again and must be the same messages; a
queried offset must be one the group committed. A pull below a queue's min offset
(retention deleted it) answers OFFSET_ILLEGAL with the min offset: the consumer goes on
from there, as a RocketMQ consumer does.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

from mq.protocol import ErrorCode, Frame, RequestCode, request
from sim.broker_cluster import BrokerCluster
from sim.checkers import Violation
from sim.events import NS_PER_MS
from sim.queue_checkers import QueueCheckers, message_frames
from storage.record import MessageRecord, decode_message_header, encode_messages, tag_hash

TOPIC = "SimTopic"
GROUP = "SimGroup"
TAGS = ("t0", "t1", "t2")
# Consumer i subscribes to SUBSCRIPTIONS[i % 2]: everything, or two of the three tags
# (its pulls carry tag hashes, so the ConsumeQueue's tag hashes decide what it gets).
SUBSCRIPTIONS: tuple[frozenset[str] | None, ...] = (frozenset({"t0", "t1"}), None)
HEARTBEAT_NS = 500 * NS_PER_MS
# Longer than a client link's worst latency twice over, so an UNREGISTER_CLIENT cannot
# overtake the consumer's last HEARTBEAT, nor a new HEARTBEAT overtake it.
UNREGISTER_DELAY_NS = 10 * NS_PER_MS
_RETRY_ERRORS = {
    ErrorCode.REPLICATION_TIMEOUT,
    ErrorCode.SYSTEM_BUSY,
    ErrorCode.SERVICE_NOT_AVAILABLE,
    ErrorCode.SYSTEM_ERROR,
}


def _leader_hint(cluster: BrokerCluster, frame: Frame) -> int | None:
    """The node a NOT_LEADER answer names as leader, if it names one we know."""
    leader = frame.fields.get("leader")
    return cluster.address_to_id.get(leader) if isinstance(leader, str) else None


def _other_node(rng: random.Random, cluster: BrokerCluster, node: int) -> int:
    """Another node of the group to try, at random (`node` itself if it is the only one)."""
    others = [n for n in cluster.node_ids if n != node]
    return rng.choice(others) if others else node


class ReplyIds:
    """Reply ids unique within a run (the cluster routes responses by them)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def __call__(self) -> int:
        return next(self._next)


class Producer:
    def __init__(
        self,
        name: str,
        cluster: BrokerCluster,
        checkers: QueueCheckers,
        rng: random.Random,
        reply_ids: ReplyIds,
        queues: int,
        think_mean_ns: int,
        timeout_ns: int = 1500 * NS_PER_MS,
        batches_max: int | None = None,
        fresh_seq_on_retry: bool = False,
        on_ack: Callable[[Frame], None] | None = None,
    ) -> None:
        self.name = name
        self._cluster = cluster
        self._checkers = checkers
        self._rng = rng
        self._ids = reply_ids
        self._queues = queues
        self._think_mean_ns = think_mean_ns
        self._timeout_ns = timeout_ns
        self._batches_max = batches_max
        self._fresh_seq_on_retry = fresh_seq_on_retry
        self._on_ack = on_ack
        self._trace = cluster.trace
        self._loop = cluster.loop
        self.seq = 0
        self.acked = 0
        self.attempts = 0
        self.stopped = False
        self._target = rng.choice(cluster.node_ids)
        self._attempt_id = 0
        self._batch: tuple[int, list[str], bytes] | None = None  # queue, ids, body
        self._tries = 0
        cluster.register_client(name, self._on_response)

    def start(self) -> None:
        self._loop.after(self._think(), self._next_batch)

    def stop(self) -> None:
        self.stopped = True

    def _think(self) -> int:
        return 1 + int(self._rng.expovariate(1.0) * self._think_mean_ns)

    def _next_batch(self, _: Any = None) -> None:
        if self.stopped or self._batch is not None:
            return
        if self._batches_max is not None and self.seq >= self._batches_max:
            return
        self.seq += 1
        rng = self._rng
        queue_id = rng.randrange(self._queues)
        count = rng.randint(1, 4)
        ids = [f"{self.name}s{self.seq}m{k}" for k in range(count)]
        records = [
            MessageRecord(
                TOPIC,
                rng.randbytes(rng.randrange(8, 96)),
                queue_id,
                tags=rng.choice(TAGS),
                keys=ids[k],
                msg_id=ids[k],
                born_timestamp_ms=self._loop.now_ns // NS_PER_MS,
            )
            for k in range(count)
        ]
        body, _sizes = encode_messages(records)
        self._batch = (queue_id, ids, bytes(body))
        self._tries = 0
        self._attempt()

    def _attempt(self, _: Any = None) -> None:
        batch = self._batch
        if batch is None or self.stopped:
            return
        if self._fresh_seq_on_retry and self._tries:
            self.seq += 1  # plant: a retry that is not recognised as one
        self._tries += 1
        self.attempts += 1
        queue_id, ids, body = batch
        fields = {
            "topic": TOPIC,
            "queue_id": queue_id,
            "count": len(ids),
            "producer_id": self.name,
            "seq": self.seq,
        }
        reply_id = self._ids()
        self._attempt_id = reply_id
        self._trace.emit(f"{self.name}:s{self.seq} try {self._tries} -> n{self._target}")
        self._cluster.send(
            self.name, self._target, reply_id, request(RequestCode.SEND_BATCH, fields, body)
        )
        self._loop.after(self._timeout_ns, self._timeout, reply_id)

    def _timeout(self, reply_id: int) -> None:
        if reply_id != self._attempt_id or self._batch is None:
            return
        self._trace.emit(f"{self.name}:s{self.seq} timeout at n{self._target}")
        self._target = self._other_node()
        self._attempt()

    def _other_node(self) -> int:
        return _other_node(self._rng, self._cluster, self._target)

    def _on_response(self, reply_id: int, frame: Frame) -> None:
        batch = self._batch
        current = reply_id == self._attempt_id and batch is not None
        if frame.ok:
            # Every acknowledgement is checked, a late one for an earlier attempt too.
            if batch is not None and (current or frame.fields.get("msg_ids") == batch[1]):
                self._checkers.on_ack(self.name, self.seq, batch[0], batch[1], frame)
            if not current:
                return
            f = frame.fields
            self._trace.emit(
                f"{self.name}:s{self.seq} ACK q{f.get('queue_id')}@{f.get('queue_offset')}"
                f"{' dup' if f.get('duplicate') else ''}"
            )
            self.acked += 1
            self._batch = None
            self._attempt_id = 0
            if self._on_ack is not None:
                self._on_ack(frame)
            self._loop.after(self._think(), self._next_batch)
            return
        if not current:
            return
        error = frame.error
        self._attempt_id = 0
        if error == ErrorCode.NOT_LEADER:
            leader_id = _leader_hint(self._cluster, frame)
            self._target = leader_id if leader_id is not None else self._other_node()
            delay = NS_PER_MS if leader_id is not None else 30 * NS_PER_MS
            self._trace.emit(f"{self.name}:s{self.seq} NOT_LEADER -> n{self._target}")
            self._loop.after(delay, self._attempt)
        elif error in _RETRY_ERRORS:
            self._trace.emit(f"{self.name}:s{self.seq} {ErrorCode(error).name}")
            self._loop.after(self._rng.randrange(10, 100) * NS_PER_MS, self._attempt)
        else:
            raise Violation(
                "workload",
                f"{self.name}:s{self.seq} refused with {error} ({frame.remark}): a well-formed "
                f"idempotent batch must be stored or retried",
            )


class Consumer:
    def __init__(
        self,
        name: str,
        cluster: BrokerCluster,
        checkers: QueueCheckers,
        rng: random.Random,
        reply_ids: ReplyIds,
        queue_ids: list[int],
        timeout_ns: int = 500 * NS_PER_MS,
        swap_served: bool = False,
        tags: frozenset[str] | None = None,
        ignore_resets: bool = False,
    ) -> None:
        self.name = name
        self._cluster = cluster
        self._checkers = checkers
        self._rng = rng
        self._ids = reply_ids
        self.queue_ids = queue_ids
        self._timeout_ns = timeout_ns
        self._swap_served = swap_served
        self.tags = tags
        self._tag_hashes = None if tags is None else sorted(tag_hash(t) for t in tags)
        self._trace = cluster.trace
        self._loop = cluster.loop
        self.position: dict[int, int] = {q: 0 for q in queue_ids}
        self._in_flight: dict[int, tuple[int, int, int]] = {}  # reply id -> queue, offset, node
        # reply id -> (what, node, gen, offsets sent, reset floor when sent) of an offset
        # commit or query
        self._ops: dict[int, tuple[str, int, int, list[list[Any]], int]] = {}
        # The group's offset generation as the consumer last read it (commits carry it).
        self.generation = 0
        self._ignore_resets = ignore_resets
        self.requeries = 0
        self._committing = False
        self._leader = rng.choice(cluster.node_ids)
        self._gen = 0
        self.served = 0
        self.skips = 0
        self.restarts = 0
        self.commits_acked = 0
        self.stopped = False
        self.retired = False
        self.notified = 0
        self.clean_stops = 0
        self._hb_gen = 0
        self._heartbeating = False
        cluster.register_client(name, self._on_response, self._on_notify)

    def start(self) -> None:
        """(Re)start: heartbeat the group, and ask the broker for the group's committed
        offsets first."""
        if not self._heartbeating:
            self._heartbeating = True
            self._heartbeat(self._hb_gen)
        self._query(self._gen)

    # -- membership

    def _heartbeat(self, hb_gen: int) -> None:
        if hb_gen != self._hb_gen or not self._heartbeating:
            return
        fields = {
            "group": GROUP,
            "client_id": self.name,
            "model": "clustering",
            "topics": [TOPIC],
            "consume_from": "first",
        }
        for node in self._cluster.node_ids:
            self._cluster.send(self.name, node, self._ids(), request(RequestCode.HEARTBEAT, fields))
        jitter = self._rng.randrange(-50, 50) * NS_PER_MS
        self._loop.after(HEARTBEAT_NS + jitter, self._heartbeat, hb_gen)

    def clean_stop(self, pause_ns: int | None) -> None:
        """Stop cleanly: no more pulls, commits or heartbeats, UNREGISTER_CLIENT from
        every node; start again after `pause_ns` (never if None)."""
        self._gen += 1
        self._hb_gen += 1
        self._heartbeating = False
        self._in_flight.clear()
        self._committing = False
        self.clean_stops += 1
        self._trace.emit(f"{self.name} stops cleanly")
        self._loop.after(UNREGISTER_DELAY_NS, self._unregister, self._hb_gen)
        if pause_ns is not None:
            self._loop.after(UNREGISTER_DELAY_NS + pause_ns, self._return, self._hb_gen)

    def _unregister(self, hb_gen: int) -> None:
        if hb_gen != self._hb_gen:
            return
        fields = {"group": GROUP, "client_id": self.name}
        for node in self._cluster.node_ids:
            self._cluster.send(
                self.name, node, self._ids(), request(RequestCode.UNREGISTER_CLIENT, fields)
            )

    def _return(self, hb_gen: int) -> None:
        if hb_gen != self._hb_gen or self.retired:
            return
        self.restarts += 1
        self._trace.emit(f"{self.name} starts again")
        self.start()

    def retire(self) -> None:
        """The consumer's last, clean stop (at the end of the workload)."""
        self.retired = True
        self.clean_stop(None)

    def _on_notify(self, node: int, frame: Frame) -> None:
        self.notified += 1
        self._trace.emit(f"{self.name} notified by n{node}: {frame.fields}")
        if frame.fields.get("reset_topic") == TOPIC and not self._ignore_resets:
            self._requery("reset")

    def _requery(self, why: str) -> None:
        """The group's offsets were reset: drop what is in flight and continue from the
        offsets (and generation) the broker now has."""
        if not self._heartbeating or self.stopped:
            return
        self._gen += 1
        self.requeries += 1
        self._in_flight.clear()
        self._committing = False
        self._trace.emit(f"{self.name} re-queries ({why})")
        self._query(self._gen)

    def stop(self) -> None:
        self.stopped = True

    # -- committed offsets, through the broker

    def _query(self, gen: int) -> None:
        if gen != self._gen or self.stopped:
            return
        # Prefer the leader (followers may lag), but ask any node a third of the time.
        node = self._leader
        if self._rng.random() < 1 / 3:
            node = self._rng.choice(self._cluster.node_ids)
        fields = {"group": GROUP, "topic": TOPIC}
        reply_id = self._send_op(
            "query", node, gen, [], request(RequestCode.QUERY_CONSUMER_OFFSET, fields)
        )
        self._checkers.expect_query(reply_id, GROUP, TOPIC)

    def _commit(self, gen: int) -> None:
        if gen != self._gen or self.stopped:
            return
        if not self._committing:
            self._committing = True
            offsets = [[TOPIC, q, self.position[q], self.generation] for q in self.queue_ids]
            frame = request(
                RequestCode.UPDATE_CONSUMER_OFFSET, {"group": GROUP, "offsets": offsets}
            )
            self._send_op("commit", self._leader, gen, offsets, frame)
        self._loop.after(300 * NS_PER_MS, self._commit, gen)

    def _send_op(
        self, what: str, node: int, gen: int, offsets: list[list[Any]], frame: Frame
    ) -> int:
        reply_id = self._ids()
        floor = self._checkers.reset_floor(GROUP, TOPIC)
        self._ops[reply_id] = (what, node, gen, offsets, floor)
        self._cluster.send(self.name, node, reply_id, frame)
        self._loop.after(self._timeout_ns, self._op_timeout, reply_id)
        return reply_id

    def _op_timeout(self, reply_id: int) -> None:
        op = self._ops.pop(reply_id, None)
        if op is None:
            return
        what, node, gen, _, _ = op
        self._leader = self._other_node(node)
        if what == "commit":
            self._committing = False
        else:
            self._loop.after(NS_PER_MS, self._query, gen)

    def _other_node(self, node: int) -> int:
        return _other_node(self._rng, self._cluster, node)

    def _on_op(self, op: tuple[str, int, int, list[list[Any]], int], frame: Frame) -> None:
        what, node, gen, offsets, floor = op
        if frame.error == ErrorCode.NOT_LEADER:
            hint = _leader_hint(self._cluster, frame)
            self._leader = hint if hint is not None else self._other_node(node)
        if what == "commit":
            self._committing = False
            if frame.ok:
                self.commits_acked += 1
                self._checkers.on_offsets_acked(self.name, GROUP, offsets, frame, floor)
                if frame.fields.get("stale") and gen == self._gen and not self._ignore_resets:
                    self._requery("stale commit")
            return
        if gen != self._gen:
            return
        if not frame.ok:
            self._loop.after(self._rng.randrange(10, 50) * NS_PER_MS, self._query, gen)
            return
        host = self._cluster.hosts[node]
        committed = self._checkers.on_offsets_queried(self.name, host, GROUP, frame)
        self.position = {q: committed.get(q, 0) for q in self.queue_ids}
        if not self._ignore_resets:
            self.generation = frame.fields.get("generation", 0)
        self._trace.emit(
            f"{self.name} resumes from n{node}: "
            + " ".join(f"q{q}@{self.position[q]}" for q in self.queue_ids)
        )
        for q in self.queue_ids:
            self._loop.after(1 + self._rng.randrange(20 * NS_PER_MS), self._pull, (gen, q))
        self._loop.after(300 * NS_PER_MS, self._commit, gen)

    # -- pulls

    def _pull(self, item: tuple[int, int]) -> None:
        gen, q = item
        if gen != self._gen or self.stopped:
            return
        rng = self._rng
        node = rng.choice(self._cluster.node_ids)
        leader = self._cluster.leader()
        if leader is not None and rng.random() < 0.3:
            node = leader.id
        offset = self.position[q]
        fields: dict[str, Any] = {
            "topic": TOPIC,
            "queue_id": q,
            "offset": offset,
            "max_count": rng.choice((1, 4, 16)),
        }
        if rng.random() < 0.5:
            fields["suspend_ms"] = 200
        if self._tag_hashes is not None:
            fields["tag_hashes"] = self._tag_hashes
        reply_id = self._ids()
        self._in_flight[reply_id] = (q, offset, node)
        self._cluster.send(self.name, node, reply_id, request(RequestCode.PULL_MESSAGE, fields))
        self._loop.after(self._timeout_ns, self._timeout, (gen, reply_id))

    def _timeout(self, item: tuple[int, int]) -> None:
        gen, reply_id = item
        pending = self._in_flight.pop(reply_id, None)
        if pending is None or gen != self._gen:
            return
        self._trace.emit(f"{self.name} pull q{pending[0]}@{pending[1]} n{pending[2]} timeout")
        self._loop.after(NS_PER_MS, self._pull, (gen, pending[0]))

    def _on_response(self, reply_id: int, frame: Frame) -> None:
        op = self._ops.pop(reply_id, None)
        if op is not None:
            self._on_op(op, frame)
            return
        pending = self._in_flight.pop(reply_id, None)
        if pending is None:
            return
        q, offset, node = pending
        gen = self._gen
        status = frame.fields.get("status") if frame.ok else None
        if status == "FOUND" or (status == "NO_MATCHED_MSG" and self.tags is not None):
            served = self._served(node, q, offset, frame)
            self.served += len(served)
            next_offset = frame.fields["next_offset"]
            self._trace.emit(
                f"{self.name} got q{q}@{offset}..{next_offset - 1} from n{node} ({len(served)})"
            )
            if self.position[q] == offset:
                self.position[q] = next_offset
            delay = self._rng.randrange(1, 20) * NS_PER_MS
        elif status == "NO_NEW_MSG":
            delay = self._rng.randrange(20, 100) * NS_PER_MS
        elif status == "OFFSET_ILLEGAL" and frame.fields.get("min_offset", 0) > offset:
            # Retention deleted what we would read next: go on from the queue's start,
            # as a RocketMQ consumer does (checked: the node did delete up to there).
            host = self._cluster.hosts[node]
            self._checkers.on_offset_illegal(self.name, host, q, offset, frame)
            if self.position[q] == offset:
                self.position[q] = frame.fields["next_offset"]
                self.skips += 1
                self._trace.emit(
                    f"{self.name} q{q}@{offset} gone on n{node}, from {self.position[q]}"
                )
            delay = NS_PER_MS
        else:
            # OFFSET_ILLEGAL from a node behind us, or an error: try elsewhere soon.
            delay = self._rng.randrange(10, 50) * NS_PER_MS
        self._loop.after(delay, self._pull, (gen, q))

    def _served(self, node: int, q: int, offset: int, frame: Frame) -> list[tuple[int, str]]:
        if not self._swap_served:
            host = self._cluster.hosts[node]
            return self._checkers.on_pull(self.name, host, q, offset, frame, self.tags)
        # Plant: the consumer hands the checker its batch out of order.
        served = [
            (at, decode_message_header(m, verify_crc=True).msg_id)
            for at, m in zip(frame.fields["queue_offsets"], message_frames(frame.body), strict=True)
        ]
        if len(served) >= 2:
            served[0], served[1] = (served[0][0], served[1][1]), (served[1][0], served[0][1])
        return self._checkers.check_served(self.name, node, (TOPIC, q), served)

    def restart(self) -> None:
        """A consumer process restart: what it had in flight is forgotten, and it resumes
        from the offsets the broker has committed for the group. (A consumer that is
        away after a clean stop is left to come back by itself.)"""
        if not self._heartbeating:
            return
        self._gen += 1
        self.restarts += 1
        self._in_flight.clear()
        self._committing = False
        self._trace.emit(f"{self.name} restarts")
        self.start()


class Admin:
    """An operator who now and then resets the group's offsets of the topic to its first
    or last messages (RESET_CONSUMER_OFFSET), through whoever leads: retried like a
    producer's batch on NOT_LEADER, timeouts and transient errors. A retry after a
    timeout may reset twice (a reset is not idempotent); the checkers only rely on the
    generation each acknowledgement reports."""

    def __init__(
        self,
        cluster: BrokerCluster,
        checkers: QueueCheckers,
        rng: random.Random,
        reply_ids: ReplyIds,
        gap_mean_ns: int = 4000 * NS_PER_MS,
        timeout_ns: int = 1500 * NS_PER_MS,
    ) -> None:
        self.name = "admin"
        self._cluster = cluster
        self._checkers = checkers
        self._rng = rng
        self._ids = reply_ids
        self._gap_mean_ns = gap_mean_ns
        self._timeout_ns = timeout_ns
        self._trace = cluster.trace
        self._loop = cluster.loop
        self._target = rng.choice(cluster.node_ids)
        self._to: str | None = None  # the reset under way
        self._attempt_id = 0
        self.stopped = False
        self.acked = 0
        cluster.register_client(self.name, self._on_response)

    def start(self) -> None:
        self._loop.after(self._gap(), self._next)

    def stop(self) -> None:
        self.stopped = True

    def _gap(self) -> int:
        return 1 + int(self._rng.expovariate(1.0) * self._gap_mean_ns)

    def _next(self, _: Any = None) -> None:
        if self.stopped or self._to is not None:
            return
        self._to = self._rng.choice(("first", "last"))
        self._attempt()

    def _attempt(self, _: Any = None) -> None:
        if self._to is None or self.stopped:
            return
        reply_id = self._ids()
        self._attempt_id = reply_id
        self._trace.emit(f"admin reset to {self._to} -> n{self._target}")
        fields = {"group": GROUP, "topic": TOPIC, "to": self._to}
        self._cluster.send(
            self.name, self._target, reply_id, request(RequestCode.RESET_CONSUMER_OFFSET, fields)
        )
        self._loop.after(self._timeout_ns, self._timeout, reply_id)

    def _timeout(self, reply_id: int) -> None:
        if reply_id != self._attempt_id or self._to is None:
            return
        self._target = _other_node(self._rng, self._cluster, self._target)
        self._attempt()

    def _on_response(self, reply_id: int, frame: Frame) -> None:
        if frame.ok:
            # Every acknowledgement is checked, a late one for an earlier attempt too.
            self._checkers.on_reset_acked(self.name, GROUP, TOPIC, frame)
        if reply_id != self._attempt_id or self._to is None:
            return
        self._attempt_id = 0
        if frame.ok:
            f = frame.fields
            self._trace.emit(f"admin reset ACK gen {f.get('generation')} {f.get('offsets')}")
            self.acked += 1
            self._to = None
            self._loop.after(self._gap(), self._next)
        elif frame.error == ErrorCode.NOT_LEADER:
            hint = _leader_hint(self._cluster, frame)
            if hint is not None:
                self._target = hint
            else:
                self._target = _other_node(self._rng, self._cluster, self._target)
            self._loop.after(NS_PER_MS if hint is not None else 30 * NS_PER_MS, self._attempt)
        elif frame.error in _RETRY_ERRORS or frame.error == ErrorCode.TOPIC_NOT_EXIST:
            # TOPIC_NOT_EXIST: no send has created the topic yet (or this node has not
            # applied it): try again later.
            self._loop.after(self._rng.randrange(10, 100) * NS_PER_MS, self._attempt)
        else:
            raise Violation(
                "workload",
                f"a reset of {GROUP}/{TOPIC} refused with {frame.error} ({frame.remark})",
            )


class BrokerWorkload:
    """The producers and consumers of one run, and the consumer restarts."""

    def __init__(
        self,
        cluster: BrokerCluster,
        checkers: QueueCheckers,
        rng: random.Random,
        producers: int,
        consumers: int,
        queues: int,
        think_ms: float,
        plant: str | None = None,
    ) -> None:
        self._cluster = cluster
        self._rng = rng
        self.reply_ids = ReplyIds()
        self.producers = [
            Producer(
                f"p{i}",
                cluster,
                checkers,
                random.Random(rng.getrandbits(64)),
                self.reply_ids,
                queues,
                int(think_ms * NS_PER_MS),
                fresh_seq_on_retry=plant == "fresh_seq_retry",
            )
            for i in range(1, producers + 1)
        ]
        self.consumers = [
            Consumer(
                f"c{i}",
                cluster,
                checkers,
                random.Random(rng.getrandbits(64)),
                self.reply_ids,
                [q for q in range(queues) if q % consumers == i - 1],
                swap_served=plant == "swap_served",
                tags=SUBSCRIPTIONS[(i - 1) % len(SUBSCRIPTIONS)],
                ignore_resets=plant == "stale_generation_applied",
            )
            for i in range(1, consumers + 1)
        ]
        self.admin = Admin(cluster, checkers, random.Random(rng.getrandbits(64)), self.reply_ids)
        self._stopped = False

    def start(self) -> None:
        for p in self.producers:
            p.start()
        for c in self.consumers:
            c.start()
        if self.consumers:
            self.admin.start()
            self._cluster.loop.after(self._restart_gap(), self._restart)

    def _restart_gap(self) -> int:
        return 1 + int(self._rng.expovariate(1.0) * 3000 * NS_PER_MS)

    def _restart(self, _: Any = None) -> None:
        if self._stopped:
            return
        consumer = self._rng.choice(self.consumers)
        if self._rng.random() < 1 / 3:
            consumer.clean_stop(self._rng.randrange(100, 1000) * NS_PER_MS)
        else:
            consumer.restart()
        self._cluster.loop.after(self._restart_gap(), self._restart)

    def stop(self) -> None:
        """No new batches, no more pulls (retries of a batch in flight continue); the
        consumers keep heartbeating, but the last of two or more stops cleanly."""
        self._stopped = True
        for p in self.producers:
            p.stop()
        for c in self.consumers:
            c.stop()
        self.admin.stop()
        if len(self.consumers) >= 2:
            self.consumers[-1].retire()

    def live_consumers(self) -> set[str]:
        """The consumers that have not stopped for good (every node must list them)."""
        return {c.name for c in self.consumers if not c.retired}
