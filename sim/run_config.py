"""What both simulators' runs are configured by: the cluster size, the length of the
faults phase, which faults, which plant, the liveness bound, the fault rate.

`sim.run.SimConfig` and `sim.broker_run.BrokerSimConfig` add their workloads (and
Raft's tunables); sharing the base keeps the flags that `mq sim raft` and `mq sim
broker` have in common meaning the same and being validated the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from sim.faults import FAULTS
from sim.liveness import LIVENESS_BOUND_S


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    # The plants and the faults this simulator knows (name -> description).
    plants: ClassVar[Mapping[str, str]] = {}
    known_faults: ClassVar[Mapping[str, str]] = FAULTS

    nodes: int = 3
    duration_s: float = 20.0
    faults: tuple[str, ...] = tuple(FAULTS)
    plant: str | None = None
    liveness_bound_s: float = LIVENESS_BOUND_S
    mean_fault_gap_ms: float = 700.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        self._validate()
        if self.plant is not None and self.plant not in self.plants:
            raise ValueError(f"unknown plant {self.plant!r} (known: {', '.join(self.plants)})")
        unknown = set(self.faults) - self.known_faults.keys()
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")

    def _validate(self) -> None:
        """Check the simulator's own fields; raise ValueError with what is wrong."""

    def describe(self) -> str:
        """The common part of a run's first trace line."""
        return (
            f"nodes={self.nodes} duration={self.duration_s}s "
            f"faults={','.join(self.faults) or 'none'} plant={self.plant or '-'}"
        )
