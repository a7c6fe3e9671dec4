"""A push consumer as its own OS process, for the real-process consumer-group tests.

`python -m tests.cluster.consumer_proc NAMESRV TOPIC GROUP DIR [--broadcast]
[--instance NAME]` consumes TOPIC in GROUP and, for every message its handler is
called with, appends one JSON line to DIR/handled.jsonl *before* returning (so what the
file holds was handled, and acked only after): `{"id", "g", "q", "o", "body"}`. The
queues assigned to it are rewritten to DIR/assigned.json whenever they change (the
consumer's `on_assignment` listener).

SIGTERM closes the consumer gracefully (in-flight handlers finish, offsets are
committed, the member unregisters); SIGKILL is the crash the tests also inject.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import trio

from mq.client import MessageExt, MessageQueue, PushConsumer


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    handled = (out / "handled.jsonl").open("a", buffering=1)

    async def handler(message: MessageExt) -> None:
        line = {
            "id": message.msg_id,
            "g": message.group,
            "q": message.queue_id,
            "o": message.queue_offset,
            "body": message.body.decode(errors="replace"),
        }
        handled.write(json.dumps(line) + "\n")

    def on_assignment(topic: str, queues: list[MessageQueue]) -> None:
        _write_atomic(out / "assigned.json", json.dumps([[q.group, q.queue_id] for q in queues]))

    consumer = PushConsumer(
        args.namesrv,
        args.group,
        handler=handler,
        model="broadcasting" if args.broadcast else "clustering",
        consume_from="first",
        instance_name=args.instance,
        offsets_dir=out / "offsets",
        rebalance_interval_ms=args.rebalance_ms,
        commit_interval_ms=200,
        on_assignment=on_assignment,
    )
    consumer.subscribe(args.topic)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with consumer:
            async for _ in signals:
                break
    handled.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("namesrv")
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("dir")
    parser.add_argument("--broadcast", action="store_true")
    parser.add_argument("--instance", default="default")
    parser.add_argument("--rebalance-ms", type=int, default=20_000)
    trio.run(main, parser.parse_args())
