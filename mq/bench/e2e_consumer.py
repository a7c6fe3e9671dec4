"""The consumer process of `mq bench e2e` (mq/bench/e2e_bench.py): a PushConsumer that
records, per phase, every delivered message and its send-to-handler latency.

`python -m mq.bench.e2e_consumer NAMESRV TOPIC GROUP`, then one command per stdin line,
each answered with one JSON line: `ready` (answered once every queue of the topic is
assigned to this consumer), `stats PHASE`, `stop`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

from mq.bench.e2e_bench import new_phase_stats, stamp_of, summarize
from mq.client import MessageExt, PushConsumer
from mq.logs import configure_logging

READY_POLL_S = 0.05


async def main(namesrv: str, topic: str, group: str) -> None:
    phases: dict[int, dict[str, Any]] = {}

    async def handler(message: MessageExt) -> None:
        now = time.monotonic_ns()
        phase, sent_ns, seq = stamp_of(message.body)
        stats = phases.get(phase)
        if stats is None:
            stats = phases[phase] = new_phase_stats()
        stats["count"] += 1
        stats["seqs"].add(seq)
        stats["latency"].record(max(0, now - sent_ns) // 1000)
        stats["last_ns"] = max(stats["last_ns"], now)

    consumer = PushConsumer(namesrv, group, handler=handler, consume_from="first")
    consumer.subscribe(topic)
    async with consumer:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "stop":
                return
            answer: dict[str, Any]
            if words[0] == "ready":
                while not consumer.assigned:
                    await trio.sleep(READY_POLL_S)
                answer = {"ready": True, "queues": len(consumer.assigned)}
            elif words[0] == "stats":
                answer = summarize(phases.get(int(words[1])) or new_phase_stats())
            else:
                answer = {"error": f"unknown command {words[0]!r}"}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    configure_logging("warning")  # stdout carries the answers, logs go to stderr
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
