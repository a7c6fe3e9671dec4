"""Idempotent producers against a 3-node group under seeded faults (crashes with torn
writes, restarts, partitions): every batch ends up stored exactly once, every
acknowledged result points at its own messages, and the replicas are identical."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from mq.protocol import ErrorCode
from storage.record import decode_message_header
from tests.mq.broker_cluster import CoreCluster, send_request

PRODUCERS = ("p1", "p2", "p3")
RETRY_AFTER_TICKS = 30


@dataclass
class Producer:
    pid: str
    queue_id: int
    seq: int = 0
    outstanding: tuple[int, int, int] | None = None  # (reply id, node, sent at tick)
    sent: bool = False  # `seq` was sent at least once and is not acknowledged yet
    acked: dict[int, dict[str, object]] = field(default_factory=dict)
    copies: list[tuple[int, int]] = field(default_factory=list)  # (seq, reply id) of eager retries

    def body(self, seq: int) -> bytes:
        return f"{self.pid}:{seq}".encode()


def target(cluster: CoreCluster, rng: random.Random) -> int | None:
    leader = cluster.leader()
    if leader is not None and rng.random() < 0.9:
        return leader
    up = list(cluster.cores)
    return rng.choice(up) if up else None


def drive(
    cluster: CoreCluster, producer: Producer, rng: random.Random, tick: int, *, finishing: bool
) -> None:
    """Collect the outstanding reply, then (re)send: a retry reuses the seq. When
    `finishing`, only a batch already sent is retried; no new one starts."""
    if producer.outstanding is not None:
        reply_id, node, sent = producer.outstanding
        response = cluster.reply(reply_id)
        if response is None:
            if node in cluster.cores and tick - sent < RETRY_AFTER_TICKS:
                return  # still waiting
        elif response.ok:
            assert producer.seq not in producer.acked
            producer.acked[producer.seq] = dict(response.fields)
            producer.seq += 1
            producer.sent = False
        else:
            assert response.error in (
                ErrorCode.NOT_LEADER,
                ErrorCode.REPLICATION_TIMEOUT,
                ErrorCode.SYSTEM_BUSY,
            ), response.remark
        producer.outstanding = None
    if finishing and not producer.sent:
        return
    node = target(cluster, rng)
    if node is None:
        return
    frame = send_request(
        "t",
        [producer.body(producer.seq)],
        queue_id=producer.queue_id,
        producer_id=producer.pid,
        seq=producer.seq,
        prefix=f"{producer.pid}-{producer.seq}-",
    )
    producer.outstanding = (cluster.call(node, frame), node, tick)
    producer.sent = True
    if rng.random() < 0.3:
        # An eager retry while the first copy is in flight: both may reach the log.
        producer.copies.append((producer.seq, cluster.call(node, frame)))


def queue_bodies(cluster: CoreCluster, node: int, queue_id: int) -> list[bytes]:
    queue = cluster.cores[node].store.queues.get("t", queue_id)
    if queue is None:
        return []
    out = []
    for unit in queue.get_range(0, 10_000):
        frame, _ = cluster.cores[node].commit_log.frame_at(unit.commit_offset)
        head = decode_message_header(frame)
        out.append(bytes(frame[head.body_span[0] : head.body_span[1]]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_idempotent_producers_store_every_batch_once_under_faults(seed: int) -> None:
    rng = random.Random(seed)
    cluster = CoreCluster(seed=seed, send_timeout_ms=400)
    producers = [Producer(pid, i % 2) for i, pid in enumerate(PRODUCERS)]
    down: int | None = None
    faults = 0
    for tick in range(600):
        for producer in producers:
            drive(cluster, producer, rng, tick, finishing=False)
        cluster.tick()
        roll = rng.random()
        if roll < 0.01 and down is None:
            down = rng.choice(cluster.ids)
            cluster.crash(down)
            faults += 1
        elif roll < 0.03 and down is not None:
            cluster.start(down)
            down = None
        elif roll < 0.04:
            cluster.isolate(rng.choice(cluster.ids))
            faults += 1
        elif roll < 0.07:
            cluster.heal()
    # Heal everything and let every producer finish the batch it has in flight.
    cluster.heal()
    if down is not None:
        cluster.start(down)
    for tick in range(600, 3000):
        if not any(p.sent for p in producers):
            break
        for producer in producers:
            drive(cluster, producer, rng, tick, finishing=True)
        cluster.tick()
    assert not any(p.sent for p in producers), "every batch was acknowledged in the end"
    cluster.elect()
    cluster.settle(20)

    assert faults >= 3, "the schedule injected faults"
    assert sum(len(p.acked) for p in producers) > 20, "the run made progress"
    contents = {node: [queue_bodies(cluster, node, q) for q in (0, 1)] for node in cluster.ids}
    assert contents[1] == contents[2] == contents[3], "replicas hold the same queues"
    for producer in producers:
        stored = [
            b for b in contents[1][producer.queue_id] if b.startswith(f"{producer.pid}:".encode())
        ]
        acked_bodies = [producer.body(s) for s in sorted(producer.acked)]
        assert stored == acked_bodies, "every batch exactly once, in order"
        for seq, reply_id in producer.copies:
            copy = cluster.reply(reply_id)
            if copy is not None and copy.ok:
                assert seq in producer.acked
                assert copy.fields["queue_offset"] == producer.acked[seq]["queue_offset"]
        for seq, result in producer.acked.items():
            offset = result["queue_offset"]
            assert isinstance(offset, int)
            assert contents[1][producer.queue_id][offset] == producer.body(seq), (seq, result)
