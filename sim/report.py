"""How `mq sim raft` and `mq sim broker` report: one seed (a verdict, the trace hash,
what the run did, and for a failure the last events and the replay command), or many
seeds (a summary with speed figures, as text or JSON, and the failing seeds).

Both simulators report the same way so that a failure reads the same and a replay
line can be pasted from either; a `Simulation` supplies what differs: how to run a
seed, the replay command, and the part of the summary line its stats feed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TextIO, TypeVar

from sim.result import RunResult

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)


class Runner(Protocol[C_contra]):
    """`sim.run.run` or `sim.broker_run.run_broker`: one seed under one configuration."""

    def __call__(self, seed: int, cfg: C_contra, trace_file: TextIO | None = None) -> RunResult: ...


@dataclass(frozen=True, slots=True)
class Simulation(Generic[C]):
    """One simulator, as the CLI reports it."""

    run: Runner[C]
    replay: Callable[[int, C], str]
    # The simulator's part of the one-line summary, after "N events; ".
    describe: Callable[[dict[str, Any]], str]
    # What the liveness probe did once settled ("new proposal applied everywhere").
    settled: str
    # Totals over many seeds for the summary (JSON fields and a line of text), e.g. how
    # many seeds exercised a feature; None adds nothing.
    summarize: Callable[[list[RunResult]], tuple[dict[str, Any], str]] | None = None


def run_one(sim: Simulation[C], args: argparse.Namespace, cfg: C) -> int:
    """`--seed S`: run it (with `--trace FILE`, writing every event), print the verdict;
    the exit code is 0 when every check passed."""
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            result = sim.run(args.seed, cfg, trace_file=f)
    else:
        result = sim.run(args.seed, cfg)
    if args.json:
        out = result.to_json()
        out["replay"] = sim.replay(args.seed, cfg)
        print(json.dumps(out, indent=2))
    else:
        print(format_result(sim, result, cfg))
    return 0 if result.ok else 1


def format_result(sim: Simulation[C], result: RunResult, cfg: C) -> str:
    s = result.stats
    speed = result.sim_seconds / result.wall_seconds if result.wall_seconds else 0.0
    head = (
        f"seed {result.seed}: {'OK' if result.ok else 'FAILED'}\n"
        f"trace hash {result.trace_hash}\n"
        f"{result.sim_seconds:.1f} s simulated in {result.wall_seconds:.2f} s ({speed:.0f}x), "
        f"{result.events} events; {sim.describe(s)}, "
        f"{plural(s['crashes'], 'crash', 'crashes')}, "
        f"{plural(s['messages'], 'message')} ({s['dropped']} lost)"
    )
    if result.ok:
        if s["heal_to_probe_ms"] is not None:
            head += (
                f"\nafter the heal: leader in {s['heal_to_leader_ms']:.0f} ms, "
                f"{sim.settled} in {s['heal_to_probe_ms']:.0f} ms"
            )
        return head
    lines = [
        head,
        f"checker {result.checker}: {result.message}",
        f"last {len(result.tail)} events:",
    ]
    lines += [f"  {line}" for line in result.tail]
    lines.append(f"replay: {sim.replay(result.seed, cfg)} --trace trace-{result.seed}.txt")
    return "\n".join(lines)


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def run_seeds(sim: Simulation[C], args: argparse.Namespace, cfg: C) -> int:
    """`--seeds N --start S`: run them, print the summary (`--json`: the summary object)
    and the failing seeds with their replay commands; with `--trace FILE`, rerun the
    first failing seed writing its trace. The exit code is 0 when no seed failed."""
    seeds = range(args.start, args.start + args.seeds)
    progress = sys.stderr if sys.stderr.isatty() else None
    summary = run_many(seeds, cfg, sim.run, progress=progress)
    results: list[RunResult] = summary.pop("_results")
    extra, extra_text = sim.summarize(results) if sim.summarize is not None else ({}, "")
    summary.update(extra)
    failed = [r for r in results if not r.ok]
    if args.trace and failed:
        with open(args.trace, "w", encoding="utf-8") as f:
            sim.run(failed[0].seed, cfg, trace_file=f)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['seeds']} seeds, {len(failed)} failed; "
            f"{summary['sim_seconds']:.0f} s simulated in {summary['wall_seconds']:.1f} s "
            f"({summary['sim_speed']:.0f}x), {summary['events_per_s']:.0f} events/s"
        )
        if extra_text:
            print(extra_text)
        for r in failed:
            first = (r.message or "").splitlines()[0] if r.message else ""
            print(f"seed {r.seed}: {r.checker}: {first}")
            print(f"  replay: {sim.replay(r.seed, cfg)}")
    return 0 if not failed else 1


def run_many(
    seeds: Sequence[int],
    cfg: C,
    runner: Runner[C],
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Run each seed with `runner`; the summary `mq sim raft|broker --seeds N --json`
    prints, plus the results themselves under `_results`."""
    wall_start = time.perf_counter()
    results: list[RunResult] = []
    sim_seconds = 0.0
    events = 0
    for n, seed in enumerate(seeds, 1):
        result = runner(seed, cfg)
        results.append(result)
        sim_seconds += result.sim_seconds
        events += result.events
        if progress is not None:
            draw_progress(progress, n, len(seeds), sum(not r.ok for r in results))
    if progress is not None:
        progress.write("\n")
    wall = time.perf_counter() - wall_start
    failures = [r.seed for r in results if not r.ok]
    return {
        "seeds": len(results),
        "failures": failures,
        "failed_checkers": {str(r.seed): r.checker for r in results if not r.ok},
        "sim_seconds": round(sim_seconds, 3),
        "wall_seconds": round(wall, 3),
        "sim_speed": round(sim_seconds / wall, 1) if wall else 0.0,
        "events": events,
        "events_per_s": round(events / wall, 1) if wall else 0.0,
        "_results": results,
    }


def draw_progress(out: TextIO, done: int, total: int, failed: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    out.write(f"\r[{bar}] {done}/{total} seeds, {failed} failed")
    out.flush()
