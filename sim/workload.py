"""Clients that write through the cluster the way a producer would.

A client has one operation in flight. It sends it to the node it believes leads; a
follower answers with a redirect (`NotLeaderError.leader_id`) and the client follows
it. The node that accepts the proposal answers when it *applies* the entry at the
index and term `propose` returned: that is the acknowledgement, recorded with the
checkers (`on_ack`), and only then does the client move to its next operation. An
operation not acknowledged within `timeout_ns` is retried, to another node, with the
same (client, seq): the state machine dedupes retries, so an operation that committed
twice is applied once (sim/state_machine.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from sim.checkers import Checkers
from sim.cluster import Cluster
from sim.events import NS_PER_MS
from sim.state_machine import encode_op


class Client:
    def __init__(
        self,
        cluster: Cluster,
        client_id: int,
        rng: random.Random,
        think_mean_ns: int,
        timeout_ns: int = 500 * NS_PER_MS,
        pad_bytes: int = 0,
        ops_max: int | None = None,
        on_ack: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.id = client_id
        self._rng = rng
        self._loop = cluster.loop
        self._trace = cluster.trace
        self._checkers: Checkers = cluster.checkers
        self._nodes = cluster.node_ids
        self.think_mean_ns = think_mean_ns
        self.timeout_ns = timeout_ns
        self.pad_bytes = pad_bytes
        self.ops_max = ops_max
        self.on_ack = on_ack
        self.seq = 0
        self.attempt = 0
        self.acked_seq = 0
        self.target = rng.choice(self._nodes)
        self.stopped = False
        self.retries = 0
        self._redirects = 0
        cluster.register_client(client_id, self.on_reply)

    def start(self) -> None:
        self._loop.after(self._think(), self._next)

    def stop(self) -> None:
        """No new operations; the one in flight still completes (or times out for good)."""
        self.stopped = True

    def _think(self) -> int:
        return 1 + int(self._rng.expovariate(1.0) * self.think_mean_ns)

    def _next(self, _: Any = None) -> None:
        if self.stopped or (self.ops_max is not None and self.seq >= self.ops_max):
            return
        self.seq += 1
        self._redirects = 0
        self._send()

    def _send(self, _: Any = None) -> None:
        if self.acked_seq == self.seq:
            return
        self.attempt += 1
        data = encode_op(self.id, self.seq, self.pad_bytes)
        self._trace.emit(f"c{self.id}:s{self.seq} try {self.attempt} -> n{self.target}")
        self.cluster.client_request(self.id, self.target, self.seq, self.attempt, data)
        self._loop.after(self.timeout_ns, self._timeout, (self.seq, self.attempt))

    def _other_node(self) -> int:
        others = [n for n in self._nodes if n != self.target]
        return self._rng.choice(others) if others else self.target

    def _timeout(self, key: tuple[int, int]) -> None:
        seq, attempt = key
        if seq != self.seq or attempt != self.attempt or self.acked_seq == seq:
            return
        if self.stopped and self.ops_max is None:
            self._trace.emit(f"c{self.id}:s{seq} timed out, client stopped")
            return
        self.retries += 1
        self.target = self._other_node()
        self._trace.emit(f"c{self.id}:s{seq} timed out")
        self._send()

    def on_reply(self, reply: tuple[Any, ...]) -> None:
        verdict, seq, attempt, a, b = reply
        if seq != self.seq or self.acked_seq == seq:
            return
        if verdict == "acked":
            self.acked_seq = seq
            self._trace.emit(f"c{self.id}:s{seq} ACK {a}/{b}")
            self._checkers.on_ack(self.id, seq, a, b)
            if self.on_ack is not None:
                self.on_ack(seq, a, b)
            self._loop.after(self._think(), self._next)
            return
        if attempt != self.attempt:
            return
        if verdict == "redirect":
            self._redirects += 1
            self.target = a if a else self._other_node()
            backoff = 2 * NS_PER_MS if a and self._redirects < 10 else 50 * NS_PER_MS
            self._loop.after(backoff, self._send)
        elif verdict == "busy":
            self._loop.after(50 * NS_PER_MS, self._send)
        elif verdict == "lost":
            self._trace.emit(f"c{self.id}:s{seq} entry {a}/{b} was overwritten")
            self._loop.after(2 * NS_PER_MS, self._send)


class Workload:
    """`clients` clients, each thinking `think_mean_ns` on average between operations."""

    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        clients: int,
        think_mean_ns: int,
        pad_bytes: int,
    ) -> None:
        self.clients: Sequence[Client] = [
            Client(
                cluster, c, random.Random(rng.getrandbits(64)), think_mean_ns, pad_bytes=pad_bytes
            )
            for c in range(1, clients + 1)
        ]

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.stop()

    @property
    def acked(self) -> int:
        return sum(c.acked_seq for c in self.clients)
