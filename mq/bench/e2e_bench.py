"""`mq bench e2e`: producer to push-consumer handler, on a 3-node broker group.

Three measurements in one run, so the ratio compares numbers taken minutes apart on the
same (noisy, shared) machine:

1. **produce** — `mq bench produce` with no consumer: acknowledged sends/s at `window`.
2. **light** — a PushConsumer in its own process (as an application would run it) is
   subscribed; the producer sends `rate` messages/s, paced, for `light_s` seconds,
   after `WARMUP_SENDS` unmeasured sends have made the route, the connections and the
   consumer's pulls ready (their set-up is a one-off, not the latency under load).
   Latency is from the `send` call to the handler's call: every body starts with the
   send's CLOCK_MONOTONIC time, which every process of the machine shares.
   `cpu_us_per_msg`: CPU each process spent per message over the phase (leader, mean
   follower, producer = this process, pacing included, consumer, total; brokers on
   this machine only), since on a shared 2-core machine queueing for the cores is
   most of the latency.
3. **load** — the producer sends as fast as `window` allows for `duration_s` while the
   consumer keeps up as it can. `delivered_msgs_s` = the phase's messages / (its first
   send to its last delivery); `ratio` = delivered_msgs_s / produce msgs_s (phase 1).

The consumer counts every phase's messages; the run waits for all of them (a message
missing after `drain_s` is reported as `lost`, which must stay 0; duplicates, possible
with at-least-once delivery, are counted apart).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from typing import Any

import trio

from mq.bench.cpu import CpuMeter, broker_pids
from mq.bench.histogram import Histogram
from mq.bench.local_cluster import on_cluster
from mq.bench.produce_bench import bench_topic, create_topic, drive
from mq.client import Message, Producer

_STAMP = struct.Struct("<BQI")
"""phase u8, send time (monotonic ns) u64, sequence u32: the head of every body."""
RATE_DEFAULT = 1000
LIGHT_S_DEFAULT = 10.0
DURATION_S_DEFAULT = 10.0
WINDOW_DEFAULT = 64
DRAIN_S = 30.0
WARMUP_SENDS = 50
WARMUP_PHASE = 0
READY_TIMEOUT_S = 60.0


def _body(phase: int, seq: int, size: int) -> bytes:
    head = _STAMP.pack(phase, time.monotonic_ns(), seq)
    return head + bytes(max(0, size - len(head)))


async def _paced(
    producer: Producer, topic: str, rate: int, seconds: float, size: int, acks: Histogram
) -> int:
    """Send `rate` messages/s for `seconds` (each send in its own task, so a slow answer
    does not delay the next send); returns how many were acknowledged. `acks` gets each
    send's own latency (call to SendResult), to set the delivery latency against."""
    acked = 0
    interval = 1 / rate
    total = int(rate * seconds)

    async def one(seq: int) -> None:
        nonlocal acked
        began = time.perf_counter()
        await producer.send(Message(topic, _body(2, seq, size)))
        acks.record_seconds(time.perf_counter() - began)
        acked += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for seq in range(total):
            await trio.sleep_until(start + seq * interval)
            nursery.start_soon(one, seq)
    return acked


async def _loaded(
    producer: Producer, topic: str, window: int, seconds: float, size: int
) -> tuple[int, float]:
    """Send flat out with `window` in flight; (messages acknowledged, first send time)."""
    acked = 0
    seq = 0
    first = time.monotonic()
    deadline = first + seconds

    async def sender() -> None:
        nonlocal acked, seq
        while time.monotonic() < deadline:
            seq += 1
            await producer.send(Message(topic, _body(3, seq, size)))
            acked += 1

    async with trio.open_nursery() as nursery:
        for _ in range(window):
            nursery.start_soon(sender)
    return acked, first


class _Consumer:
    """The consumer process: started, awaited until ready, asked for counts, stopped."""

    def __init__(self, namesrv: list[str], topic: str, group: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mq.bench.e2e_consumer", ";".join(namesrv), topic, group],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def ask(self, line: str, timeout_s: float = 10.0) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        stdout = self._proc.stdout
        with trio.fail_after(timeout_s):
            answer = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
        if not answer:
            raise RuntimeError(f"the consumer process exited ({self._proc.wait()})")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def wait_count(self, phase: int, count: int, drain_s: float) -> dict[str, Any]:
        deadline = trio.current_time() + drain_s
        while True:
            stats = await self.ask(f"stats {phase}")
            if stats["distinct"] >= count or trio.current_time() > deadline:
                return stats
            await trio.sleep(0.05)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("stop\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()


async def run_async(
    *,
    namesrv: list[str] | None,
    directory: str | None,
    flush: str,
    rate: int = RATE_DEFAULT,
    light_s: float = LIGHT_S_DEFAULT,
    window: int = WINDOW_DEFAULT,
    duration_s: float = DURATION_S_DEFAULT,
    size: int = 1024,
    broker_args: list[str] | None = None,
) -> dict[str, Any]:
    if size < _STAMP.size:
        raise ValueError(f"--size must be at least {_STAMP.size}")

    async def on(servers: list[str], flush_mode: str) -> dict[str, Any]:
        out: dict[str, Any] = {"bench": "e2e", "flush": flush_mode, "size": size}
        produce_topic = bench_topic("e2e-produce")
        await create_topic(servers, produce_topic)
        produced = await drive(servers, produce_topic, window=window, duration_s=duration_s)
        produce_json = produced.to_json()
        out["produce"] = {
            k: produce_json[k]
            for k in ("msgs_s", "latency_p50_ms", "latency_p99_ms", "errors", "window")
        }
        topic = bench_topic("e2e")
        await create_topic(servers, topic)
        consumer = _Consumer(servers, topic, f"{topic}-group")
        try:
            await consumer.ask("ready", timeout_s=READY_TIMEOUT_S)
            async with Producer(namesrv=servers) as producer:
                for seq in range(WARMUP_SENDS):
                    await producer.send(Message(topic, _body(WARMUP_PHASE, seq, size)))
                await consumer.wait_count(WARMUP_PHASE, WARMUP_SENDS, DRAIN_S)
                meter = CpuMeter(
                    await broker_pids(servers) | {"producer": os.getpid(), "consumer": consumer.pid}
                )
                # Light load: paced sends, latency per message.
                acks = Histogram()
                meter.start()
                sent = await _paced(producer, topic, rate, light_s, size, acks)
                light = await consumer.wait_count(2, sent, DRAIN_S)
                cpu = meter.stop(sent)
                ack_latency = acks.summary_ms()
                out["light"] = {
                    "rate": rate,
                    "seconds": light_s,
                    "sent": sent,
                    "delivered": light["distinct"],
                    "duplicates": light["count"] - light["distinct"],
                    "lost": sent - light["distinct"],
                    "latency_p50_ms": light["latency"]["p50_ms"],
                    "latency_p99_ms": light["latency"]["p99_ms"],
                    "latency_p999_ms": light["latency"]["p999_ms"],
                    "latency_max_ms": light["latency"]["max_ms"],
                    "send_ack_p50_ms": ack_latency["p50_ms"],
                    "send_ack_p99_ms": ack_latency["p99_ms"],
                    "cpu_us_per_msg": cpu,
                }
                # Load: flat-out sends, delivered throughput.
                sent, first = await _loaded(producer, topic, window, duration_s, size)
                load = await consumer.wait_count(3, sent, DRAIN_S)
                span = load["last_delivery_s"] - first if load["distinct"] else 0.0
                delivered_s = load["distinct"] / span if span > 0 else 0.0
                out["load"] = {
                    "window": window,
                    "sent": sent,
                    "send_msgs_s": round(sent / duration_s),
                    "delivered": load["distinct"],
                    "duplicates": load["count"] - load["distinct"],
                    "lost": sent - load["distinct"],
                    "delivered_msgs_s": round(delivered_s),
                    "latency_p50_ms": load["latency"]["p50_ms"],
                    "latency_p99_ms": load["latency"]["p99_ms"],
                }
        finally:
            consumer.close()
        out["light_p99_ms"] = out["light"]["latency_p99_ms"]
        out["delivered_msgs_s"] = out["load"]["delivered_msgs_s"]
        out["ratio"] = round(delivered_s / max(produced.msgs_s, 1e-9), 2)
        return out

    return await on_cluster(namesrv, directory, flush, broker_args, on)


def run(**kwargs: Any) -> dict[str, Any]:
    return trio.run(lambda: run_async(**kwargs))


def stamp_of(body: bytes) -> tuple[int, int, int]:
    """(phase, send time ns, seq) of a bench message body."""
    phase, sent_ns, seq = _STAMP.unpack_from(body, 0)
    return phase, sent_ns, seq


def new_phase_stats() -> dict[str, Any]:
    return {"count": 0, "seqs": set(), "latency": Histogram(), "last_ns": 0}


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": stats["count"],
        "distinct": len(stats["seqs"]),
        "latency": stats["latency"].summary_ms(),
        "last_delivery_s": stats["last_ns"] / 1e9,
        "pid": os.getpid(),
    }
