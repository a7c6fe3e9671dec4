"""`mq bench consume`: pull throughput from the start of a topic, against produce in the
same run.

First `--messages` 1 KiB messages are produced (window and batch as `mq bench produce`),
which gives the produce rate of this run; then one task per queue pulls its queue from
the minimum offset up to the maximum offset read before the pulls started, `--pull-batch`
messages per PULL_MESSAGE, as fast as it can. `ratio` = consume msgs/s / produce msgs/s.
With `--topic` an existing topic is consumed instead (nothing is produced, no ratio).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from mq.bench.local_cluster import on_cluster
from mq.bench.produce_bench import bench_topic, create_topic, drive
from mq.client import MessageQueue, PullConsumer

MESSAGES_DEFAULT = 20_000
PULL_BATCH_DEFAULT = 32


async def consume_all(
    namesrv: list[str], topic: str, pull_batch: int
) -> tuple[int, int, float, int]:
    """(messages, body bytes, seconds, pulls) for reading every queue of `topic` once."""
    async with PullConsumer(namesrv=namesrv) as consumer:
        queues = await consumer.fetch_queues(topic)
        bounds: dict[MessageQueue, tuple[int, int]] = {}
        for mq in queues:
            bounds[mq] = (await consumer.min_offset(mq), await consumer.max_offset(mq))
        count = size = pulls = 0

        async def one(mq: MessageQueue) -> None:
            nonlocal count, size, pulls
            offset, end = bounds[mq]
            while offset < end:
                result = await consumer.pull(mq, offset, max_count=pull_batch)
                pulls += 1
                for message in result.messages:
                    size += len(message.body)
                count += len(result.messages)
                if result.next_offset <= offset:
                    raise RuntimeError(f"{mq}: no progress at offset {offset} ({result.status})")
                offset = result.next_offset

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for mq in queues:
                nursery.start_soon(one, mq)
        return count, size, time.perf_counter() - start, pulls


async def run_async(
    *,
    namesrv: list[str] | None,
    directory: str | None,
    flush: str,
    window: int,
    size: int,
    batch: int,
    messages: int,
    pull_batch: int,
    topic: str | None,
    broker_args: list[str] | None = None,
) -> dict[str, Any]:
    async def on(servers: list[str], flush_mode: str) -> dict[str, Any]:
        out: dict[str, Any] = {"bench": "consume", "flush": flush_mode}
        name = topic
        if name is None:
            name = bench_topic("consume")
            await create_topic(servers, name)
            produced = await drive(
                servers, name, window=window, size=size, batch=batch, total=messages
            )
            out["produce"] = {
                k: v
                for k, v in produced.to_json().items()
                if k in ("msgs_s", "mib_s", "messages", "seconds", "errors", "window", "batch")
            }
        count, nbytes, seconds, pulls = await consume_all(servers, name, pull_batch)
        msgs_s = count / seconds if seconds else 0.0
        out.update(
            {
                "topic": name,
                "msgs_s": round(msgs_s),
                "mib_s": round(nbytes / seconds / (1 << 20), 2) if seconds else 0.0,
                "messages": count,
                "seconds": round(seconds, 2),
                "pulls": pulls,
                "pull_batch": pull_batch,
            }
        )
        if "produce" in out:
            out["produce_msgs_s"] = out["produce"]["msgs_s"]
            out["ratio"] = round(msgs_s / max(produced.msgs_s, 1e-9), 2)
        return out

    return await on_cluster(namesrv, directory, flush, broker_args, on)


def run(**kwargs: Any) -> dict[str, Any]:
    return trio.run(lambda: run_async(**kwargs))
