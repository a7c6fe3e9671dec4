"""`mq cluster replace-disk NAME`: docs/broker.md's procedure for a replaced disk, on a
local cluster, so it can be rehearsed (and is done the same way every time).

1. The other nodes of the group must be caught up: every one up, `synced`, and at the
   commit index the group had when we looked. A node that is not would leave the
   acknowledged entries on fewer nodes than a majority once this one's disk is gone, so
   the command refuses (unless `--force`).
2. The node is stopped with SIGTERM (a leader hands its leadership over first).
3. Its data directory is moved aside (`<data>.replaced-<unix time>`), not deleted: the
   new disk is empty, and the old one is still there to look at.
4. It is started with `--join`: it votes and campaigns only once a leader caught it up.
5. The command waits until it has (`synced`, at the group's commit index).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from mq import cluster as local

CATCH_UP_TIMEOUT_S = 120.0
PEERS_TIMEOUT_S = 10.0
POLL_S = 0.1

StatusOf = Callable[[local.ProcessSpec], Awaitable[dict[str, Any]]]
"""One node's GET_BROKER_STATUS as `mq cluster status --json` shows it (role "down" or
"unreachable" when it does not answer)."""


def run(args: argparse.Namespace, status_of: StatusOf) -> int:
    spec = local.ClusterSpec.load(args.dir)
    proc = spec.process(args.name)
    if proc.kind != "broker":
        print(f"{args.name} is a {proc.kind}, not a broker node: it has no disk to replace")
        return 1
    group = [p for p in spec.brokers() if p.group == proc.group]
    others = [p for p in group if p.name != proc.name]
    if others:
        problem, commit = trio.run(_peers_caught_up, status_of, group, others, PEERS_TIMEOUT_S)
    else:
        problem, commit = (
            f"{args.name} is the only node of {proc.group}: its disk holds the only copy",
            -1,
        )
    if problem is not None:
        if not args.force:
            advice = (
                "With its disk gone, entries acknowledged with its help could be on too "
                "few nodes. Wait until every other node of the group is up and caught up "
                "(`mq cluster status`), or pass --force."
                if others
                else "Pass --force to replace it anyway."
            )
            print(f"refusing to replace the disk of {args.name}: {problem}. {advice}")
            return 1
        print(f"warning: {problem}; going on (--force)")
    else:
        print(f"{args.name}: the other nodes of {proc.group} are caught up (commit index {commit})")

    local.stop_process(proc)
    moved = ""
    if proc.data and os.path.exists(proc.data):
        moved = f"{proc.data}.replaced-{int(time.time())}"
        os.rename(proc.data, moved)
    print(f"{args.name}: stopped" + (f"; its old data is in {moved}" if moved else ""))

    argv = proc.argv
    proc.argv = [*argv, "--join"] if "--join" not in argv else argv
    try:
        local.start_process(proc)
    finally:
        proc.argv = argv  # later starts need no --join: the node then holds a term
    spec.save()
    print(f"{args.name}: started on an empty disk with --join (pid {proc.pid})")

    began = time.monotonic()
    done, detail = trio.run(_caught_up, status_of, proc, group, args.timeout)
    if not done:
        print(f"{args.name}: not caught up after {args.timeout:.0f} s ({detail}); see its log")
        return 1
    print(f"{args.name}: caught up in {time.monotonic() - began:.1f} s ({detail})")
    return 0


async def _statuses(
    status_of: StatusOf, procs: list[local.ProcessSpec]
) -> dict[str, dict[str, Any]]:
    return {p.name: await status_of(p) for p in procs}


def _group_commit(statuses: dict[str, dict[str, Any]]) -> int:
    return max((s.get("commit_index") or 0 for s in statuses.values()), default=0)


async def _peers_caught_up(
    status_of: StatusOf,
    group: list[local.ProcessSpec],
    others: list[local.ProcessSpec],
    timeout_s: float,
) -> tuple[str | None, int]:
    """(None, the group's commit index) once every node in `others` is up, synced and
    at the commit index the group had at the first look; else (what is wrong, -1)."""
    first = await _statuses(status_of, group)
    target = _group_commit(first)
    if not any(s["role"] == "leader" for s in first.values()):
        return "the group has no leader", -1
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = await _statuses(status_of, others)
        problem = None
        for name, s in statuses.items():
            if s["role"] in ("down", "unreachable", "unknown"):
                problem = f"{name} is {s['role']}"
            elif s.get("synced") is False:
                problem = f"{name} has not been caught up by a leader itself"
            elif (s.get("commit_index") or 0) < target:
                problem = (
                    f"{name} is at commit index {s.get('commit_index')}, the group at {target}"
                )
            if problem:
                break
        if problem is None:
            return None, target
        if time.monotonic() > deadline:
            return problem, -1
        await trio.sleep(POLL_S)


async def _caught_up(
    status_of: StatusOf, proc: local.ProcessSpec, group: list[local.ProcessSpec], timeout_s: float
) -> tuple[bool, str]:
    """Wait until `proc` is synced and at the commit index its group has once it answers."""
    deadline = time.monotonic() + timeout_s
    target: int | None = None
    detail = "not answering"
    while time.monotonic() <= deadline:
        statuses = await _statuses(status_of, group)
        ours = statuses[proc.name]
        if ours["role"] == "down":
            return False, "the process exited"
        if ours["role"] not in ("unreachable", "unknown"):
            if target is None:
                target = _group_commit(statuses)
            commit = ours.get("commit_index") or 0
            detail = f"commit index {commit} of {target}, synced: {ours.get('synced')}"
            if ours.get("synced") and commit >= target:
                return True, f"commit index {commit}"
        await trio.sleep(POLL_S)
    return False, detail
