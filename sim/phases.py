"""The phases of one run, the same for `mq sim raft` and `mq sim broker`.

1. faults: `duration_s` of virtual time in which the workload runs under the fault
   schedule, the storm guard bounding the work and the checkers watching every event;
2. heal: every fault ends at once (sim/faults.py `heal_all`) and the workload stops;
3. liveness (sim/liveness.py): a leader and a settled probe within the bound;

then the simulator's final check on the end state. A `Violation` raised anywhere stops
the run with that checker's verdict; any other exception, from a core or from the
simulator, fails it as `exception`. Either way the trace records why, so the trace
hash covers the verdict.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, Protocol

from sim.checkers import Violation
from sim.events import NS_PER_S, EventLoop
from sim.liveness import Liveness
from sim.result import Verdict
from sim.storm_guard import StormGuard
from sim.trace import Trace
from sim.world import World


class Startable(Protocol):
    def start(self) -> None: ...


class Workload(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Faults(Protocol):
    counts: dict[str, int]

    def start(self, end_ns: int) -> None: ...

    def heal_all(self) -> None: ...


def run_phases(
    loop: EventLoop,
    trace: Trace,
    duration_s: float,
    cluster: Startable,
    workload: Workload,
    faults: Faults,
    liveness: Liveness,
    final_check: Callable[[], None],
    *,
    start_watchers: Callable[[], None] | None = None,
    traceback_limit: int = 8,
) -> Verdict:
    """Run every phase and say how the run ended. `start_watchers` schedules periodic
    checks right after the storm guard (the broker's ConsumeQueue scans); the order in
    which things are scheduled is part of the trace, so it is fixed here."""
    try:
        end_ns = int(duration_s * NS_PER_S)
        cluster.start()
        StormGuard(loop).start()
        if start_watchers is not None:
            start_watchers()
        workload.start()
        faults.start(end_ns)
        loop.run_until(end_ns)
        workload.stop()
        faults.heal_all()
        liveness.run()
        final_check()
    except Violation as v:
        trace.emit(f"VIOLATION {v.checker}: {v.message}")
        return Verdict(v.checker, v.message)
    except Exception as exc:  # a crash of the core or of the simulator is a failure too
        trace.emit(f"EXCEPTION {type(exc).__name__}: {exc}")
        return Verdict(
            "exception",
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=traceback_limit)}",
        )
    trace.emit("OK")
    return Verdict()


def world_stats(world: World[Any], faults: Faults, liveness: Liveness) -> dict[str, Any]:
    """The stats both simulators report, last in a run's `stats` (the report reads
    them): crashes, network traffic, the faults injected, the liveness timings."""
    return {
        "crashes": sum(h.crashes for h in world.hosts.values()),
        "messages": world.network.sent,
        "dropped": world.network.dropped,
        "faults": {k: v for k, v in faults.counts.items() if v},
        "heal_to_leader_ms": liveness.leader_ms,
        "heal_to_probe_ms": liveness.probe_ms,
    }
