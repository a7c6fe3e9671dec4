"""`mq cluster up|down|status|kill-node|start-node|replace-disk`: a local cluster as separate
processes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import trio

from mq import cluster as local
from mq.broker.loop_lag import STALL_MS
from mq.commands import replace_disk
from mq.protocol import RequestCode, request
from mq.rpc.client import connect

DEFAULT_DIR = os.environ.get("MQ_CLUSTER_DIR", ".mq-cluster")
LEADER_WAIT_S = 30.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser(
        "cluster", help="run a local cluster (NameServer + broker groups)"
    )
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="start a NameServer and 3 broker nodes per group")
    _dir_flag(up)
    up.add_argument("--groups", type=int, default=1, help="broker groups (3 nodes each)")
    up.add_argument("--flush", choices=("sync", "async"), default="sync", help="broker flush mode")
    up.add_argument("--broker-arg", action="append", default=[], help="extra flag for every broker")
    up.set_defaults(handler=_up)

    down = actions.add_parser("down", help="stop every process of the cluster")
    _dir_flag(down)
    down.set_defaults(handler=_down)

    status = actions.add_parser("status", help="every node: group, id, address, role, term, pid")
    _dir_flag(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    kill = actions.add_parser("kill-node", help="kill one node (default SIGKILL), e.g. broker-a-1")
    _dir_flag(kill)
    kill.add_argument("name")
    kill.add_argument("--signal", default="KILL", help="KILL, TERM, STOP or CONT")
    kill.set_defaults(handler=_kill)

    start = actions.add_parser("start-node", help="start a stopped node again")
    _dir_flag(start)
    start.add_argument("name")
    start.set_defaults(handler=_start)

    replace = actions.add_parser(
        "replace-disk",
        help="give a broker node an empty disk, as docs/broker.md says (others caught up "
        "first, then --join), and wait until it has caught up",
    )
    _dir_flag(replace)
    replace.add_argument("name")
    replace.add_argument(
        "--force", action="store_true", help="go on even if another node is not caught up"
    )
    replace.add_argument(
        "--timeout",
        type=float,
        default=replace_disk.CATCH_UP_TIMEOUT_S,
        help="seconds to wait for it to catch up (default %(default)s)",
    )
    replace.set_defaults(handler=_replace_disk)


def _dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"cluster directory (default {DEFAULT_DIR})"
    )


def _up(args: argparse.Namespace) -> int:
    try:
        existing = local.ClusterSpec.load(args.dir)
    except FileNotFoundError:
        existing = None
    if existing is not None and any(local.alive(p.pid) for p in existing.processes):
        print(
            f"a cluster is already running in {args.dir}; `mq cluster down --dir {args.dir}` first"
        )
        return 1
    spec = local.plan(
        args.dir, groups=args.groups, flush=args.flush, extra_broker_args=args.broker_arg
    )
    for proc in spec.processes:
        local.start_process(proc)
    spec.save()
    nodes = trio.run(_wait_for_leaders, spec, LEADER_WAIT_S)
    print(f"cluster directory: {spec.directory}")
    print(f"nameserver: {spec.nameservers[0]}")
    for node in nodes:
        print(
            f"  {node['group']} node {node['node_id']}: {node['address']} {node['role']} (pid {node['pid']})"
        )
    if not all(
        any(n["role"] == "leader" for n in nodes if n["group"] == g)
        for g in {n["group"] for n in nodes}
    ):
        print(
            "warning: not every group has elected a leader yet; see the logs in",
            spec.directory + "/logs",
        )
        return 1
    return 0


def _down(args: argparse.Namespace) -> int:
    spec = local.ClusterSpec.load(args.dir)
    for proc in reversed(spec.processes):
        local.stop_process(proc)
    print(f"stopped {len(spec.processes)} processes of {spec.directory}")
    return 0


def _kill(args: argparse.Namespace) -> int:
    spec = local.ClusterSpec.load(args.dir)
    proc = spec.process(args.name)
    sig = getattr(signal, "SIG" + args.signal.upper().removeprefix("SIG"))
    if not local.alive(proc.pid):
        print(f"{args.name} is not running")
        return 1
    os.kill(proc.pid, sig)
    print(f"sent SIG{args.signal.upper().removeprefix('SIG')} to {args.name} (pid {proc.pid})")
    return 0


def _start(args: argparse.Namespace) -> int:
    spec = local.ClusterSpec.load(args.dir)
    proc = spec.process(args.name)
    if local.alive(proc.pid):
        print(f"{args.name} is already running (pid {proc.pid})")
        return 1
    local.start_process(proc)
    spec.save()
    print(f"started {args.name} (pid {proc.pid})")
    return 0


def _replace_disk(args: argparse.Namespace) -> int:
    return replace_disk.run(args, node_status)


def _status(args: argparse.Namespace) -> int:
    spec = local.ClusterSpec.load(args.dir)
    nodes = trio.run(node_statuses, spec)
    if args.json:
        print(json.dumps({"nameservers": spec.nameservers, "nodes": nodes}))
    else:
        for node in nodes:
            blocked = node.get("disk_full")
            lag = node.get("loop_lag_ms") or 0
            print(
                f"{node['group']:10s} node {node['node_id']} {node['address']:21s} "
                f"{node['role']:9s} term {node['term']} pid {node['pid']}"
                + (f"  DISK FULL ({', '.join(blocked)} stopped)" if blocked else "")
                + (f"  LOOP STALLED {lag:.0f} ms lately" if lag >= STALL_MS else "")
                + ("  NOT CAUGHT UP (no vote yet)" if node.get("synced") is False else "")
            )
    return 0


async def node_status(proc: local.ProcessSpec, timeout_s: float = 1.0) -> dict[str, Any]:
    """One node's view of itself (GET_BROKER_STATUS), or role "down" if it does not answer."""
    base = {"group": proc.group, "node_id": proc.node_id, "address": proc.address, "pid": proc.pid}
    if not local.alive(proc.pid):
        return {**base, "role": "down", "term": None, "pid": None}
    try:
        with trio.fail_after(timeout_s):
            async with connect(proc.address, timeout=timeout_s) as conn:
                resp = await conn.request(request(RequestCode.GET_BROKER_STATUS), timeout=timeout_s)
    except Exception:
        return {**base, "role": "unreachable", "term": None}
    fields = dict(resp.fields)
    return {
        **base,
        "role": fields.get("role", "unknown"),
        "term": fields.get("term"),
        "leader": fields.get("leader"),
        "commit_index": fields.get("commit_index"),
        "first_index": fields.get("first_index"),
        "sealed_index": fields.get("sealed_index"),
        "entries_in_memory": fields.get("entries_in_memory"),
        "min_offset": fields.get("min_offset"),
        "max_offset": fields.get("max_offset"),
        "disk_full": list(fields.get("disk_full") or ()),
        "loop_lag_ms": fields.get("loop_lag_ms"),
        "loop_stalls": fields.get("loop_stalls"),
        "synced": fields.get("synced"),
        "joining": fields.get("joining"),
    }


async def node_statuses(spec: local.ClusterSpec) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for proc in spec.brokers():
        results.append(await node_status(proc))
    return results


async def _wait_for_leaders(spec: local.ClusterSpec, timeout_s: float) -> list[dict[str, Any]]:
    groups = {p.group for p in spec.brokers()}
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = await node_statuses(spec)
        leaders = {n["group"] for n in nodes if n["role"] == "leader"}
        if leaders >= groups or time.monotonic() > deadline:
            return nodes
        dead = [p.name for p in spec.processes if not local.alive(p.pid)]
        if dead:
            print(f"processes exited early: {dead}; see {spec.directory}/logs", file=sys.stderr)
            return nodes
        await trio.sleep(0.1)
