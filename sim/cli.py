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
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from raft.config import PLANTS
from sim.broker_plants import PLANTS as BROKER_PLANTS
from sim.broker_run import BrokerSimConfig, run_broker
from sim.checkers import CHECKERS
from sim.faults import BROKER_FAULTS, BROKER_FAULTS_KNOWN, FAULTS, OPT_IN_FAULTS, parse_faults
from sim.liveness import LIVENESS_BOUND_S
from sim.queue_checkers import QUEUE_CHECKERS
from sim.report import Simulation, plural, run_one, run_seeds
from sim.result import RunResult
from sim.run import SimConfig, run
from sim.run_config import RunConfig

C = TypeVar("C")

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
    _add_run_arguments(raft, _DEFAULT.duration_s, FAULTS)
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
    _add_output_arguments(raft, PLANTS, "turn on one deliberate bug in the core")
    raft.set_defaults(handler=_raft)
    _add_broker(sims)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_run_arguments(
    parser: argparse.ArgumentParser, duration_s: float, faults: Mapping[str, str]
) -> None:
    """The flags of both simulators that choose the seeds and the world, before the
    simulator's own workload flags (the order `--help` lists them in)."""
    parser.add_argument("--seed", type=int, default=0, help="run this one seed (default 0)")
    parser.add_argument("--seeds", type=int, metavar="N", help="run N seeds and summarize")
    parser.add_argument(
        "--start", type=int, default=0, metavar="S", help="first seed of --seeds (default 0)"
    )
    parser.add_argument(
        "--nodes", type=int, choices=(3, 5), default=3, help="cluster size (default 3)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=duration_s,
        metavar="SECONDS",
        help=f"virtual seconds of faults and workload before the heal (default {duration_s:g})",
    )
    parser.add_argument(
        "--faults",
        default="all",
        metavar="LIST",
        help=f"comma-separated faults to inject, 'all' or 'none' (default all: {','.join(faults)})",
    )


def _add_output_arguments(
    parser: argparse.ArgumentParser, plants: dict[str, str], plant_help: str
) -> None:
    """The flags of both simulators after the workload flags: plants and output."""
    parser.add_argument("--plant", choices=sorted(plants), metavar="NAME", help=plant_help)
    parser.add_argument("--list-plants", action="store_true", help="list the plants and exit")
    parser.add_argument("--trace", metavar="FILE", help="write the full event trace to FILE")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _replay_argv(simulation: str, seed: int, cfg: RunConfig) -> list[str]:
    """The replay command's flags both simulators have; the caller adds the flags of
    its own that differ from their defaults."""
    everything = tuple(n for n in type(cfg).known_faults if n not in OPT_IN_FAULTS)
    if set(everything) <= set(cfg.faults):
        faults = ",".join(["all", *(n for n in cfg.faults if n in OPT_IN_FAULTS)])
    else:
        faults = ",".join(cfg.faults) or "none"
    return [
        "mq",
        "sim",
        simulation,
        "--seed",
        str(seed),
        "--nodes",
        str(cfg.nodes),
        "--duration",
        f"{cfg.duration_s:g}",
        "--faults",
        faults,
    ]


def _run_command(
    name: str,
    args: argparse.Namespace,
    plants: dict[str, str],
    make_config: Callable[[argparse.Namespace], C],
    simulation: Simulation[C],
    before_run: Callable[[], None] | None = None,
) -> int:
    """`mq sim NAME ...`: list the plants, or build the configuration (exit code 2 for
    bad arguments) and run one seed or many."""
    if args.list_plants:
        _print_table(plants)
        return 0
    try:
        cfg = make_config(args)
    except ValueError as exc:
        print(f"mq sim {name}: {exc}", file=sys.stderr)
        return 2
    if before_run is not None:
        before_run()
    if args.seeds is not None:
        return run_seeds(simulation, args, cfg)
    return run_one(simulation, args, cfg)


def _print_table(rows: dict[str, str]) -> None:
    width = max(map(len, rows))
    for name, description in rows.items():
        print(f"{name:<{width}}  {description}")


def replay_command(seed: int, cfg: SimConfig) -> str:
    argv = _replay_argv("raft", seed, cfg)
    if cfg.clients != _DEFAULT.clients:
        argv += ["--clients", str(cfg.clients)]
    if cfg.think_ms != _DEFAULT.think_ms:
        argv += ["--think-ms", f"{cfg.think_ms:g}"]
    if cfg.plant:
        argv += ["--plant", cfg.plant]
    return shlex.join(argv)


def _describe_raft(s: dict[str, Any]) -> str:
    return (
        f"{plural(s['leaders'], 'leader')} up to term {s['max_term']}, "
        f"{plural(s['committed'], 'entry', 'entries')} committed, {s['acked']} acked"
    )


RAFT: Simulation[SimConfig] = Simulation(
    run=run,
    replay=replay_command,
    describe=_describe_raft,
    settled="new proposal applied everywhere",
)


def _raft(args: argparse.Namespace) -> int:
    return _run_command("raft", args, PLANTS, _raft_config, RAFT)


def _raft_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        nodes=args.nodes,
        duration_s=args.duration,
        faults=parse_faults(args.faults),
        plant=args.plant,
        clients=args.clients,
        think_ms=args.think_ms,
    )


# ---------------------------------------------------------------------- mq sim broker

_BROKER_DEFAULT = BrokerSimConfig()

_BROKER_DESCRIPTION = f"""\
Run three real broker cores (mq/broker/core.py: Raft on the CommitLog, ConsumeQueues,
recovery, retention), each over its own simulated disk (storage/files.py SimFileSystem:
unsynced writes lost on a crash, the first one torn), under the faults of `mq sim raft`,
a full disk and a follower far behind (segments are deleted after 3 s, so it installs
a snapshot), with idempotent producers and a consumer group pulling from every node.
Queue checkers compare every acknowledgement, every pull and every node's ConsumeQueues
with a model of the committed log, and check every message a node deleted. The same seed replays the same run (compare the trace hashes).
After --duration seconds of virtual time every fault heals; within {LIVENESS_BOUND_S:g} s
a send must be acknowledged and dispatched on every node, and every node must then
serve exactly the committed history.

faults: {", ".join(BROKER_FAULTS)}; opt in (not in 'all'): wipe
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
    _add_run_arguments(broker, d.duration_s, BROKER_FAULTS_KNOWN)
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
    _add_output_arguments(
        broker,
        BROKER_PLANTS,
        "turn on one deliberate bug (sim side: the cores are never changed)",
    )
    broker.set_defaults(handler=_broker)


def broker_replay_command(seed: int, cfg: BrokerSimConfig) -> str:
    argv = _replay_argv("broker", seed, cfg)
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

    # A full disk is a fault the simulator injects; the checkers judge what follows.
    configure_logging("error", drop=frozenset({"disk_full"}))
    logging.getLogger("storage").setLevel(logging.ERROR)


def _broker(args: argparse.Namespace) -> int:
    return _run_command(
        "broker", args, BROKER_PLANTS, _broker_config, BROKER, before_run=_quiet_logs
    )


def _broker_config(args: argparse.Namespace) -> BrokerSimConfig:
    return BrokerSimConfig(
        nodes=args.nodes,
        duration_s=args.duration,
        faults=parse_faults(args.faults, BROKER_FAULTS_KNOWN),
        plant=args.plant,
        producers=args.producers,
        consumers=args.consumers,
        queues=args.queues,
        think_ms=args.think_ms,
    )


def _describe_broker(s: dict[str, Any]) -> str:
    return (
        f"up to term {s['max_term']}, "
        f"{plural(s['committed_entries'], 'entry', 'entries')} committed, "
        f"{s['batches_acked']} batches acked ({s['send_attempts']} attempts), "
        f"{s['messages_committed']} messages stored, {s['messages_served']} served, "
        f"{plural(s['segments_deleted'], 'segment')} deleted, "
        f"{plural(s['snapshots_installed'], 'snapshot')} installed"
    )


def _summarize_broker(results: list[RunResult]) -> tuple[dict[str, Any], str]:
    """How much retention and snapshot installs the seeds exercised."""
    stats = [r.stats for r in results if r.stats]

    def total(key: str) -> int:
        return sum(s.get(key, 0) for s in stats)

    def seeds(key: str) -> int:
        return sum(1 for s in stats if s.get(key, 0) > 0)

    extra = {
        "segments_deleted": total("segments_deleted"),
        "seeds_with_deletions": seeds("segments_deleted"),
        "snapshots_installed": total("snapshots_installed"),
        "seeds_with_installs": seeds("snapshots_installed"),
        "disk_full_exits": total("disk_full_exits"),
        "seeds_with_disk_full_exits": seeds("disk_full_exits"),
        "disks_replaced": total("disks_replaced"),
    }
    text = (
        f"retention: {plural(extra['segments_deleted'], 'segment')} deleted on "
        f"{extra['seeds_with_deletions']} seeds, "
        f"{plural(extra['snapshots_installed'], 'snapshot')} installed on "
        f"{extra['seeds_with_installs']} seeds, "
        f"{extra['disk_full_exits']} processes died of a full disk in an install on "
        f"{extra['seeds_with_disk_full_exits']} seeds"
    )
    if extra["disks_replaced"]:
        text += f"; {plural(extra['disks_replaced'], 'disk')} replaced"
    return extra, text


BROKER: Simulation[BrokerSimConfig] = Simulation(
    run=run_broker,
    replay=broker_replay_command,
    describe=_describe_broker,
    settled="a send acked and dispatched everywhere",
    summarize=_summarize_broker,
)
