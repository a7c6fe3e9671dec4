"""`mq bench ...`: benchmarks that print one JSON object, baseline included."""

from __future__ import annotations

import argparse
import json


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", help="benchmarks (JSON output)")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    storage = kinds.add_parser("storage", help="CommitLog append, group commit, reads vs raw disk")
    storage.add_argument("--dir", help="where to put the temp files (default: system temp dir)")
    storage.add_argument("--quick", action="store_true", help="smaller run, under 30 s")
    storage.add_argument("--json", action="store_true", help="print JSON (the only format)")
    storage.set_defaults(handler=_storage)
    raft = kinds.add_parser("raft", help="3-node in-process Raft: committed entries/s")
    raft.add_argument("--dir", help="where to put the CommitLog files (default: system temp dir)")
    raft.add_argument("--quick", action="store_true", help="smaller run")
    raft.add_argument("--batch", type=int, default=256, help="entries proposed per batch")
    raft.add_argument("--json", action="store_true", help="print JSON (the only format)")
    raft.set_defaults(handler=_raft)

    produce = kinds.add_parser("produce", help="acknowledged 1 KiB sends/s on a 3-node group")
    _cluster_flags(produce)
    _load_flags(produce)
    produce.add_argument(
        "--async",
        dest="api",
        action="store_const",
        const="async",
        default="send",
        help="one task keeps --window send_async calls in flight (single messages)",
    )
    produce.set_defaults(handler=_produce)

    consume = kinds.add_parser("consume", help="pull msgs/s from the start vs produce msgs/s")
    _cluster_flags(consume)
    consume.add_argument("--window", type=int, default=64, help="produce: sends in flight")
    consume.add_argument("--size", type=int, default=1024, help="message body bytes")
    consume.add_argument("--batch", type=int, default=1, help="produce: messages per send")
    consume.add_argument("--messages", type=int, default=20_000, help="messages to produce")
    consume.add_argument("--pull-batch", type=int, default=32, help="max messages per pull")
    consume.add_argument("--topic", help="consume this existing topic instead (no produce)")
    consume.set_defaults(handler=_consume)

    failover = kinds.add_parser("failover", help="kill -9 the leader under load, R rounds")
    failover.add_argument("--dir", help="directory of the cluster started for the run")
    failover.add_argument("--flush", choices=("sync", "async"), default="sync")
    failover.add_argument("--broker-arg", action="append", default=[], help="extra broker flag")
    failover.add_argument("--rounds", type=int, default=3, help="leader kills (default 3)")
    failover.add_argument("--window", type=int, default=8, help="sends in flight (default 8)")
    failover.add_argument("--size", type=int, default=1024, help="message body bytes")
    failover.add_argument("--settle", type=float, default=2.0, help="seconds of load per round")
    failover.add_argument("--json", action="store_true", help="print JSON (the only format)")
    failover.set_defaults(handler=_failover)

    e2e = kinds.add_parser("e2e", help="producer to push-consumer handler: latency, delivered/s")
    _cluster_flags(e2e)
    e2e.add_argument("--rate", type=int, default=1000, help="light phase: messages/s (paced)")
    e2e.add_argument("--light", type=float, default=10.0, help="light phase: seconds")
    e2e.add_argument("--window", type=int, default=64, help="produce and load phases: in flight")
    e2e.add_argument("--duration", type=float, default=10.0, help="produce and load phases: s")
    e2e.add_argument("--size", type=int, default=1024, help="message body bytes")
    e2e.set_defaults(handler=_e2e)

    peer = kinds.add_parser("pysyncobj", help="the same windowed workload on PySyncObj vs ours")
    peer.add_argument("--dir", help="directory of our cluster started for the run")
    peer.add_argument("--flush", choices=("sync", "async"), default="sync")
    peer.add_argument("--broker-arg", action="append", default=[], help="extra broker flag")
    peer.add_argument("--window", type=int, default=64, help="calls in flight (default 64)")
    peer.add_argument("--duration", type=float, default=10.0, help="measured seconds (each)")
    peer.add_argument("--size", type=int, default=1024, help="value bytes")
    peer.add_argument("--json", action="store_true", help="print JSON (the only format)")
    peer.set_defaults(handler=_pysyncobj)


def _cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namesrv", help="use the running cluster of this NameServer (default: start one)"
    )
    parser.add_argument(
        "--dir", help="directory of the cluster started for the run (default: temp)"
    )
    parser.add_argument("--flush", choices=("sync", "async"), default="sync")
    parser.add_argument(
        "--broker-arg", action="append", default=[], help="extra flag for every started broker"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the only format)")


def _load_flags(parser: argparse.ArgumentParser, duration: float = 10.0) -> None:
    parser.add_argument("--window", type=int, default=64, help="sends in flight (default 64)")
    parser.add_argument("--duration", type=float, default=duration, help="measured seconds")
    parser.add_argument("--size", type=int, default=1024, help="message body bytes")
    parser.add_argument("--batch", type=int, default=1, help="messages per send (send_batch)")


def _namesrv(args: argparse.Namespace) -> list[str] | None:
    if not args.namesrv:
        return None
    return [a.strip() for a in args.namesrv.replace(";", ",").split(",") if a.strip()]


def _storage(args: argparse.Namespace) -> int:
    from mq.bench import storage_bench

    print(json.dumps(storage_bench.run(args.dir, args.quick), indent=None))
    return 0


def _raft(args: argparse.Namespace) -> int:
    from mq.bench import raft_bench

    print(json.dumps(raft_bench.run(args.dir, args.quick, args.batch)))
    return 0


def _produce(args: argparse.Namespace) -> int:
    from mq.bench import produce_bench

    print(
        json.dumps(
            produce_bench.run(
                namesrv=_namesrv(args),
                directory=args.dir,
                flush=args.flush,
                window=args.window,
                duration_s=args.duration,
                size=args.size,
                batch=args.batch,
                broker_args=args.broker_arg,
                api=args.api,
            )
        )
    )
    return 0


def _consume(args: argparse.Namespace) -> int:
    from mq.bench import consume_bench

    print(
        json.dumps(
            consume_bench.run(
                namesrv=_namesrv(args),
                directory=args.dir,
                flush=args.flush,
                window=args.window,
                size=args.size,
                batch=args.batch,
                messages=args.messages,
                pull_batch=args.pull_batch,
                topic=args.topic,
                broker_args=args.broker_arg,
            )
        )
    )
    return 0


def _failover(args: argparse.Namespace) -> int:
    from mq.bench import failover_bench

    result = failover_bench.run(
        directory=args.dir,
        flush=args.flush,
        rounds=args.rounds,
        window=args.window,
        size=args.size,
        settle_s=args.settle,
        broker_args=args.broker_arg,
    )
    print(json.dumps(result))
    return 0 if result["acked_lost"] == 0 else 1


def _e2e(args: argparse.Namespace) -> int:
    from mq.bench import e2e_bench

    result = e2e_bench.run(
        namesrv=_namesrv(args),
        directory=args.dir,
        flush=args.flush,
        rate=args.rate,
        light_s=args.light,
        window=args.window,
        duration_s=args.duration,
        size=args.size,
        broker_args=args.broker_arg,
    )
    print(json.dumps(result))
    return 0 if result["light"]["lost"] == 0 and result["load"]["lost"] == 0 else 1


def _pysyncobj(args: argparse.Namespace) -> int:
    from mq.bench import pysyncobj_bench

    print(
        json.dumps(
            pysyncobj_bench.run(
                window=args.window,
                duration_s=args.duration,
                size=args.size,
                flush=args.flush,
                directory=args.dir,
                broker_args=args.broker_arg,
            )
        )
    )
    return 0
