"""What one run of either simulator yields: a verdict, a trace hash, counts and stats.

`mq sim raft` and `mq sim broker` report the same way (one seed or a summary of many,
text or JSON), so they share one result type; only `stats` differs between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.events import NS_PER_S, EventLoop
from sim.trace import Trace


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a run ended: `checker` is None when every check passed, else the checker
    that failed (or `exception`) with its message."""

    checker: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.checker is None


@dataclass
class RunResult:
    seed: int
    ok: bool
    checker: str | None
    message: str | None
    trace_hash: str
    events: int
    trace_lines: int
    sim_seconds: float
    wall_seconds: float
    tail: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        seed: int,
        verdict: Verdict,
        loop: EventLoop,
        trace: Trace,
        wall_seconds: float,
        stats: dict[str, Any],
    ) -> RunResult:
        """The result of a finished run, read off its event loop and trace."""
        return cls(
            seed=seed,
            ok=verdict.ok,
            checker=verdict.checker,
            message=verdict.message,
            trace_hash=trace.hexdigest(),
            events=loop.events,
            trace_lines=trace.lines_total,
            sim_seconds=loop.now_ns / NS_PER_S,
            wall_seconds=wall_seconds,
            tail=trace.tail(),
            stats=stats,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "checker": self.checker,
            "message": self.message,
            "trace_hash": self.trace_hash,
            "events": self.events,
            "sim_seconds": round(self.sim_seconds, 6),
            "wall_seconds": round(self.wall_seconds, 6),
            "stats": self.stats,
        }
