"""`mq bench pysyncobj`: the same 3-process, 1 KiB, windowed workload on PySyncObj, then
ours, in one run; `ratio` = ours / PySyncObj (acknowledged messages/s).

PySyncObj side: three processes on loopback (`python -m mq.bench.pysyncobj_bench
--node ...`), each a `SyncObj` with PySyncObj's default configuration (in-memory log,
no journal file, TCP transport, batched appends) holding a replicated counter whose
`@replicated add(value)` takes a 1 KiB value. Once a leader is elected, the leader's
process runs the client as a separate thread: it keeps `window` calls in flight, each
`add(value, callback=...)` (PySyncObj's asynchronous call: the callback fires once the
command is committed by a majority and applied), counting completions and their
latency after a warm-up. The leader is used so commands are not forwarded (the fastest
place to drive PySyncObj from). Every node process exits by itself after its time limit.

Our side: `mq bench produce` with the same window, size and duration (a cluster started
for the run, sync flush by default, client in this process).

PySyncObj is a dev-extra dependency (a benchmark peer), imported only here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import trio

from mq.bench.histogram import Histogram
from mq.bench.produce_bench import WARMUP_S
from mq.bench.produce_bench import run_async as produce_run_async
from mq.cluster import free_ports

NODE_GRACE_S = 30.0


# ---------------------------------------------------------------------- node process


def _node_main(argv: list[str]) -> int:
    from pysyncobj import SyncObj, replicated  # type: ignore[import-untyped]

    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--partners", required=True)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=WARMUP_S)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--limit", type=float, required=True, help="exit after this many s")
    parser.add_argument("--out", required=True, help="result file (written by the driver)")
    args = parser.parse_args(argv)

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(args.node, args.partners.split(","))
            self.count = 0
            self.bytes = 0

        @replicated  # type: ignore[misc]
        def add(self, value: bytes) -> int:
            self.count += 1
            self.bytes += len(value)
            return self.count

    deadline = time.monotonic() + args.limit
    obj = Counter()
    try:
        while time.monotonic() < deadline:
            if obj._isReady() and obj._getLeader() is not None:
                break
            time.sleep(0.01)
        if obj._isLeader():
            result = _drive(obj, args.window, args.warmup, args.duration, args.size)
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f)
            os.replace(tmp, args.out)
        while time.monotonic() < deadline and not os.path.exists(args.out):
            time.sleep(0.05)
        time.sleep(0.5)  # let the others read their last acks before we go
    finally:
        obj.destroy()
    return 0


def _drive(obj: Any, window: int, warmup_s: float, duration_s: float, size: int) -> dict[str, Any]:
    value = os.urandom(size)
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    hist = Histogram()
    counts = {"acked": 0, "errors": 0}
    reasons: dict[str, int] = {}
    start = time.perf_counter()
    t0 = start + warmup_s
    t1 = t0 + duration_s

    def issue() -> None:
        began = time.perf_counter()

        def done(result: Any, error: Any) -> None:
            now = time.perf_counter()
            with lock:
                if t0 <= now < t1:
                    if error == 0:
                        counts["acked"] += 1
                        if began >= t0:
                            hist.record_seconds(now - began)
                    else:
                        counts["errors"] += 1
                        reasons[str(error)] = reasons.get(str(error), 0) + 1
            slots.release()

        obj.add(value, callback=done)

    while True:
        slots.acquire()
        if time.perf_counter() >= t1:
            slots.release()
            break
        issue()
    for _ in range(window):  # wait for the tail (bounded)
        if not slots.acquire(timeout=5):
            break
    seconds = t1 - t0
    lat = hist.summary_ms()
    return {
        "msgs_s": round(counts["acked"] / seconds),
        "mib_s": round(counts["acked"] * size / seconds / (1 << 20), 2),
        "messages": counts["acked"],
        "seconds": round(seconds, 2),
        "latency_p50_ms": lat["p50_ms"],
        "latency_p99_ms": lat["p99_ms"],
        "latency_p999_ms": lat["p999_ms"],
        "errors": counts["errors"],
        "error_reasons": reasons,
    }


# ---------------------------------------------------------------------- the benchmark


def run_pysyncobj(window: int, duration_s: float, size: int) -> dict[str, Any]:
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    limit = WARMUP_S + duration_s + NODE_GRACE_S
    with tempfile.TemporaryDirectory(prefix="mq-bench-pysyncobj-") as tmp:
        out = os.path.join(tmp, "result.json")
        procs = []
        try:
            for i, addr in enumerate(addrs):
                partners = ",".join(a for j, a in enumerate(addrs) if j != i)
                argv = [
                    sys.executable, "-m", "mq.bench.pysyncobj_bench",
                    "--node", addr, "--partners", partners,
                    "--window", str(window), "--duration", str(duration_s),
                    "--size", str(size), "--limit", str(limit), "--out", out,
                ]  # fmt: skip
                log = open(os.path.join(tmp, f"node{i}.log"), "wb")  # noqa: SIM115
                procs.append(
                    subprocess.Popen(
                        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                    )
                )
                log.close()
            deadline = time.monotonic() + limit + 5
            while not os.path.exists(out) and time.monotonic() < deadline:
                if all(p.poll() is not None for p in procs):
                    break
                time.sleep(0.1)
            if not os.path.exists(out):
                logs = {
                    f"node{i}": open(os.path.join(tmp, f"node{i}.log")).read()[-2000:]  # noqa: SIM115
                    for i in range(3)
                }
                raise RuntimeError(f"PySyncObj run produced no result: {logs}")
            with open(out) as f:
                result: dict[str, Any] = json.load(f)
        finally:
            for p in procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return result


def run(
    *,
    window: int,
    duration_s: float,
    size: int,
    flush: str,
    directory: str | None,
    broker_args: list[str] | None = None,
) -> dict[str, Any]:
    import pysyncobj  # noqa: F401  (fail early with a clear message if it is missing)

    theirs = run_pysyncobj(window, duration_s, size)
    ours = trio.run(
        lambda: produce_run_async(
            namesrv=None,
            directory=directory,
            flush=flush,
            window=window,
            duration_s=duration_s,
            size=size,
            batch=1,
            broker_args=broker_args,
        )
    )
    ours.pop("topic", None)
    ours.pop("bench", None)
    return {
        "bench": "pysyncobj",
        "window": window,
        "size": size,
        "duration_s": duration_s,
        "pysyncobj_version": _version(),
        "pysyncobj_msgs_s": theirs["msgs_s"],
        "ours_msgs_s": ours["msgs_s"],
        "ratio": round(ours["msgs_s"] / max(theirs["msgs_s"], 1e-9), 2),
        "pysyncobj": theirs,
        "ours": ours,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("pysyncobj")


if __name__ == "__main__":
    sys.exit(_node_main(sys.argv[1:]))
