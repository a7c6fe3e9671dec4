"""The simulated world of one run: the event loop, the trace, the network, the node
hosts and the checkers, wired together.

Clients reach nodes over their own links (`client_latency_*`): a client is outside the
cluster, so partitions between nodes do not cut it off, but a request to a node that is
down or paused is lost and the client finds out by timing out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from raft.config import Config
from raft.node import Role
from sim.checkers import Checkers
from sim.events import EventLoop
from sim.node_host import NodeHost
from sim.process import TICK_NS
from sim.trace import Trace
from sim.world import World

_FOLLOWER = Role.FOLLOWER


class Cluster(World[NodeHost]):
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
        self.checkers = checkers
        self.compact_every = compact_every
        self.compact_keep = compact_keep
        super().__init__(loop, trace, rng, node_ids)
        for node_id in self.node_ids:
            self.add_host(
                NodeHost(self, node_id, self.node_ids, config, random.Random(rng.getrandbits(64)))
            )
        hosts = [self.hosts[n] for n in self.node_ids]
        # The grid ticks nodes in a rotating order: rotation k starts with node k.
        self._grid_orders = [hosts[k:] + hosts[:k] for k in range(len(hosts))]
        self._clients: dict[int, Callable[[tuple[Any, ...]], None]] = {}

    def start(self) -> None:
        super().start()
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
                assert node is not None  # a host that is up has its node
                node.tick()
                # The common case inline: a follower whose tick changed nothing (see
                # NodeHost.tick for why there is then nothing to poll).
                role = node.role
                if (
                    role is _FOLLOWER
                    and host.seen_role is _FOLLOWER
                    and node.term == host.seen_term
                ):
                    continue
                host.after_tick()
        self.loop.after(TICK_NS, self._grid_tick, count + 1)

    # -- clients

    def register_client(self, client_id: int, on_reply: Callable[[tuple[Any, ...]], None]) -> None:
        self._clients[client_id] = on_reply

    def client_request(
        self, client: int, node_id: int, seq: int, attempt: int, data: bytes
    ) -> None:
        """Send a proposal from a client to a node; the reply comes back asynchronously."""
        self.loop.after(
            self.client_latency(), self.hosts[node_id].client_request, (client, seq, attempt, data)
        )

    def client_reply(self, client: int, reply: tuple[Any, ...]) -> None:
        on_reply = self._clients.get(client)
        if on_reply is not None:
            self.loop.after(self.client_latency(), on_reply, reply)
