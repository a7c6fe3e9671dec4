"""`mq produce`, `mq consume`, `mq admin ...`: the data path and administration from a shell."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import trio

from mq.client import (
    Admin,
    ConsumerGroupInfo,
    GroupDescription,
    Message,
    MessageModel,
    MessageQueue,
    MQClientError,
    NoRouteError,
    OffsetsFileInUseError,
    Producer,
    PullConsumer,
    PushConsumer,
    SendResult,
    TagFilter,
)
from mq.cluster import ClusterSpec
from mq.logs import configure_logging

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
    produce.add_argument(
        "--window",
        type=int,
        default=64,
        help="sends in flight at once (default 64; they share requests); 1 sends one by one",
    )
    produce.set_defaults(handler=_produce)

    consume = commands.add_parser(
        "consume",
        help="read messages of a topic (pull; with --group as a member of a consumer group)",
    )
    _namesrv_flags(consume)
    consume.add_argument("--topic", required=True)
    consume.add_argument(
        "--group",
        help="consume as a member of this consumer group (push consumer: queues are shared "
        "with the group's other members, offsets are committed); without it, pull every queue",
    )
    consume.add_argument(
        "--broadcast",
        action="store_true",
        help="with --group: every member gets every message (offsets in ~/.mq/offsets)",
    )
    consume.add_argument(
        "--instance-name",
        default="default",
        help="with --broadcast: this member's name on this host (its offsets file is "
        "~/.mq/offsets/<group>/<name>.json); each member on one host needs its own",
    )
    consume.add_argument(
        "--from",
        dest="start",
        choices=("first", "last", "timestamp"),
        default="first",
        help="where to start (with --group: only queues the group has no offset for)",
    )
    consume.add_argument("--timestamp", type=int, help="with --from timestamp: ms since the epoch")
    consume.add_argument(
        "--count",
        type=int,
        default=0,
        help="stop after N messages (default: all there are; with --group: run until ^C)",
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
    create.add_argument(
        "--write-queues",
        type=int,
        help="queues producers send to (default: --queues); to shrink a topic without "
        "hiding messages, lower this first, let consumers drain the rest, then --queues",
    )
    create.add_argument("--group", help="only this broker group")
    create.add_argument(
        "--force",
        action="store_true",
        help="lower the read queues of an existing topic even if that hides the messages "
        "in the queues it drops",
    )
    create.set_defaults(handler=_topic_create)
    listing = topic_actions.add_parser("list", help="list topics")
    _namesrv_flags(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_topic_list)
    cluster = actions.add_parser("cluster", help="broker groups, nodes and leaders")
    _namesrv_flags(cluster)
    cluster.add_argument("--json", action="store_true")
    cluster.set_defaults(handler=_cluster)
    group = actions.add_parser("group", help="consumer groups: members, offsets, lag, resets")
    group_actions = group.add_subparsers(dest="group_action", metavar="ACTION", required=True)
    group_list = group_actions.add_parser("list", help="every consumer group the brokers know")
    _namesrv_flags(group_list)
    group_list.add_argument("--json", action="store_true")
    group_list.set_defaults(handler=_group_list)
    describe = group_actions.add_parser(
        "describe", help="members, and per queue the broker offset, committed offset, lag"
    )
    _namesrv_flags(describe)
    describe.add_argument("--group", required=True)
    describe.add_argument(
        "--topic", action="append", help="only this topic (repeatable; default: the group's)"
    )
    describe.add_argument("--json", action="store_true")
    describe.set_defaults(handler=_group_describe)
    reset = group_actions.add_parser(
        "reset-offset", help="move a group's offsets of a topic (members are told at once)"
    )
    _namesrv_flags(reset)
    reset.add_argument("--group", required=True)
    reset.add_argument("--topic", required=True)
    reset.add_argument(
        "--to", required=True, help="first, last, or a timestamp in ms since the epoch"
    )
    reset.add_argument("--json", action="store_true")
    reset.set_defaults(handler=_group_reset)


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
    """Send `--count` messages with up to `--window` in flight (the producer's
    auto-batching makes concurrent sends share requests). Results print in send order;
    the first failed send stops the run (after the ones in flight) and is the error."""
    if args.window < 1:
        raise SystemExit("mq produce: --window must be at least 1")

    def message(i: int) -> Message:
        keys = [args.key] if args.key else ()
        return Message(args.topic, _body(args, i), tags=args.tag, keys=keys)

    async def run() -> int:
        async with Producer(namesrv_of(args)) as producer:
            try:  # a bad topic or body fails every send alike: say so once
                message(0).validate(body_bytes_max=producer.message_bytes_max)
            except ValueError as exc:
                print(f"mq produce: {exc}", file=sys.stderr)
                return 2
            started = time.perf_counter()
            slots = trio.Semaphore(args.window)
            done: dict[int, SendResult] = {}
            printed = 0
            failures: list[MQClientError] = []

            async def one(i: int, msg: Message) -> None:
                nonlocal printed
                try:
                    done[i] = await producer.send(msg)
                except MQClientError as exc:
                    failures.append(exc)
                finally:
                    slots.release()
                while printed in done:
                    result = done.pop(printed)
                    printed += 1
                    if args.json_lines:
                        print(json.dumps({
                            "msg_id": result.msg_id, "group": result.group,
                            "queue": result.queue_id, "queue_offset": result.queue_offset,
                            "duplicate": result.duplicate,
                        }))  # fmt: skip

            async with trio.open_nursery() as nursery:
                for i in range(args.count):
                    await slots.acquire()
                    if failures:
                        slots.release()
                        break
                    nursery.start_soon(one, i, message(i))
            elapsed = time.perf_counter() - started
        if failures:
            print(f"sent {printed} of {args.count} messages before a send failed", file=sys.stderr)
            raise failures[0]
        if not args.json_lines:
            rate = args.count / elapsed if elapsed > 0 else 0.0
            print(f"sent {args.count} messages to {args.topic} in {elapsed:.2f} s ({rate:,.0f}/s)")
        return 0

    return trio.run(run)


def _printable(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or not text else None


def _consume(args: argparse.Namespace) -> int:
    if args.start == "timestamp" and args.timestamp is None:
        print("mq: error: --from timestamp needs --timestamp MS", file=sys.stderr)
        return 2
    try:
        TagFilter.parse(args.tags)
    except ValueError as exc:
        print(f"mq: error: --tags: {exc}", file=sys.stderr)
        return 2
    if args.group:
        return _consume_as_member(args)
    if args.broadcast:
        print("mq: error: --broadcast needs --group", file=sys.stderr)
        return 2

    async def start_offset(consumer: PullConsumer, mq: MessageQueue) -> int:
        if args.start == "first":
            return await consumer.min_offset(mq)
        if args.start == "last":
            return await consumer.max_offset(mq)
        return await consumer.search_offset(mq, args.timestamp)

    async def run() -> int:
        seen = 0
        async with PullConsumer(namesrv_of(args)) as consumer:
            for mq in await consumer.fetch_queues(args.topic):
                offset = await start_offset(consumer, mq)
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


def _consume_as_member(args: argparse.Namespace) -> int:
    """A push consumer: messages are acked once printed, so the group's committed
    offsets move past them (committed every second and when the command ends). Its
    logs (rebalances, unreachable nodes) go to stderr, warnings only: stdout is for
    the messages."""
    configure_logging("warning")

    seen = 0

    async def consume(consumer: PushConsumer) -> None:
        nonlocal seen
        async with consumer:
            if not args.json_lines:
                queues = ", ".join(str(q) for q in consumer.assigned) or "none yet"
                print(f"consuming as {consumer.client_id}; queues: {queues}", file=sys.stderr)
            async for delivery in consumer.deliveries():
                _print_message(delivery.message, args.json_lines)
                await delivery.ack()
                seen += 1
                if args.count and seen >= args.count:
                    break

    async def run() -> int:
        consumer = PushConsumer(
            namesrv_of(args),
            args.group,
            model=MessageModel.BROADCASTING if args.broadcast else MessageModel.CLUSTERING,
            consume_from=args.start,
            consume_timestamp_ms=args.timestamp,
            instance_name=args.instance_name,
        )
        consumer.subscribe(args.topic, args.tags)
        # SIGTERM (a service manager's stop) ends it like ^C: the consumer commits its
        # offsets and leaves its group, so nothing it printed is delivered again.
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                async def main() -> None:
                    await consume(consumer)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(main)
        if not args.json_lines:
            print(f"read {seen} messages from {args.topic}", file=sys.stderr)
        return 0

    failed: BaseException | None = None
    try:
        return trio.run(run)
    except* OffsetsFileInUseError as group:
        failed = group.exceptions[0]
    print(f"mq: error: {failed}", file=sys.stderr)
    return 1


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
        print(json.dumps(record), flush=True)
    else:
        shown = text if text is not None else f"<{len(msg.body)} bytes>"
        print(f"{msg.group}/{msg.queue_id}@{msg.queue_offset} {msg.msg_id} {shown}", flush=True)


def _topic_create(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with Admin(namesrv_of(args)) as admin:
            if not args.force:
                try:
                    route = await admin.topic_route(args.topic)
                except NoRouteError:
                    route = None  # a new topic
                for g in route.groups if route is not None else ():
                    if args.queues < g.topic.read_queues and (args.group in (None, g.group)):
                        print(
                            f"mq: error: {args.topic} has {g.topic.read_queues} read queues on "
                            f"{g.group}; {args.queues} would hide the messages of queues "
                            f"{args.queues}-{g.topic.read_queues - 1} from consumers. Lower "
                            "--write-queues first, let consumers drain those queues, then "
                            "--queues (or pass --force)",
                            file=sys.stderr,
                        )
                        return 1
            await admin.create_topic(
                args.topic, queues=args.queues, group=args.group, write_queues=args.write_queues
            )
        writes = "" if args.write_queues is None else f" ({args.write_queues} written to)"
        print(f"created topic {args.topic} with {args.queues} queues{writes}")
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


_MODEL_UNKNOWN = "model unknown: no member online"
"""A group's model (clustering or broadcasting) is what its members' heartbeats say."""


def _group_list(args: argparse.Namespace) -> int:
    async def run() -> list[ConsumerGroupInfo]:
        async with Admin(namesrv_of(args)) as admin:
            return await admin.consumer_groups()

    groups = trio.run(run)
    if args.json:
        print(json.dumps([g.to_fields() for g in groups]))
        return 0
    for group in groups:
        members = ", ".join(group.members) or "no members"
        topics = ", ".join(group.topics) or "-"
        model = group.model or _MODEL_UNKNOWN
        print(f"{group.group} ({model}) topics: {topics}; members: {members}")
    return 0


def _group_describe(args: argparse.Namespace) -> int:
    async def run() -> GroupDescription:
        async with Admin(namesrv_of(args)) as admin:
            return await admin.describe_group(args.group, args.topic)

    described = trio.run(run)
    if args.json:
        print(json.dumps(described.to_fields()))
        return 0
    members = ", ".join(described.members) or "none"
    model = described.model or _MODEL_UNKNOWN
    print(f"group {described.group} ({model}), members: {members}")
    rows = [("topic", "broker-group", "queue", "broker-offset", "consumer-offset", "lag")]
    for q in described.queues:
        rows.append((
            q.queue.topic, q.queue.group, str(q.queue.queue_id), str(q.broker_offset),
            "-" if q.consumer_offset is None else str(q.consumer_offset),
            "-" if q.lag is None else str(q.lag),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"total lag {described.lag}")
    return 0


def _group_reset(args: argparse.Namespace) -> int:
    to, timestamp_ms = args.to, None
    if to not in ("first", "last"):
        try:
            to, timestamp_ms = "timestamp", int(args.to)
        except ValueError:
            print("mq: error: --to must be first, last or a timestamp in ms", file=sys.stderr)
            return 2

    async def run() -> dict[MessageQueue, int]:
        async with Admin(namesrv_of(args)) as admin:
            return await admin.reset_offset(args.group, args.topic, to, timestamp_ms=timestamp_ms)

    offsets = trio.run(run)
    if args.json:
        print(json.dumps([
            {"topic": q.topic, "group": q.group, "queue_id": q.queue_id, "offset": o}
            for q, o in sorted(offsets.items())
        ]))  # fmt: skip
        return 0
    for queue, offset in sorted(offsets.items()):
        print(f"{queue} -> {offset}")
    return 0
