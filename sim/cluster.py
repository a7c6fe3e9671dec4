"""The simulated world of one run: the event loop, the trace, the network, the node
hosts and the checkers, wired together.

Clients reach nodes over their own links (`client_latency_*`): a client is outside the
cluster, so partitions between nodes do not cut it off, but a request to a node that is
down or paused is lost and the client finds out by timing out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from raft.config import Config
from raft.messages import Envelope
from raft.node import Role
from sim.checkers import Checkers
from sim.events import NS_PER_MS, EventLoop
from sim.network import Network
from sim.node_host import TICK_NS, NodeHost
from sim.trace import Trace

if TYPE_CHECKING:
    from sim.faults import FaultSchedule

_FOLLOWER = Role.FOLLOWER


class Cluster:
    def __init__(
        self,
        loop: EventLoop,
        trace: Trace,
        rng: random.Random,
        node_ids: Sequence[int],
        config: Config,
        checkers: Checkers,
        compact_every: int = 0,
        compact_keep: int = 0,
    ) -> None:
        self.loop = loop
        self.trace = trace
        self.checkers = checkers
        self.node_ids = tuple(node_ids)
        self.faults: FaultSchedule | None = None
        self.compact_every = compact_every
        self.compact_keep = compact_keep
        self._rng = random.Random(rng.getrandbits(64))
        self._receivers: dict[int, Callable[[Envelope], None]] = {}
        self.network = Network(
            loop, random.Random(rng.getrandbits(64)), trace, self.node_ids, self._receivers
        )
        self.hosts: dict[int, NodeHost] = {}
        for node_id in self.node_ids:
            self.hosts[node_id] = NodeHost(
                self, node_id, self.node_ids, config, random.Random(rng.getrandbits(64))
            )
            self._receivers[node_id] = self.hosts[node_id].receive
        hosts = [self.hosts[n] for n in self.node_ids]
        # The grid ticks nodes in a rotating order: rotation k starts with node k.
        self._grid_orders = [hosts[k:] + hosts[:k] for k in range(len(hosts))]
        self._clients: dict[int, Callable[[tuple[Any, ...]], None]] = {}
        self.client_latency_min_ns = NS_PER_MS // 2
        self.client_latency_max_ns = 2 * NS_PER_MS

    def start(self) -> None:
        for node_id in self.node_ids:
            self.hosts[node_id].start()
        self.loop.after(1 + int(self._rng.random() * TICK_NS), self._grid_tick, 0)

    def _grid_tick(self, count: int) -> None:
        """Tick every live node on the shared grid, starting with a different node each
        time so no node is systematically first when timeouts coincide.

        Why a grid: one event per 10 ms for the whole cluster instead of one per node
        halves the cost of an idle cluster. Nodes whose clocks drift leave the grid and
        tick on their own (NodeHost.set_tick)."""
        orders = self._grid_orders
        for host in orders[count % len(orders)]:
            if host.up and not host.paused and host.tick_ns == TICK_NS:
                node = host.node
                node.tick()  # type: ignore[union-attr]
                # The common case inline: a follower whose tick changed nothing (see
                # NodeHost.tick for why there is then nothing to poll).
                role = node.role  # type: ignore[union-attr]
                if (
                    role is _FOLLOWER
                    and host.seen_role is _FOLLOWER
                    and node.term == host.seen_term
                ):  # type: ignore[union-attr]
                    continue
                host.after_tick()
        self.loop.after(TICK_NS, self._grid_tick, count + 1)

    def leader(self) -> NodeHost | None:
        """The live leader with the highest term, if any node thinks it leads."""
        best: NodeHost | None = None
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

    def live_hosts(self) -> list[NodeHost]:
        return [self.hosts[n] for n in self.node_ids if self.hosts[n].up]

    # -- clients

    def register_client(self, client_id: int, on_reply: Callable[[tuple[Any, ...]], None]) -> None:
        self._clients[client_id] = on_reply

    def _client_latency(self) -> int:
        span = self.client_latency_max_ns - self.client_latency_min_ns
        return self.client_latency_min_ns + int(self._rng.random() * span)

    def client_request(
        self, client: int, node_id: int, seq: int, attempt: int, data: bytes
    ) -> None:
        """Send a proposal from a client to a node; the reply comes back asynchronously."""
        self.loop.after(
            self._client_latency(), self.hosts[node_id].client_request, (client, seq, attempt, data)
        )

    def client_reply(self, client: int, reply: tuple[Any, ...]) -> None:
        on_reply = self._clients.get(client)
        if on_reply is not None:
            self.loop.after(self._client_latency(), on_reply, reply)
