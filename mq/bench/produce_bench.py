"""`mq bench produce`: acknowledged 1 KiB sends/s against a 3-node broker group.

A send counts once the producer has its SendResult: the batch is committed by a
majority of the group, dispatched and (sync flush) fsynced as the mode requires. `window`
sends are in flight at once: `window` tasks, each sending, awaiting the result, and
sending again (the latency of each is the time of that await). With `--batch K` each
task sends K messages with one `send_batch`.

The cluster is started for the run (and stopped after) unless `--namesrv` points at a
running one. A warm-up (connections, route, topic creation, page cache) is not counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from mq.bench.histogram import Histogram
from mq.bench.local_cluster import on_cluster
from mq.client import Admin, Message, Producer, SendResult

MESSAGE_BYTES = 1024
WINDOW_DEFAULT = 64
DURATION_S_DEFAULT = 10.0
WARMUP_S = 1.0
ERROR_PAUSE_S = 0.01


@dataclass
class ProduceResult:
    window: int
    batch: int
    size: int
    api: str = "send"
    seconds: float = 0.0
    messages: int = 0
    sends: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def msgs_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        lat = self.latency.summary_ms()
        return {
            "msgs_s": round(self.msgs_s),
            "mib_s": round(self.msgs_s * self.size / (1 << 20), 2),
            "sends_s": round(self.sends / self.seconds) if self.seconds else 0,
            "messages": self.messages,
            "seconds": round(self.seconds, 2),
            "latency_p50_ms": lat["p50_ms"],
            "latency_p99_ms": lat["p99_ms"],
            "latency_p999_ms": lat["p999_ms"],
            "latency_max_ms": lat["max_ms"],
            "latency_mean_ms": lat["mean_ms"],
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "window": self.window,
            "batch": self.batch,
            "size": self.size,
            "api": self.api,
        }


def bench_topic(kind: str) -> str:
    return f"bench-{kind}-{os.getpid()}-{int(time.time() * 1000) % 10**9}"


async def create_topic(namesrv: list[str], topic: str, queues: int = 8) -> None:
    async with Admin(namesrv=namesrv) as admin:
        deadline = time.monotonic() + 30
        while True:
            try:
                await admin.create_topic(topic, queues=queues)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await trio.sleep(0.1)


async def drive(
    namesrv: list[str],
    topic: str,
    *,
    window: int = WINDOW_DEFAULT,
    duration_s: float = DURATION_S_DEFAULT,
    size: int = MESSAGE_BYTES,
    batch: int = 1,
    warmup_s: float = WARMUP_S,
    producer: Producer | None = None,
    total: int | None = None,
    on_ack: Any = None,
    api: str = "send",
) -> ProduceResult:
    """Send for warmup_s + duration_s with `window` sends in flight; count the second part.
    With `total`, send exactly `total` messages instead (no warm-up, no time limit) and
    count all of them; failed sends are retried. `on_ack(result)` sees every SendResult."""
    body = os.urandom(size)
    result = ProduceResult(window=window, batch=batch, size=size)
    start = time.perf_counter()
    if total is not None:
        warmup_s, duration_s = 0.0, float("inf")
    t0 = start + warmup_s
    t1 = t0 + duration_s
    issued = 0

    async def sender(p: Producer) -> None:
        nonlocal issued
        while True:
            began = time.perf_counter()
            if began >= t1:
                return
            if total is not None:
                if issued >= total:
                    return
                issued += batch
            try:
                if batch > 1:
                    sent = await p.send_batch([Message(topic, body) for _ in range(batch)])
                else:
                    sent = await p.send(Message(topic, body))
            except Exception as exc:
                now = time.perf_counter()
                if t0 <= now < t1:
                    result.errors += 1
                    kind = f"{type(exc).__name__}:{getattr(exc, 'code', '')}:{exc.__cause__!r}"[
                        :160
                    ]
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                if total is not None:
                    issued -= batch
                await trio.sleep(ERROR_PAUSE_S)
                continue
            if on_ack is not None:
                on_ack(sent)
            now = time.perf_counter()
            if t0 <= began and now < t1:
                result.latency.record_seconds(now - began)
            if t0 <= now < t1:
                result.messages += batch
                result.sends += 1

    async def run(p: Producer) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(window):
                nursery.start_soon(sender, p)

    def done(began: float, sent: SendResult | None, error: BaseException | None) -> None:
        now = time.perf_counter()
        if error is not None:
            if t0 <= now < t1:
                result.errors += 1
                kind = type(error).__name__
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            return
        if t0 <= began and now < t1:
            result.latency.record_seconds(now - began)
        if t0 <= now < t1:
            result.messages += 1
            result.sends += 1

    async def run_async(p: Producer) -> None:
        # send_async waits while `window` sends are in flight (async_in_flight_max).
        while (began := time.perf_counter()) < t1:
            await p.send_async(Message(topic, body), partial(done, began))

    if producer is not None:
        await run(producer)
    elif api == "async":
        if batch != 1 or total is not None:
            raise ValueError("--async sends single messages for a duration")
        result.api = api
        async with Producer(namesrv=namesrv, async_in_flight_max=window) as p:
            await run_async(p)
    else:
        async with Producer(namesrv=namesrv) as p:
            await run(p)
    result.seconds = min(time.perf_counter(), t1) - t0
    return result


async def run_async(
    *,
    namesrv: list[str] | None,
    directory: str | None,
    flush: str,
    window: int,
    duration_s: float,
    size: int,
    batch: int,
    broker_args: list[str] | None = None,
    api: str = "send",
) -> dict[str, Any]:
    topic = bench_topic("produce")

    async def on(servers: list[str], flush_mode: str) -> dict[str, Any]:
        await create_topic(servers, topic)
        result = await drive(
            servers, topic, window=window, duration_s=duration_s, size=size, batch=batch, api=api
        )
        return {"bench": "produce", "flush": flush_mode, "topic": topic, **result.to_json()}

    return await on_cluster(namesrv, directory, flush, broker_args, on)


def run(**kwargs: Any) -> dict[str, Any]:
    return trio.run(lambda: run_async(**kwargs))
