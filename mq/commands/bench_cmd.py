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


def _storage(args: argparse.Namespace) -> int:
    from mq.bench import storage_bench

    print(json.dumps(storage_bench.run(args.dir, args.quick), indent=None))
    return 0


def _raft(args: argparse.Namespace) -> int:
    from mq.bench import raft_bench

    print(json.dumps(raft_bench.run(args.dir, args.quick, args.batch)))
    return 0
