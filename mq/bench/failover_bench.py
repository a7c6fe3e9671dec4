"""`mq bench failover`: kill -9 the leader under load, R rounds; nothing acknowledged lost.

A cluster is started for the run. A producer keeps `window` sends in flight the whole
time. Each round:

1. produce for a while (`--settle` seconds) with the group healthy;
2. kill -9 the leader (t0);
3. `election_ms`: until a surviving node reports itself leader of a newer term
   (GET_BROKER_STATUS polled every 20 ms);
4. `failover_ms`: until the first acknowledged write on the new leader — the first
   SendResult received after t0 of a send that either started after t0 or needed more
   than one attempt (a send that started before t0 and was answered at its first
   attempt was answered by the old leader before it died);
5. the killed node is restarted; `catchup_ms`: until its commit index reaches the
   leader's (read when the node answered again).

At the end the producer stops and every queue is read from the start: `acked_lost` is
the number of acknowledged message ids not found (must be 0), `duplicates` the number
of messages read more than once (same id; a retry after a lost answer that went to
another group could do it, with one group the broker's idempotence should prevent it).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter
from typing import Any

import trio

from mq import cluster as local
from mq.bench.local_cluster import running_cluster, statuses, wait_for_leader
from mq.bench.produce_bench import ERROR_PAUSE_S, bench_topic, create_topic
from mq.client import Message, MessageQueue, Producer, PullConsumer, SendResult

ROUNDS_DEFAULT = 3
WINDOW_DEFAULT = 8
SETTLE_S_DEFAULT = 2.0
ROUND_TIMEOUT_S = 30.0
POLL_S = 0.02


class _Load:
    """The producer: `window` senders; remembers every acknowledged id and ack times."""

    def __init__(self, topic: str, window: int, size: int) -> None:
        self.topic = topic
        self.window = window
        self.body = os.urandom(size)
        self.acked: set[str] = set()
        self.errors = 0
        self.kill_at: float | None = None
        self.first_new_ack: float | None = None
        self.first_ack_event = trio.Event()
        self.stop = False

    async def sender(self, producer: Producer) -> None:
        while not self.stop:
            began = time.perf_counter()
            try:
                result: SendResult = await producer.send(Message(self.topic, self.body))
            except Exception:
                self.errors += 1
                await trio.sleep(ERROR_PAUSE_S)
                continue
            now = time.perf_counter()
            self.acked.update(result.msg_ids)
            kill_at = self.kill_at
            if (
                kill_at is not None
                and self.first_new_ack is None
                and (began > kill_at or result.attempts > 1)
            ):
                self.first_new_ack = now
                self.first_ack_event.set()

    def arm(self, kill_at: float) -> None:
        self.kill_at = kill_at
        self.first_new_ack = None
        self.first_ack_event = trio.Event()


async def _election(spec: local.ClusterSpec, old_term: int, t0: float) -> tuple[float, str]:
    while True:
        for node in await statuses(spec, timeout_s=0.2):
            if node["role"] == "leader" and (node["term"] or 0) > old_term:
                return (time.perf_counter() - t0) * 1000, node["name"]
        await trio.sleep(POLL_S)


async def _catch_up(spec: local.ClusterSpec, name: str) -> float:
    """Restart `name`; ms until its commit index reaches the leader's."""
    proc = spec.process(name)
    t0 = time.perf_counter()
    local.start_process(proc)
    spec.save()
    target: int | None = None
    while True:
        nodes = {n["name"]: n for n in await statuses(spec, timeout_s=0.5)}
        node = nodes[name]
        if node["role"] in ("follower", "leader") and node.get("commit_index") is not None:
            if target is None:
                leaders = [n for n in nodes.values() if n["role"] == "leader"]
                if leaders:
                    target = leaders[0]["commit_index"]
            if target is not None and node["commit_index"] >= target:
                return (time.perf_counter() - t0) * 1000
        await trio.sleep(POLL_S * 5)


async def _read_everything(namesrv: list[str], topic: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    async with PullConsumer(namesrv=namesrv) as consumer:
        queues = await consumer.fetch_queues(topic)

        async def one(mq: MessageQueue) -> None:
            offset = await consumer.min_offset(mq)
            end = await consumer.max_offset(mq)
            while offset < end:
                result = await consumer.pull(mq, offset, max_count=256)
                for message in result.messages:
                    seen[message.msg_id] += 1
                if result.next_offset <= offset:
                    break
                offset = result.next_offset

        async with trio.open_nursery() as nursery:
            for mq in queues:
                nursery.start_soon(one, mq)
    return seen


async def run_async(
    *,
    directory: str | None,
    flush: str,
    rounds: int,
    window: int,
    size: int,
    settle_s: float,
    broker_args: list[str] | None = None,
) -> dict[str, Any]:
    topic = bench_topic("failover")
    per_round: list[dict[str, Any]] = []
    async with running_cluster(directory, flush=flush, broker_args=broker_args) as spec:
        namesrv = spec.nameservers
        await create_topic(namesrv, topic)
        load = _Load(topic, window, size)
        started = time.perf_counter()
        async with Producer(namesrv=namesrv) as producer, trio.open_nursery() as nursery:
            for _ in range(window):
                nursery.start_soon(load.sender, producer)
            for r in range(rounds):
                await trio.sleep(settle_s)
                leader = await wait_for_leader(spec, timeout_s=ROUND_TIMEOUT_S)
                proc = spec.process(leader["name"])
                acked_before = len(load.acked)
                t0 = time.perf_counter()
                load.arm(t0)
                os.kill(proc.pid, signal.SIGKILL)
                with trio.fail_after(ROUND_TIMEOUT_S):
                    election_ms, new_leader = await _election(spec, leader["term"] or 0, t0)
                    await load.first_ack_event.wait()
                assert load.first_new_ack is not None
                failover_ms = (load.first_new_ack - t0) * 1000
                while local.alive(proc.pid):  # reap it before restarting
                    await trio.sleep(POLL_S)
                with trio.fail_after(ROUND_TIMEOUT_S * 2):
                    catchup_ms = await _catch_up(spec, leader["name"])
                per_round.append(
                    {
                        "round": r + 1,
                        "killed": leader["name"],
                        "new_leader": new_leader,
                        "election_ms": round(election_ms, 1),
                        "failover_ms": round(failover_ms, 1),
                        "catchup_ms": round(catchup_ms, 1),
                        "acked_before_kill": acked_before,
                    }
                )
            await trio.sleep(settle_s)
            load.stop = True
        produce_s = time.perf_counter() - started
        seen = await _read_everything(namesrv, topic)
    failovers = [r["failover_ms"] for r in per_round]
    elections = [r["election_ms"] for r in per_round]
    lost = sum(1 for msg_id in load.acked if msg_id not in seen)
    return {
        "bench": "failover",
        "flush": flush,
        "rounds": rounds,
        "window": window,
        "failover_ms_median": round(statistics.median(failovers), 1) if failovers else None,
        "failover_ms_max": max(failovers) if failovers else None,
        "election_ms_median": round(statistics.median(elections), 1) if elections else None,
        "election_ms_max": max(elections) if elections else None,
        "acked": len(load.acked),
        "acked_lost": lost,
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "consumed": sum(seen.values()),
        "send_errors": load.errors,
        "produce_seconds": round(produce_s, 1),
        "per_round": per_round,
    }


def run(**kwargs: Any) -> dict[str, Any]:
    return trio.run(lambda: run_async(**kwargs))
