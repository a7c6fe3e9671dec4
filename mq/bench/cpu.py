"""CPU time of the processes a benchmark drives, by role, per message.

On a 2-core machine shared by the client and three brokers, latency under load is mostly
queueing for the cores, so what each process spends per message is the number to move.
Read from /proc (Linux); a process that is not on this machine (or a system without
/proc) is left out rather than guessed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mq.client import Admin

_TICKS_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far; None if it cannot be read here."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_S


async def broker_pids(namesrv: list[str]) -> dict[str, int]:
    """Role ("leader", "follower", ...) + node -> pid of every broker the NameServers
    know that runs on this machine (its status names its pid, and /proc has it)."""
    pids: dict[str, int] = {}
    async with Admin(namesrv) as admin:
        info = await admin.cluster_info()
        for group in info.groups:
            for node in group.nodes:
                status = await admin.broker_status(node.address)
                if status.pid > 0 and cpu_seconds(status.pid) is not None:
                    pids[f"{status.role}:{group.group}/{status.node_id}"] = status.pid
    return pids


class CpuMeter:
    """CPU seconds of named processes between `start` and `stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = self._now()

    def stop(self, messages: int) -> dict[str, Any]:
        """Microseconds of CPU per message by role (`leader`, `follower` as the mean of
        the followers, and every other name as given) and the cores used in all."""
        after = self._now()
        spent = {name: after[name] - self._before[name] for name in after if name in self._before}
        by_role: dict[str, list[float]] = {}
        for name, seconds in spent.items():
            by_role.setdefault(name.split(":", 1)[0], []).append(seconds)
        per_msg = max(messages, 1)
        out: dict[str, Any] = {
            role: round(sum(values) / len(values) / per_msg * 1e6, 1)
            for role, values in sorted(by_role.items())
        }
        out["total"] = round(sum(spent.values()) / per_msg * 1e6, 1)
        return out

    def _now(self) -> dict[str, float]:
        now: dict[str, float] = {}
        for name, pid in self.pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                now[name] = seconds
        return now
