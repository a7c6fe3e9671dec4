"""`mq produce`, `mq consume`, `mq admin ...`: the data path and administration from a shell."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from mq.client import Admin, Message, Producer, PullConsumer
from mq.cluster import ClusterSpec

DEFAULT_NAMESRV = "127.0.0.1:9876"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    produce = commands.add_parser("produce", help="send messages to a topic")
    _namesrv_flags(produce)
    produce.add_argument("--topic", required=True)
    produce.add_argument("--count", type=int, default=1, help="messages to send (default 1)")
    produce.add_argument("--size", type=int, default=0, help="body bytes (default: a short text)")
    produce.add_argument("--body", help="body text (default: 'message N')")
    produce.add_argument("--key", help="message key (indexed; query by key)")
    produce.add_argument("--tag", default="", help="message tag (consumers filter on it)")
    produce.add_argument("--json-lines", action="store_true", help="print each SendResult as JSON")
    produce.set_defaults(handler=_produce)

    consume = commands.add_parser("consume", help="read messages of a topic (pull)")
    _namesrv_flags(consume)
    consume.add_argument("--topic", required=True)
    consume.add_argument("--from", dest="start", choices=("first", "last"), default="first")
    consume.add_argument(
        "--count", type=int, default=0, help="stop after N messages (default: all there are)"
    )
    consume.add_argument("--tags", default="*", help="tag filter, e.g. 'a || b' (default *)")
    consume.add_argument("--json-lines", action="store_true", help="one JSON object per message")
    consume.set_defaults(handler=_consume)

    admin = commands.add_parser("admin", help="topics and cluster administration")
    actions = admin.add_subparsers(dest="admin", metavar="ACTION", required=True)
    topic = actions.add_parser("topic", help="create or list topics")
    topic_actions = topic.add_subparsers(dest="topic_action", metavar="ACTION", required=True)
    create = topic_actions.add_parser("create", help="create a topic on every broker group")
    _namesrv_flags(create)
    create.add_argument("topic")
    create.add_argument("--queues", type=int, default=8)
    create.add_argument("--group", help="only this broker group")
    create.set_defaults(handler=_topic_create)
    listing = topic_actions.add_parser("list", help="list topics")
    _namesrv_flags(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_topic_list)
    cluster = actions.add_parser("cluster", help="broker groups, nodes and leaders")
    _namesrv_flags(cluster)
    cluster.add_argument("--json", action="store_true")
    cluster.set_defaults(handler=_cluster)


def _namesrv_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namesrv",
        help="NameServer address(es), comma separated (default: the local cluster's, else "
        f"$MQ_NAMESRV, else {DEFAULT_NAMESRV})",
    )
    parser.add_argument(
        "--dir",
        default=os.environ.get("MQ_CLUSTER_DIR", ".mq-cluster"),
        help="local cluster directory",
    )


def namesrv_of(args: argparse.Namespace) -> list[str]:
    if args.namesrv:
        return [a.strip() for a in args.namesrv.split(",") if a.strip()]
    try:
        return ClusterSpec.load(args.dir).nameservers
    except FileNotFoundError:
        return [os.environ.get("MQ_NAMESRV", DEFAULT_NAMESRV)]


def _body(args: argparse.Namespace, i: int) -> bytes:
    if args.size:
        text = (args.body or f"message {i} ").encode()
        return (text * (args.size // max(len(text), 1) + 1))[: args.size]
    return (args.body or f"message {i}").encode()


def _produce(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with Producer(namesrv_of(args)) as producer:
            started = time.perf_counter()
            for i in range(args.count):
                msg = Message(
                    args.topic, _body(args, i), tags=args.tag, keys=[args.key] if args.key else ()
                )
                result = await producer.send(msg)
                if args.json_lines:
                    print(json.dumps({
                        "msg_id": result.msg_id, "group": result.group, "queue": result.queue_id,
                        "queue_offset": result.queue_offset, "duplicate": result.duplicate,
                    }))  # fmt: skip
            elapsed = time.perf_counter() - started
        if not args.json_lines:
            print(f"sent {args.count} messages to {args.topic} in {elapsed:.2f} s")
        return 0

    return trio.run(run)


def _printable(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or not text else None


def _consume(args: argparse.Namespace) -> int:
    async def run() -> int:
        seen = 0
        async with PullConsumer(namesrv_of(args)) as consumer:
            for mq in await consumer.fetch_queues(args.topic):
                offset = await (
                    consumer.min_offset(mq) if args.start == "first" else consumer.max_offset(mq)
                )
                while not args.count or seen < args.count:
                    result = await consumer.pull(mq, offset, max_count=32, tags=args.tags)
                    for msg in result.messages:
                        seen += 1
                        _print_message(msg, args.json_lines)
                        if args.count and seen >= args.count:
                            break
                    if result.status in ("NO_NEW_MSG",) or result.next_offset == offset:
                        break
                    offset = result.next_offset
                if args.count and seen >= args.count:
                    break
        if not args.json_lines:
            print(f"read {seen} messages from {args.topic}", file=sys.stderr)
        return 0

    return trio.run(run)


def _print_message(msg: Any, json_lines: bool) -> None:
    text = _printable(msg.body)
    if json_lines:
        record: dict[str, Any] = {
            "topic": msg.topic,
            "group": msg.group,
            "queue": msg.queue_id,
            "queue_offset": msg.queue_offset,
            "msg_id": msg.msg_id,
            "keys": list(msg.keys),
            "tags": msg.tags,
            "store_timestamp_ms": msg.store_timestamp_ms,
        }
        if text is not None:
            record["body"] = text
        else:
            record["body_bytes"] = len(msg.body)
        print(json.dumps(record))
    else:
        shown = text if text is not None else f"<{len(msg.body)} bytes>"
        print(f"{msg.group}/{msg.queue_id}@{msg.queue_offset} {msg.msg_id} {shown}")


def _topic_create(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with Admin(namesrv_of(args)) as admin:
            await admin.create_topic(args.topic, queues=args.queues, group=args.group)
        print(f"created topic {args.topic} with {args.queues} queues")
        return 0

    return trio.run(run)


def _cluster_info(args: argparse.Namespace) -> Any:
    async def run() -> Any:
        async with Admin(namesrv_of(args)) as admin:
            return await admin.cluster_info()

    return trio.run(run)


def _topic_list(args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        async with Admin(namesrv_of(args)) as admin:
            info = await admin.cluster_info()
            names: set[str] = set()
            for group in info.groups:
                if group.leader_address:
                    names.update(await admin.all_topics(group.leader_address))
            return sorted(names)

    topics = trio.run(run)
    print(json.dumps(topics) if args.json else "\n".join(topics))
    return 0


def _cluster(args: argparse.Namespace) -> int:
    info = _cluster_info(args)
    if args.json:
        print(json.dumps(info.to_fields()))
        return 0
    for group in info.groups:
        print(f"{group.cluster}/{group.group} leader={group.leader_address}")
        for node in group.nodes:
            print(f"  node {node.node_id} {node.address} {node.role} term {node.term}")
    return 0
