"""`mq sim ...`: the simulator's command group, wired into `mq` by mq/cli.py.

It lives in `sim/` because only `mq.cli` may import the simulator (import-linter), and
this keeps `mq/cli.py` to one import and one call while other command groups grow there.

    mq sim raft --seed 7                 one run: verdict, trace hash, replay command
    mq sim raft --seeds 200 --json       many runs: a JSON summary with speed figures
    mq sim raft --list-plants            the deliberate bugs the checkers must catch
    mq sim broker --seed 7               the real broker cores (CommitLog, ConsumeQueue,
                                         recovery) under the same faults, queue checkers
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from raft.config import PLANTS
from sim.broker_plants import PLANTS as BROKER_PLANTS
from sim.broker_run import BrokerSimConfig, run_broker
from sim.checkers import CHECKERS
from sim.faults import FAULTS, parse_faults
from sim.queue_checkers import QUEUE_CHECKERS
from sim.run import LIVENESS_BOUND_S, RunResult, SimConfig, run

Runner = Callable[..., RunResult]

_DEFAULT = SimConfig()

_DESCRIPTION = f"""\
Run the real Raft core (raft/) on simulated nodes, disks and network under injected
faults, with safety and liveness checkers watching every event. Everything derives
from the seed: the same seed replays the same run, event for event (compare the trace
hashes). After --duration seconds of virtual time every fault heals and a leader must
commit a new proposal within {LIVENESS_BOUND_S:g} s.

faults: {", ".join(FAULTS)}
checkers: {", ".join(CHECKERS)}
plants: {", ".join(PLANTS)}
"""


def add_sim_commands(commands: Any) -> None:
    """Add `sim` (with `raft` under it) to the `mq` subcommands."""
    sim = commands.add_parser(
        "sim",
        help="deterministic fault-injection simulations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sims = sim.add_subparsers(dest="simulation", metavar="SIMULATION")
    sim.set_defaults(handler=lambda args: _usage(sim))
    raft = sims.add_parser(
        "raft",
        help="Raft under crashes, partitions, loss, pauses and clock drift",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    raft.add_argument("--seed", type=int, default=0, help="run this one seed (default 0)")
    raft.add_argument("--seeds", type=int, metavar="N", help="run N seeds and summarize")
    raft.add_argument(
        "--start", type=int, default=0, metavar="S", help="first seed of --seeds (default 0)"
    )
    raft.add_argument(
        "--nodes", type=int, choices=(3, 5), default=3, help="cluster size (default 3)"
    )
    raft.add_argument(
        "--duration",
        type=float,
        default=_DEFAULT.duration_s,
        metavar="SECONDS",
        help=f"virtual seconds of faults and workload before the heal (default {_DEFAULT.duration_s:g})",
    )
    raft.add_argument(
        "--faults",
        default="all",
        metavar="LIST",
        help=f"comma-separated faults to inject, 'all' or 'none' (default all: {','.join(FAULTS)})",
    )
    raft.add_argument(
        "--clients",
        type=int,
        default=_DEFAULT.clients,
        metavar="N",
        help=f"clients writing through the cluster (default {_DEFAULT.clients})",
    )
    raft.add_argument(
        "--think-ms",
        type=float,
        default=_DEFAULT.think_ms,
        metavar="MS",
        help=f"mean pause of a client between operations (default {_DEFAULT.think_ms:g})",
    )
    raft.add_argument(
        "--plant",
        choices=sorted(PLANTS),
        metavar="NAME",
        help="turn on one deliberate bug in the core",
    )
    raft.add_argument("--list-plants", action="store_true", help="list the plants and exit")
    raft.add_argument("--trace", metavar="FILE", help="write the full event trace to FILE")
    raft.add_argument("--json", action="store_true", help="print JSON instead of text")
    raft.set_defaults(handler=_raft)
    _add_broker(sims)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def replay_command(seed: int, cfg: SimConfig) -> str:
    faults = "all" if cfg.faults == tuple(FAULTS) else (",".join(cfg.faults) or "none")
    argv = [
        "mq",
        "sim",
        "raft",
        "--seed",
        str(seed),
        "--nodes",
        str(cfg.nodes),
        "--duration",
        f"{cfg.duration_s:g}",
        "--faults",
        faults,
    ]
    if cfg.clients != _DEFAULT.clients:
        argv += ["--clients", str(cfg.clients)]
    if cfg.think_ms != _DEFAULT.think_ms:
        argv += ["--think-ms", f"{cfg.think_ms:g}"]
    if cfg.plant:
        argv += ["--plant", cfg.plant]
    return shlex.join(argv)


def _raft(args: argparse.Namespace) -> int:
    if args.list_plants:
        width = max(map(len, PLANTS))
        for name, description in PLANTS.items():
            print(f"{name:<{width}}  {description}")
        return 0
    try:
        cfg = SimConfig(
            nodes=args.nodes,
            duration_s=args.duration,
            faults=parse_faults(args.faults),
            plant=args.plant,
            clients=args.clients,
            think_ms=args.think_ms,
        )
    except ValueError as exc:
        print(f"mq sim raft: {exc}", file=sys.stderr)
        return 2
    if args.seeds is not None:
        return _many(args, cfg)
    return _one(args, cfg)


def _one(args: argparse.Namespace, cfg: SimConfig) -> int:
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            result = run(args.seed, cfg, trace_file=f)
    else:
        result = run(args.seed, cfg)
    if args.json:
        out = result.to_json()
        out["replay"] = replay_command(args.seed, cfg)
        print(json.dumps(out, indent=2))
    else:
        print(format_result(result, cfg))
    return 0 if result.ok else 1


def format_result(result: RunResult, cfg: SimConfig) -> str:
    s = result.stats
    speed = result.sim_seconds / result.wall_seconds if result.wall_seconds else 0.0
    head = (
        f"seed {result.seed}: {'OK' if result.ok else 'FAILED'}\n"
        f"trace hash {result.trace_hash}\n"
        f"{result.sim_seconds:.1f} s simulated in {result.wall_seconds:.2f} s ({speed:.0f}x), "
        f"{result.events} events; {_n(s['leaders'], 'leader')} up to term {s['max_term']}, "
        f"{_n(s['committed'], 'entry', 'entries')} committed, {s['acked']} acked, "
        f"{_n(s['crashes'], 'crash', 'crashes')}, "
        f"{_n(s['messages'], 'message')} ({s['dropped']} lost)"
    )
    if result.ok:
        if s["heal_to_probe_ms"] is not None:
            head += (
                f"\nafter the heal: leader in {s['heal_to_leader_ms']:.0f} ms, "
                f"new proposal applied everywhere in {s['heal_to_probe_ms']:.0f} ms"
            )
        return head
    lines = [
        head,
        f"checker {result.checker}: {result.message}",
        f"last {len(result.tail)} events:",
    ]
    lines += [f"  {line}" for line in result.tail]
    lines.append(f"replay: {replay_command(result.seed, cfg)} --trace trace-{result.seed}.txt")
    return "\n".join(lines)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _many(args: argparse.Namespace, cfg: SimConfig) -> int:
    seeds = range(args.start, args.start + args.seeds)
    progress = sys.stderr if sys.stderr.isatty() else None
    summary = run_many(seeds, cfg, progress=progress)
    results: list[RunResult] = summary.pop("_results")
    failed = [r for r in results if not r.ok]
    if args.trace and failed:
        with open(args.trace, "w", encoding="utf-8") as f:
            run(failed[0].seed, cfg, trace_file=f)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['seeds']} seeds, {len(failed)} failed; "
            f"{summary['sim_seconds']:.0f} s simulated in {summary['wall_seconds']:.1f} s "
            f"({summary['sim_speed']:.0f}x), {summary['events_per_s']:.0f} events/s"
        )
        for r in failed:
            first = (r.message or "").splitlines()[0] if r.message else ""
            print(f"seed {r.seed}: {r.checker}: {first}")
            print(f"  replay: {replay_command(r.seed, cfg)}")
    return 0 if not failed else 1


def run_many(
    seeds: Sequence[int],
    cfg: Any,
    progress: TextIO | None = None,
    runner: Runner = run,
) -> dict[str, Any]:
    """Run each seed with `runner` (`run` or `run_broker`); the summary
    `mq sim raft|broker --seeds N --json` prints."""
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
            _draw_progress(progress, n, len(seeds), sum(not r.ok for r in results))
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


def _draw_progress(out: TextIO, done: int, total: int, failed: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    out.write(f"\r[{bar}] {done}/{total} seeds, {failed} failed")
    out.flush()


# ---------------------------------------------------------------------- mq sim broker

_BROKER_DEFAULT = BrokerSimConfig()

_BROKER_DESCRIPTION = f"""\
Run three real broker cores (mq/broker/core.py: Raft on the CommitLog, ConsumeQueues,
recovery), each over its own simulated disk (storage/files.py SimFileSystem: unsynced
writes lost on a crash, the first one torn), under the faults of `mq sim raft`, with
idempotent producers and a consumer group pulling from every node. Queue checkers
compare every acknowledgement, every pull and every node's ConsumeQueues with a model
of the committed log. The same seed replays the same run (compare the trace hashes).
After --duration seconds of virtual time every fault heals; within {LIVENESS_BOUND_S:g} s
a send must be acknowledged and dispatched on every node, and every node must then
serve exactly the committed history.

faults: {", ".join(FAULTS)}
checkers: {", ".join(QUEUE_CHECKERS)}
plants: {", ".join(BROKER_PLANTS)}
"""


def _add_broker(sims: Any) -> None:
    broker = sims.add_parser(
        "broker",
        help="the broker cores (CommitLog, ConsumeQueue, recovery) under the same faults",
        description=_BROKER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = _BROKER_DEFAULT
    broker.add_argument("--seed", type=int, default=0, help="run this one seed (default 0)")
    broker.add_argument("--seeds", type=int, metavar="N", help="run N seeds and summarize")
    broker.add_argument(
        "--start", type=int, default=0, metavar="S", help="first seed of --seeds (default 0)"
    )
    broker.add_argument(
        "--nodes", type=int, choices=(3, 5), default=3, help="cluster size (default 3)"
    )
    broker.add_argument(
        "--duration",
        type=float,
        default=d.duration_s,
        metavar="SECONDS",
        help=f"virtual seconds of faults and workload before the heal (default {d.duration_s:g})",
    )
    broker.add_argument(
        "--faults",
        default="all",
        metavar="LIST",
        help=f"comma-separated faults to inject, 'all' or 'none' (default all: {','.join(FAULTS)})",
    )
    broker.add_argument(
        "--producers", type=int, default=d.producers, metavar="N",
        help=f"idempotent producers (default {d.producers})",
    )  # fmt: skip
    broker.add_argument(
        "--consumers", type=int, default=d.consumers, metavar="N",
        help=f"consumers of the group (default {d.consumers})",
    )  # fmt: skip
    broker.add_argument(
        "--queues", type=int, default=d.queues, metavar="N",
        help=f"queues of the topic (default {d.queues})",
    )  # fmt: skip
    broker.add_argument(
        "--think-ms", type=float, default=d.think_ms, metavar="MS",
        help=f"mean pause of a producer between batches (default {d.think_ms:g})",
    )  # fmt: skip
    broker.add_argument(
        "--plant", choices=sorted(BROKER_PLANTS), metavar="NAME",
        help="turn on one deliberate bug (sim side: the cores are never changed)",
    )  # fmt: skip
    broker.add_argument("--list-plants", action="store_true", help="list the plants and exit")
    broker.add_argument("--trace", metavar="FILE", help="write the full event trace to FILE")
    broker.add_argument("--json", action="store_true", help="print JSON instead of text")
    broker.set_defaults(handler=_broker)


def broker_replay_command(seed: int, cfg: BrokerSimConfig) -> str:
    faults = "all" if cfg.faults == tuple(FAULTS) else (",".join(cfg.faults) or "none")
    argv = ["mq", "sim", "broker", "--seed", str(seed), "--nodes", str(cfg.nodes)]
    argv += ["--duration", f"{cfg.duration_s:g}", "--faults", faults]
    d = _BROKER_DEFAULT
    for flag, value, default in (
        ("--producers", cfg.producers, d.producers),
        ("--consumers", cfg.consumers, d.consumers),
        ("--queues", cfg.queues, d.queues),
        ("--think-ms", cfg.think_ms, d.think_ms),
    ):
        if value != default:
            argv += [flag, f"{value:g}"]
    if cfg.plant:
        argv += ["--plant", cfg.plant]
    return shlex.join(argv)


def _quiet_logs() -> None:
    """The cores log every restart and role change; a simulation has thousands. Only
    errors reach stderr, so `--json` output stays clean (once per process: the CLI is
    the entry point, see mq/logs.py)."""
    import logging

    from mq.logs import configure_logging

    configure_logging("error")
    logging.getLogger("storage").setLevel(logging.ERROR)


def _broker(args: argparse.Namespace) -> int:
    if args.list_plants:
        _print_table(BROKER_PLANTS)
        return 0
    try:
        cfg = BrokerSimConfig(
            nodes=args.nodes,
            duration_s=args.duration,
            faults=parse_faults(args.faults),
            plant=args.plant,
            producers=args.producers,
            consumers=args.consumers,
            queues=args.queues,
            think_ms=args.think_ms,
        )
    except ValueError as exc:
        print(f"mq sim broker: {exc}", file=sys.stderr)
        return 2
    _quiet_logs()
    if args.seeds is not None:
        return _broker_many(args, cfg)
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            result = run_broker(args.seed, cfg, trace_file=f)
    else:
        result = run_broker(args.seed, cfg)
    if args.json:
        out = result.to_json()
        out["replay"] = broker_replay_command(args.seed, cfg)
        print(json.dumps(out, indent=2))
    else:
        print(format_broker_result(result, cfg))
    return 0 if result.ok else 1


def _print_table(rows: dict[str, str]) -> None:
    width = max(map(len, rows))
    for name, description in rows.items():
        print(f"{name:<{width}}  {description}")


def format_broker_result(result: RunResult, cfg: BrokerSimConfig) -> str:
    s = result.stats
    speed = result.sim_seconds / result.wall_seconds if result.wall_seconds else 0.0
    head = (
        f"seed {result.seed}: {'OK' if result.ok else 'FAILED'}\n"
        f"trace hash {result.trace_hash}\n"
        f"{result.sim_seconds:.1f} s simulated in {result.wall_seconds:.2f} s ({speed:.0f}x), "
        f"{result.events} events; up to term {s['max_term']}, "
        f"{_n(s['committed_entries'], 'entry', 'entries')} committed, "
        f"{s['batches_acked']} batches acked ({s['send_attempts']} attempts), "
        f"{s['messages_committed']} messages stored, {s['messages_served']} served, "
        f"{_n(s['crashes'], 'crash', 'crashes')}, "
        f"{_n(s['messages'], 'message')} ({s['dropped']} lost)"
    )
    if result.ok:
        if s["heal_to_probe_ms"] is not None:
            head += (
                f"\nafter the heal: leader in {s['heal_to_leader_ms']:.0f} ms, "
                f"a send acked and dispatched everywhere in {s['heal_to_probe_ms']:.0f} ms"
            )
        return head
    lines = [
        head,
        f"checker {result.checker}: {result.message}",
        f"last {len(result.tail)} events:",
    ]
    lines += [f"  {line}" for line in result.tail]
    lines.append(
        f"replay: {broker_replay_command(result.seed, cfg)} --trace trace-{result.seed}.txt"
    )
    return "\n".join(lines)


def _broker_many(args: argparse.Namespace, cfg: BrokerSimConfig) -> int:
    seeds = range(args.start, args.start + args.seeds)
    progress = sys.stderr if sys.stderr.isatty() else None
    summary = run_many(seeds, cfg, progress=progress, runner=run_broker)
    results: list[RunResult] = summary.pop("_results")
    failed = [r for r in results if not r.ok]
    if args.trace and failed:
        with open(args.trace, "w", encoding="utf-8") as f:
            run_broker(failed[0].seed, cfg, trace_file=f)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['seeds']} seeds, {len(failed)} failed; "
            f"{summary['sim_seconds']:.0f} s simulated in {summary['wall_seconds']:.1f} s "
            f"({summary['sim_speed']:.0f}x), {summary['events_per_s']:.0f} events/s"
        )
        for r in failed:
            first = (r.message or "").splitlines()[0] if r.message else ""
            print(f"seed {r.seed}: {r.checker}: {first}")
            print(f"  replay: {broker_replay_command(r.seed, cfg)}")
    return 0 if not failed else 1
