"""The simulated world both simulators build: the event loop, the trace, the network
between the nodes, one host per node, and the client links.

`sim/cluster.py` (Raft node hosts) and `sim/broker_cluster.py` (broker hosts) subclass
`World`; what they share is exactly the surface the fault schedule (sim/faults.py)
and the liveness phase (sim/liveness.py) drive, so both run unchanged on either.
Clients sit outside the cluster, on links of their own (`client_latency`): partitions
between nodes do not cut them off.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from raft.messages import Envelope
from raft.node import RaftNode, Role
from sim.events import NS_PER_MS, EventLoop
from sim.network import Network
from sim.trace import Trace

if TYPE_CHECKING:
    from sim.faults import FaultSchedule


class Host(Protocol):
    """What the world needs of a host (sim/node_host.py, sim/broker_host.py)."""

    id: int
    up: bool
    paused: bool

    @property
    def node(self) -> RaftNode | None:
        """The Raft node the host runs, None while it is down."""
        ...

    def start(self) -> None: ...

    def receive(self, env: Envelope) -> None: ...


H = TypeVar("H", bound=Host)


class World(Generic[H]):
    def __init__(
        self, loop: EventLoop, trace: Trace, rng: random.Random, node_ids: Sequence[int]
    ) -> None:
        self.loop = loop
        self.trace = trace
        self.node_ids = tuple(node_ids)
        self.faults: FaultSchedule | None = None
        # The streams are drawn in this order, then one per host (`add_host`).
        self._rng = random.Random(rng.getrandbits(64))
        self._receivers: dict[int, Callable[[Envelope], None]] = {}
        self.network = Network(
            loop, random.Random(rng.getrandbits(64)), trace, self.node_ids, self._receivers
        )
        self.hosts: dict[int, H] = {}
        self.client_latency_min_ns = NS_PER_MS // 2
        self.client_latency_max_ns = 2 * NS_PER_MS

    def add_host(self, host: H) -> None:
        """Put a host on the network (it receives the messages addressed to its id)."""
        self.hosts[host.id] = host
        self._receivers[host.id] = host.receive

    def start(self) -> None:
        for node_id in self.node_ids:
            self.hosts[node_id].start()

    def leader(self) -> H | None:
        """The live, running leader with the highest term, if any node thinks it leads
        (a deposed leader cut off by a partition may think so for a while)."""
        best: H | None = None
        best_term = -1
        for node_id in self.node_ids:
            host = self.hosts[node_id]
            node = host.node
            if (
                host.up
                and not host.paused
                and node is not None
                and node.role is Role.LEADER
                and node.term > best_term
            ):
                best, best_term = host, node.term
        return best

    def live_hosts(self) -> list[H]:
        return [self.hosts[n] for n in self.node_ids if self.hosts[n].up]

    def client_latency(self) -> int:
        """The one-way latency of a client link, drawn for each request and reply."""
        span = self.client_latency_max_ns - self.client_latency_min_ns
        return self.client_latency_min_ns + int(self._rng.random() * span)
