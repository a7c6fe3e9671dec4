"""The simulated world of one broker run: the event loop, the trace, the network, three
(or five) broker hosts of one Raft group, and the client links.

It offers the same surface as sim/cluster.py (`loop`, `trace`, `network`, `node_ids`,
`hosts`, `leader()`, `live_hosts()`, `faults`), so the fault schedule of sim/faults.py
drives broker hosts unchanged: the same crashes, power cuts, partitions, pauses and
drift that `mq sim raft` injects.

Clients (producers, consumers) reach nodes over links of their own: a partition
between nodes does not cut a client off, a request to a crashed node is lost (the
client times out), a request to a paused node waits in its socket buffer. Requests
and responses cross the links as encoded frames (mq/protocol.py), so the wire codec
runs on every request.

Each client has one connection to each node, named by a token stable for the run
(`connection_token`): the host passes it to `core.handle(..., connection=token)`, so
a HEARTBEAT's member is tied to it, and a `Notify` the core emits for that token is
carried back over the link to the client's notification callback.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from mq.broker.config import BrokerConfig
from mq.protocol import Frame, decode_frame, encode_frame
from sim.broker_host import BrokerHost
from sim.events import EventLoop
from sim.trace import Trace
from sim.world import World

GROUP = "g1"
# The workload stores 2-5 KB a second under faults: an 8 KiB segment fills in a few
# seconds, so retention (whole segments only) deletes a dozen in a 20 s run.
SEGMENT_BYTES = 8 << 10
RETENTION_MS = 3000
RETENTION_CHECK_MS = 100


def node_address(node_id: int) -> str:
    return f"10.0.0.{node_id}:10911"


def broker_configs(node_ids: Sequence[int], **overrides: Any) -> dict[int, BrokerConfig]:
    """One BrokerConfig per node, sized for simulation: small CommitLog segments (they
    roll every few seconds of workload), small ConsumeQueue segments and index files,
    frequent checkpoints and state snapshots (so recovery replays from them), and Raft
    timeouts of 100 ms with 10 ms ticks, as `mq sim raft` uses. `disk_refuse_ratio` is
    1.0: a leader whose disk fills must meet the full disk itself (refused segments,
    interrupted dispatch), not refuse sends a second ahead of it (unit-tested apart).

    Retention is on: a segment goes once its newest message is `RETENTION_MS` old
    (checked every `RETENTION_CHECK_MS`), so a node deletes several in a run, and a
    follower away for a few seconds needs a snapshot to catch up. `disk_retention_ratio`
    is 1.0, so a full disk never turns into deletion by disk pressure: retention is by
    age alone, which the `retention` checker verifies message by message."""
    peers = {n: node_address(n) for n in node_ids}
    base: dict[str, Any] = {
        "cluster": "sim",
        "group": GROUP,
        "peers": peers,
        "segment_bytes": SEGMENT_BYTES,
        "cq_units_per_segment": 64,
        "index_slots": 64,
        "index_entries_max": 512,
        "tick_ms": 10,
        "election_ms": 100,
        "heartbeat_ms": 50,
        "send_timeout_ms": 1000,
        "checkpoint_interval_ms": 300,
        "state_snapshot_interval_ms": 1000,
        "default_queues": 4,
        "disk_refuse_ratio": 1.0,
        "retention_ms": RETENTION_MS,
        "retention_check_interval_ms": RETENTION_CHECK_MS,
        "disk_retention_ratio": 1.0,
        "raft_index_chunk_entries": 8,
    }
    base.update(overrides)
    return {
        n: BrokerConfig(node_id=n, listen=peers[n], data_dir=f"/n{n}", **base) for n in node_ids
    }


class BrokerCluster(World[BrokerHost]):
    def __init__(
        self,
        loop: EventLoop,
        trace: Trace,
        rng: random.Random,
        configs: dict[int, BrokerConfig],
    ) -> None:
        super().__init__(loop, trace, rng, sorted(configs))
        for node_id in self.node_ids:
            self.add_host(
                BrokerHost(self, node_id, configs[node_id], random.Random(rng.getrandbits(64)))
            )
        self.address_to_id = {node_address(n): n for n in self.node_ids}
        self._clients: dict[str, Callable[[int, Frame], None]] = {}
        # Called with each host that (re)starts (after recovery, before it runs), and
        # with each response a node sends, before it travels (the checkers' hooks).
        self.on_host_start: Callable[[BrokerHost], None] = lambda host: None
        self.on_response: Callable[[BrokerHost, Frame], None] = lambda host, frame: None
        # Called with each response a node sends and its reply id (after on_response).
        self.on_reply: Callable[[BrokerHost, int, Frame], None] = lambda h, r, f: None
        # Called with each client request a node is about to serve (client name, frame)
        # and with each Notify a node emits (token, frame), before it travels.
        self.on_request: Callable[[BrokerHost, str, Frame], None] = lambda h, c, f: None
        self.on_notify: Callable[[BrokerHost, int, Frame], None] = lambda h, t, f: None
        self._reply_owner: dict[int, str] = {}
        self._client_numbers: dict[str, int] = {}
        self._notified: dict[str, Callable[[int, Frame], None]] = {}

    def on_start(self, host: BrokerHost) -> None:
        self.on_host_start(host)

    # -- clients

    def register_client(
        self,
        name: str,
        on_response: Callable[[int, Frame], None],
        on_notify: Callable[[int, Frame], None] | None = None,
    ) -> None:
        """`on_notify(node_id, frame)` receives the one-way frames nodes push to it."""
        self._clients[name] = on_response
        self._client_numbers.setdefault(name, len(self._client_numbers) + 1)
        if on_notify is not None:
            self._notified[name] = on_notify

    def connection_token(self, client: str, node_id: int) -> int:
        """The token of `client`'s connection to `node_id`: fixed for the run (clients
        are registered in a fixed order), distinct per client and node."""
        return self._client_numbers[client] * 1000 + node_id

    def token_client(self, token: int) -> str | None:
        """The client a connection token belongs to (None if no client has it)."""
        number = token // 1000
        for name, n in self._client_numbers.items():
            if n == number:
                return name
        return None

    def notify(self, host: BrokerHost, token: int, frame: Frame) -> None:
        """A Notify output of `host`: checked, then carried to the client (dropped if
        the client does not listen, as a best-effort push may be)."""
        self.on_notify(host, token, frame)
        client = self.token_client(token)
        callback = self._notified.get(client) if client is not None else None
        if callback is None:
            return
        data = encode_frame(frame)
        self.loop.after(self.client_latency(), self._deliver, (callback, host.id, data))

    def send(self, client: str, node_id: int, reply_id: int, frame: Frame) -> None:
        """A request from `client` to a node; the response (if any) comes back later to
        the client's callback with `reply_id`. Reply ids are unique in the run."""
        self._reply_owner[reply_id] = client
        self.loop.after(
            self.client_latency(),
            self.hosts[node_id].client_request,
            (client, reply_id, encode_frame(frame)),
        )

    def reply(self, host: BrokerHost, reply_id: int, frame: Frame) -> None:
        client = self._reply_owner.pop(reply_id, None)
        if client is None:
            return
        self.on_response(host, frame)
        self.on_reply(host, reply_id, frame)
        on_response = self._clients[client]
        data = encode_frame(frame)
        self.loop.after(self.client_latency(), self._deliver, (on_response, reply_id, data))

    @staticmethod
    def _deliver(item: tuple[Callable[[int, Frame], None], int, bytes]) -> None:
        on_response, reply_id, data = item
        on_response(reply_id, decode_frame(data))
