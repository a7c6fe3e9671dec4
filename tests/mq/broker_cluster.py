"""A group of BrokerCores in one process, wired by a deterministic in-memory network.

It drives each core exactly as the trio server does (ready -> send -> run -> advance
-> send), with every node on its own SimFileSystem so a node can crash (losing its
unsynced writes) and restart from what its disk kept. Frames cross the "network" as
encoded bytes, so the RAFT_MESSAGE codec is exercised too. Time is `now_ms`, moved
only by `tick`.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from mq.broker.config import BrokerConfig
from mq.broker.core import BrokerCore, Output, PeerMessage, Reply
from mq.protocol import Frame, RequestCode, decode_frame, encode_frame, request
from storage.files import SimFileSystem
from storage.record import MessageRecord, encode_messages

TICK_MS = 10


def message_body(
    topic: str, queue_id: int, bodies: Sequence[bytes], prefix: str = "m", **extra: Any
) -> bytes:
    records = [
        MessageRecord(
            topic, body, queue_id, msg_id=f"{prefix}{i:030d}", born_timestamp_ms=1, **extra
        )
        for i, body in enumerate(bodies)
    ]
    buf, _sizes = encode_messages(records)
    return bytes(buf)


def send_request(
    topic: str,
    bodies: Sequence[bytes],
    *,
    queue_id: int = 0,
    producer_id: str | None = None,
    seq: int | None = None,
    prefix: str = "m",
) -> Frame:
    fields: dict[str, Any] = {"topic": topic, "queue_id": queue_id, "count": len(bodies)}
    if producer_id is not None:
        fields["producer_id"] = producer_id
        fields["seq"] = seq
    return request(RequestCode.SEND_BATCH, fields, message_body(topic, queue_id, bodies, prefix))


class CoreCluster:
    def __init__(self, size: int = 3, seed: int = 0, **overrides: Any) -> None:
        self.ids = tuple(range(1, size + 1))
        self.seed = seed
        self.now_ms = 1_000
        peers = {i: f"127.0.0.1:{20_000 + i}" for i in self.ids}
        base: dict[str, Any] = {
            "cluster": "c1",
            "group": "g1",
            "peers": peers,
            "segment_bytes": 256 << 10,
            "cq_units_per_segment": 1024,
            "index_slots": 512,
            "index_entries_max": 2048,
            "election_ms": 100,
            "heartbeat_ms": 10,
            "tick_ms": TICK_MS,
        }
        base.update(overrides)
        self.configs = {
            i: BrokerConfig(node_id=i, listen=peers[i], data_dir=f"/n{i}", **base) for i in self.ids
        }
        self.fss = {i: SimFileSystem(random.Random(seed * 100 + i)) for i in self.ids}
        self.cores: dict[int, BrokerCore] = {}
        self.network: deque[tuple[int, int, bytes]] = deque()
        self.blocked: set[tuple[int, int]] = set()
        self.drop: Callable[[int, int, Frame], bool] | None = None
        self.replies: dict[int, Frame] = {}
        self.events: list[tuple[int, Output]] = []
        self._reply_ids = itertools.count(1)
        for i in self.ids:
            self.start(i)

    # ------------------------------------------------------------------ members

    def start(self, node_id: int) -> BrokerCore:
        assert node_id not in self.cores
        core = BrokerCore(
            self.configs[node_id],
            self.fss[node_id],
            self.now_ms,
            rng=random.Random(self.seed * 1000 + node_id + len(self.events)),
        )
        self.cores[node_id] = core
        return core

    def crash(self, node_id: int) -> None:
        """Power cut: the core is gone, unsynced writes are lost (one may be torn)."""
        del self.cores[node_id]
        self.fss[node_id].crash()

    def stop(self, node_id: int) -> None:
        """Clean shutdown."""
        self.cores.pop(node_id).close(self.now_ms)

    def leader(self) -> int | None:
        leaders = [i for i, c in self.cores.items() if c.is_leader]
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.cores[i].raft.term)

    def followers(self) -> list[int]:
        leader = self.leader()
        return [i for i in self.cores if i != leader]

    def isolate(self, node_id: int) -> None:
        for other in self.ids:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.blocked.clear()

    # ------------------------------------------------------------------ driving

    def _route(self, src: int, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, PeerMessage):
                self.network.append((src, out.node_id, encode_frame(out.frame)))
            elif isinstance(out, Reply):
                assert out.reply_to not in self.replies, "one response per request"
                self.replies[out.reply_to] = out.frame
                self._check_flushed(src, out.frame)
            else:
                self.events.append((src, out))

    def _check_flushed(self, node_id: int, frame: Frame) -> None:
        """Sync flush: a send is acknowledged only once the answering node's log is
        fsynced past its messages."""
        core = self.cores.get(node_id)
        offset = frame.fields.get("commit_offset") if frame.ok else None
        if core is None or not isinstance(offset, int) or offset < 0:
            return
        if core.config.flush.value == "sync":
            assert core.commit_log.flushed_offset > offset, "acknowledged before fsync"

    def process(self, node_id: int) -> bool:
        core = self.cores.get(node_id)
        if core is None:
            return False
        progressed = False
        self._route(node_id, core.take_outputs())
        while (work := core.ready(self.now_ms)) is not None:
            progressed = True
            self._route(node_id, core.take_outputs())
            work.run()
            core.advance(work, self.now_ms)
            self._route(node_id, core.take_outputs())
        return progressed

    def deliver(self, src: int, dst: int, data: bytes) -> None:
        core = self.cores.get(dst)
        if core is None or (src, dst) in self.blocked:
            return
        frame = decode_frame(data)
        if self.drop is not None and self.drop(src, dst, frame):
            return
        assert core.handle(frame, 0, self.now_ms) is None
        self._route(dst, core.take_outputs())

    def pump(self) -> bool:
        progressed = False
        for i in self.ids:
            progressed |= self.process(i)
        count = len(self.network)
        for _ in range(count):
            self.deliver(*self.network.popleft())
        return progressed or count > 0

    def run(self, rounds_max: int = 10_000) -> None:
        for _ in range(rounds_max):
            if not self.pump():
                return
        raise AssertionError("no quiescence")

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.now_ms += TICK_MS
            for core in list(self.cores.values()):
                core.tick(self.now_ms)
            self.run()

    def elect(self, ticks_max: int = 2000) -> int:
        for _ in range(ticks_max):
            leader = self.leader()
            if leader is not None and all(
                c.raft.leader_id == leader for i, c in self.cores.items() if i != leader
            ):
                self.run()
                return leader
            self.tick()
        raise AssertionError("no leader elected")

    def settle(self, ticks: int = 5) -> None:
        """A few heartbeats: followers learn the leader's commit index and apply."""
        self.tick(ticks)

    # ------------------------------------------------------------------ requests

    def call(self, node_id: int, frame: Frame, connection: int | None = None) -> int:
        """Hand a request to a node (as if it came on client `connection`); returns its
        reply id (see `reply`)."""
        reply_id = next(self._reply_ids)
        response = self.cores[node_id].handle(frame, reply_id, self.now_ms, connection=connection)
        if response is not None:
            self.replies[reply_id] = response
        self._route(node_id, self.cores[node_id].take_outputs())
        return reply_id

    def reply(self, reply_id: int) -> Frame | None:
        return self.replies.get(reply_id)

    def request(
        self, node_id: int, frame: Frame, ticks_max: int = 50, connection: int | None = None
    ) -> Frame:
        """Send a request and drive the cluster until it is answered."""
        reply_id = self.call(node_id, frame, connection)
        self.run()
        for _ in range(ticks_max):
            response = self.replies.get(reply_id)
            if response is not None:
                return response
            self.tick()
        raise AssertionError(f"no response to {frame.code} from node {node_id}")

    def pull(
        self, node_id: int, topic: str, queue_id: int = 0, offset: int = 0, **fields: Any
    ) -> Frame:
        frame = request(
            RequestCode.PULL_MESSAGE,
            {"topic": topic, "queue_id": queue_id, "offset": offset, **fields},
        )
        return self.request(node_id, frame)
