"""A throw-away local cluster for the cluster benchmarks: started in a temp directory (or a
given one), every process stopped and the directory removed when the block ends, even
on an error or Ctrl-C."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from mq import cluster as local
from mq.commands.cluster_cmd import node_status

LEADER_WAIT_S = 30.0


async def statuses(spec: local.ClusterSpec, timeout_s: float = 0.5) -> list[dict[str, Any]]:
    """Every broker's GET_BROKER_STATUS, asked concurrently (role "down" if it is dead)."""
    brokers = spec.brokers()
    results: list[dict[str, Any]] = [{} for _ in brokers]

    async def one(i: int, proc: local.ProcessSpec) -> None:
        results[i] = {"name": proc.name, **await node_status(proc, timeout_s)}

    async with trio.open_nursery() as nursery:
        for i, proc in enumerate(brokers):
            nursery.start_soon(one, i, proc)
    return results


async def wait_for_leader(
    spec: local.ClusterSpec, timeout_s: float = LEADER_WAIT_S, *, min_term: int = 0
) -> dict[str, Any]:
    """The status of the first node that reports itself leader with term >= min_term."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in await statuses(spec):
            if node["role"] == "leader" and (node["term"] or 0) >= min_term:
                return node
        if time.monotonic() > deadline:
            raise TimeoutError(f"no leader within {timeout_s}s; logs in {spec.directory}/logs")
        dead = [p.name for p in spec.processes if p.kind == "nameserver" and not local.alive(p.pid)]
        if dead:
            raise RuntimeError(f"{dead} exited; logs in {spec.directory}/logs")
        await trio.sleep(0.02)


@asynccontextmanager
async def running_cluster(
    directory: str | None = None,
    *,
    flush: str = "sync",
    broker_args: list[str] | None = None,
    keep: bool = False,
) -> AsyncIterator[local.ClusterSpec]:
    """Start a NameServer and one 3-node broker group; yield once it has a leader."""
    made = directory is None
    root = tempfile.mkdtemp(prefix="mq-bench-cluster-") if directory is None else directory
    os.makedirs(root, exist_ok=True)
    spec = local.plan(root, groups=1, flush=flush, extra_broker_args=broker_args)
    try:
        for proc in spec.processes:
            local.start_process(proc)
        spec.save()
        await wait_for_leader(spec)
        yield spec
    finally:
        with trio.CancelScope(shield=True):
            for proc in reversed(spec.processes):
                await trio.to_thread.run_sync(local.stop_process, proc)
        if made and not keep:
            shutil.rmtree(root, ignore_errors=True)


EXTERNAL_FLUSH = "as configured (external cluster)"


async def on_cluster(
    namesrv: list[str] | None,
    directory: str | None,
    flush: str,
    broker_args: list[str] | None,
    run: Callable[[list[str], str], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """`run(nameservers, flush mode)` on the cluster of `namesrv`, or on one started for
    the run (and stopped after): what every cluster benchmark does around its body."""
    if namesrv:
        return await run(namesrv, EXTERNAL_FLUSH)
    async with running_cluster(directory, flush=flush, broker_args=broker_args) as spec:
        return await run(spec.nameservers, flush)
