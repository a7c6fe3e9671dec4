"""A fake broker cluster that speaks docs/broker-api.md over loopback, for client tests.

Each `FakeGroup` is a broker group of `nodes` real TCP servers (trio, `serve_tcp`) that
share one in-memory store, so "replication" is instant and any node serves committed
reads. One node is the leader; the others answer writes with NOT_LEADER naming it.
Every node registers with the real NameServers, and again whenever the leader or the
topic table changes, exactly as the contract says brokers do.

Tests steer it with `Fault` rules (answer an error, hang, store and then hang) and
inspect `requests`, the log of every request each node received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from mq.nameserver.server import NameServer, run_nameserver
from mq.protocol import ErrorCode, Frame, RequestCode, request
from mq.route import BrokerRegistration, Role, TopicConfig
from mq.rpc.client import connect
from mq.rpc.server import Peer, listener_port, serve_tcp
from storage.record import MessageRecord, frame_size_and_magic, tag_hash

SEND_CODES = (RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH)
CONSUMER_CODES = (
    RequestCode.HEARTBEAT,
    RequestCode.UNREGISTER_CLIENT,
    RequestCode.GET_CONSUMER_LIST,
    RequestCode.GET_CONSUMER_GROUPS,
    RequestCode.UPDATE_CONSUMER_OFFSET,
    RequestCode.QUERY_CONSUMER_OFFSET,
    RequestCode.RESET_CONSUMER_OFFSET,
)


@dataclass
class Fault:
    """Applied to the next `times` requests with `code` (None: any) reaching `node`
    (None: any node of the group). `action`: "error" answers `error` with `fields`;
    "hang" never answers; "store_then_hang" handles the request, then never answers;
    "delay" handles it after `delay_ms` (on trio's clock: virtual under MockClock)."""

    code: int | None
    action: str = "error"
    error: int = ErrorCode.SYSTEM_BUSY
    fields: dict[str, Any] = field(default_factory=dict)
    times: int = 1
    node: int | None = None
    delay_ms: int = 0


@dataclass
class Stored:
    record: MessageRecord
    frame: bytes
    tag_hash: int


@dataclass
class Member:
    """A consumer as one node knows it: from its heartbeats, with their connection."""

    client_id: str
    peer: Peer
    model: str
    topics: list[str]


@dataclass
class Received:
    group: str
    node: int
    address: str
    code: int
    fields: dict[str, Any]
    body: bytes
    oneway: bool = False


class FakeNode:
    def __init__(self, group: FakeGroup, node_id: int) -> None:
        self.group = group
        self.node_id = node_id
        self.address = ""
        self.scope = trio.CancelScope()
        self.alive = False
        self.members: dict[str, dict[str, Member]] = {}
        """Consumer group -> client id -> member: per node and in memory, as the
        contract says (every node is sent heartbeats)."""
        self.notified: list[dict[str, Any]] = []
        """Fields of every NOTIFY_CONSUMER_IDS_CHANGED this node pushed."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(serve_tcp, self.handle, "127.0.0.1", 0))
                self.address = f"127.0.0.1:{listener_port(listeners)}"
                self.alive = True
                task_status.started()
        self.alive = False

    def kill(self) -> None:
        """Stop listening and drop every connection, like a crashed process."""
        self.scope.cancel()
        self.members.clear()

    def member_ids(self, group: str) -> list[str]:
        return sorted(self.members.get(group, {}))

    async def notify(self, group: str, **extra: Any) -> None:
        """Push NOTIFY_CONSUMER_IDS_CHANGED to every member of `group` on this node."""
        fields = {"group": group} | extra
        self.notified.append(fields)
        for member in list(self.members.get(group, {}).values()):
            try:
                await member.peer.send_oneway(
                    request(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, fields)
                )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def prune_closed(self, group: str) -> None:
        """Forget members whose connection closed (the real broker notices at once)."""
        members = self.members.get(group, {})
        gone = [cid for cid, m in members.items() if m.peer.closed]
        for cid in gone:
            del members[cid]
        if gone:
            await self.notify(group)

    async def handle(self, frame: Frame, peer: Peer) -> Frame | None:
        group = self.group
        fields = dict(frame.fields)
        received = Received(
            group.name, self.node_id, self.address, frame.code, fields, frame.body, frame.is_oneway
        )
        group.requests.append(received)
        group.cluster.requests.append(received)
        fault = group.take_fault(frame.code, self.node_id)
        if fault is not None:
            if fault.action == "error":
                return frame.make_response(fault.fields, error=fault.error, remark="injected")
            if fault.action == "hang":
                await trio.sleep_forever()
            if fault.action == "delay":
                await trio.sleep(fault.delay_ms / 1000)
            if fault.action == "store_then_hang":
                group.handle_now(self, frame)
                await trio.sleep_forever()
        if frame.code in CONSUMER_CODES:
            return await group.handle_consumer(self, frame, peer)
        if frame.code in (RequestCode.PULL_MESSAGE, RequestCode.CREATE_TOPIC):
            return await group.handle_waiting(self, frame)
        return group.handle_now(self, frame)


class FakeGroup:
    def __init__(
        self,
        cluster: FakeCluster,
        name: str,
        nodes: int,
        topics: dict[str, TopicConfig],
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.nodes = [FakeNode(self, i) for i in range(nodes)]
        self.leader_id: int | None = 0
        self.term = 1
        self.topics = dict(topics)
        self.queues: dict[tuple[str, int], list[Stored]] = {}
        self.sent: dict[tuple[str, int], dict[str, Any]] = {}
        self.last_seq: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.requests: list[Received] = []
        self.commit_offset = 0
        self.collide_tags = False
        """Make every tag hash match (a worst-case hash collision): the client's exact
        tag check must then do all the filtering."""
        self.new_message = trio.Event()
        self.consumer_offsets: dict[tuple[str, str, int], int] = {}
        """(consumer group, topic, queue id) -> committed offset: replicated, so one
        map for the whole group."""
        self.generations: dict[tuple[str, str], int] = {}
        self.disk_full: tuple[str, ...] = ()
        """What GET_BROKER_STATUS says a full disk holds back."""

    @property
    def leader(self) -> FakeNode | None:
        return None if self.leader_id is None else self.nodes[self.leader_id]

    def node(self, node_id: int) -> FakeNode:
        return self.nodes[node_id]

    def fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take_fault(self, code: int, node_id: int) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.code in (None, code) and fault.node in (None, node_id):
                fault.times -= 1
                return fault
        return None

    def sends(self) -> list[Received]:
        return [r for r in self.requests if r.code in SEND_CODES]

    def messages(self, topic: str, queue_id: int) -> list[MessageRecord]:
        return [s.record for s in self.queues.get((topic, queue_id), [])]

    def all_messages(self) -> list[MessageRecord]:
        return [s.record for stored in self.queues.values() for s in stored]

    async def elect(self, leader_id: int | None, *, register: bool = True) -> None:
        """Move leadership (a new term); with `register`, tell the NameServers now."""
        self.leader_id = leader_id
        self.term += 1
        if register:
            await self.register()

    async def register(self) -> None:
        for address in self.cluster.namesrv:
            async with connect(address) as conn:
                for node in self.nodes:
                    if not node.alive:
                        continue
                    role = Role.LEADER if node.node_id == self.leader_id else Role.FOLLOWER
                    registration = BrokerRegistration(
                        cluster=self.cluster.name,
                        group=self.name,
                        node_id=node.node_id,
                        address=node.address,
                        role=role,
                        term=self.term,
                        topics=self.topics,
                    )
                    await conn.request(
                        request(RequestCode.REGISTER_BROKER, registration.to_fields())
                    )

    # --- the contract ------------------------------------------------------------------

    def handle_now(self, node: FakeNode, frame: Frame) -> Frame:
        f = frame.fields
        if frame.code in SEND_CODES:
            return self._send(node, frame)
        if frame.code == RequestCode.PULL_MESSAGE:
            return self._pull(frame)
        if frame.code in (RequestCode.GET_MIN_OFFSET, RequestCode.GET_MAX_OFFSET):
            stored = self.queues.get((f["topic"], f["queue_id"]), [])
            offset = 0 if frame.code == RequestCode.GET_MIN_OFFSET else len(stored)
            return frame.make_response({"offset": offset})
        if frame.code == RequestCode.SEARCH_OFFSET_BY_TIMESTAMP:
            stored = self.queues.get((f["topic"], f["queue_id"]), [])
            offset = next(
                (
                    i
                    for i, s in enumerate(stored)
                    if s.record.store_timestamp_ms >= f["timestamp_ms"]
                ),
                len(stored),
            )
            return frame.make_response({"offset": offset})
        if frame.code == RequestCode.VIEW_MESSAGE_BY_ID:
            for stored in self.queues.values():
                for s in stored:
                    if s.record.msg_id == f["msg_id"] and s.record.topic == f["topic"]:
                        return frame.make_response({}, s.frame)
            return frame.make_error(ErrorCode.QUERY_NOT_FOUND, "no such message")
        if frame.code == RequestCode.GET_ALL_TOPICS:
            return frame.make_response(
                {"topics": {n: c.to_fields() for n, c in self.topics.items()}}
            )
        if frame.code == RequestCode.GET_BROKER_STATUS:
            leader = self.leader
            return frame.make_response(
                {
                    "cluster": self.cluster.name,
                    "group": self.name,
                    "node_id": node.node_id,
                    "address": node.address,
                    "role": "leader" if node is leader else "follower",
                    "term": self.term,
                    "leader": leader.address if leader else None,
                    "commit_index": 0,
                    "applied_index": 0,
                    "commit_offset": self.commit_offset,
                    "max_offset": self.commit_offset,
                    "pid": 1,
                    "disk_full": list(self.disk_full),
                }
            )
        return frame.make_error(ErrorCode.REQUEST_CODE_NOT_SUPPORTED, "fake broker")

    async def handle_waiting(self, node: FakeNode, frame: Frame) -> Frame:
        if frame.code == RequestCode.CREATE_TOPIC:
            if node is not self.leader:
                return self._not_leader(frame)
            f = frame.fields
            self.topics[f["topic"]] = TopicConfig(
                read_queues=f.get("read_queues", 8),
                write_queues=f.get("write_queues", 8),
                perm=f.get("perm", 6),
            )
            await self.register()
            return frame.make_response()
        assert frame.code == RequestCode.PULL_MESSAGE
        response = self._pull(frame)
        suspend_ms = frame.fields.get("suspend_ms", 0)
        if response.fields["status"] == "NO_NEW_MSG" and suspend_ms:
            with trio.move_on_after(suspend_ms / 1000):
                await self.new_message.wait()
            response = self._pull(frame)
        return response

    async def handle_consumer(self, node: FakeNode, frame: Frame, peer: Peer) -> Frame:
        """The consumer-group requests of docs/broker-api.md, "Consumer groups"."""
        f = frame.fields
        code = frame.code
        if code == RequestCode.HEARTBEAT:
            members = node.members.setdefault(f["group"], {})
            known = members.get(f["client_id"])
            members[f["client_id"]] = Member(f["client_id"], peer, f["model"], list(f["topics"]))
            if known is None or known.peer is not peer:
                await node.notify(f["group"])
            return frame.make_response()
        if code == RequestCode.UNREGISTER_CLIENT:
            if node.members.get(f["group"], {}).pop(f["client_id"], None) is not None:
                await node.notify(f["group"])
            return frame.make_response()
        if code == RequestCode.GET_CONSUMER_LIST:
            await node.prune_closed(f["group"])
            return frame.make_response({"client_ids": node.member_ids(f["group"])})
        if code == RequestCode.GET_CONSUMER_GROUPS:
            groups: dict[str, dict[str, Any]] = {}
            for name, members in node.members.items():
                if members:
                    groups[name] = {
                        "members": sorted(members),
                        "model": next(iter(members.values())).model,
                        "topics": sorted({t for m in members.values() for t in m.topics}),
                    }
            for name, topic, _ in self.consumer_offsets:
                entry = groups.setdefault(name, {"members": [], "model": None, "topics": []})
                if topic not in entry["topics"]:
                    entry["topics"] = sorted([*entry["topics"], topic])
            return frame.make_response({"groups": groups})
        if code == RequestCode.QUERY_CONSUMER_OFFSET:
            name, topic = f["group"], f["topic"]
            offsets = sorted(
                [q, o]
                for (g, t, q), o in self.consumer_offsets.items()
                if (g, t) == (name, topic) and f.get("queue_id") in (None, q)
            )
            return frame.make_response(
                {"offsets": offsets, "generation": self.generations.get((name, topic), 0)}
            )
        if node is not self.leader:
            return self._not_leader(frame)
        if code == RequestCode.UPDATE_CONSUMER_OFFSET:
            stale = []
            for topic, queue_id, offset, generation in f["offsets"]:
                if generation < self.generations.get((f["group"], topic), 0):
                    stale.append([topic, queue_id])
                else:
                    self.consumer_offsets[(f["group"], topic, queue_id)] = offset
            return frame.make_response({"stale": stale})
        assert code == RequestCode.RESET_CONSUMER_OFFSET
        name, topic, to = f["group"], f["topic"], f["to"]
        config = self.topics.get(topic)
        if config is None:
            return frame.make_error(ErrorCode.TOPIC_NOT_EXIST, f"no topic {topic}")
        offsets = []
        for queue_id in range(config.read_queues):
            stored = self.queues.get((topic, queue_id), [])
            if to == "first":
                offset = 0
            elif to == "last":
                offset = len(stored)
            else:
                offset = next(
                    (i for i, s in enumerate(stored)
                     if s.record.store_timestamp_ms >= f["timestamp_ms"]),
                    len(stored),
                )  # fmt: skip
            self.consumer_offsets[(name, topic, queue_id)] = offset
            offsets.append([queue_id, offset])
        generation = self.generations.get((name, topic), 0) + 1
        self.generations[(name, topic)] = generation
        # Only the node that served the reset notifies: members heartbeat every node.
        await node.notify(name, reset_topic=topic)
        return frame.make_response({"offsets": offsets, "generation": generation})

    def _not_leader(self, frame: Frame) -> Frame:
        leader = self.leader
        return frame.make_response(
            {"leader": leader.address if leader else None, "group": self.name},
            error=ErrorCode.NOT_LEADER,
            remark="not the leader",
        )

    def _send(self, node: FakeNode, frame: Frame) -> Frame:
        if node is not self.leader:
            return self._not_leader(frame)
        f = frame.fields
        topic, queue_id = f["topic"], f["queue_id"]
        if topic not in self.topics:
            return frame.make_error(ErrorCode.TOPIC_NOT_EXIST, f"no topic {topic}")
        write_queues = self.topics[topic].write_queues
        if queue_id >= write_queues:
            return frame.make_response(
                {"write_queues": write_queues}, error=ErrorCode.NO_ROUTE, remark="stale route"
            )
        key = (f.get("producer_id"), f.get("seq"))
        if key[0] is not None:
            # The real broker's rule (docs/broker-api.md): only each producer's last
            # batch is remembered; a seq below it is an old duplicate, result unknown.
            last = self.last_seq.get(key[0])
            if last is not None and key[1] < last:
                return frame.make_response(
                    {"msg_ids": [], "queue_id": queue_id, "queue_offset": -1,
                     "commit_offset": -1, "duplicate": True}
                )  # fmt: skip
            if key in self.sent:
                return frame.make_response(self.sent[key] | {"duplicate": True})
        records = []
        body = memoryview(bytes(frame.body))
        pos = 0
        while pos < len(body):
            size, _ = frame_size_and_magic(body[pos:])
            records.append(MessageRecord.decode(body[pos : pos + size]))
            pos += size
        if len(records) != f["count"] or any(
            r.topic != topic or r.queue_id != queue_id for r in records
        ):
            return frame.make_error(ErrorCode.INVALID_REQUEST, "frames do not match the fields")
        stored = self.queues.setdefault((topic, queue_id), [])
        first = len(stored)
        for record in records:
            record.store_timestamp_ms = self.cluster.wall_ms
            stored.append(Stored(record, record.encode(), tag_hash(record.tags)))
            self.commit_offset += 1
        result = {
            "msg_ids": [r.msg_id for r in records],
            "queue_id": queue_id,
            "queue_offset": first,
            "commit_offset": self.commit_offset,
            "duplicate": False,
        }
        if key[0] is not None:
            self.sent[key] = result
            self.last_seq[key[0]] = key[1]
        self.new_message.set()
        self.new_message = trio.Event()
        return frame.make_response(result)

    def _pull(self, frame: Frame) -> Frame:
        f = frame.fields
        stored = self.queues.get((f["topic"], f["queue_id"]), [])
        offset, max_count = f["offset"], f.get("max_count", 32)
        hashes = f.get("tag_hashes")
        status, next_offset = "FOUND", offset
        found: list[tuple[int, Stored]] = []
        if offset > len(stored):
            status, next_offset = "OFFSET_ILLEGAL", len(stored)
        elif offset == len(stored):
            status = "NO_NEW_MSG"
        else:
            end = min(len(stored), offset + max_count)
            for i in range(offset, end):
                s = stored[i]
                if hashes is None or self.collide_tags or s.tag_hash in hashes:
                    found.append((i, s))
            next_offset = end
            if not found:
                status = "NO_MATCHED_MSG"
        return frame.make_response(
            {
                "status": status,
                "next_offset": next_offset,
                "min_offset": 0,
                "max_offset": len(stored),
                "queue_offsets": [i for i, _ in found],
            },
            b"".join(s.frame for _, s in found),
        )


class FakeCluster:
    def __init__(self, nursery: trio.Nursery, namesrv: list[str], name: str = "c1") -> None:
        self.nursery = nursery
        self.namesrv = namesrv
        self.name = name
        self.groups: dict[str, FakeGroup] = {}
        self.requests: list[Received] = []
        """Every request any node received, in arrival order."""
        self.wall_ms = 1_700_000_000_000

    async def add_group(
        self, name: str, *, nodes: int = 3, topics: dict[str, TopicConfig] | None = None
    ) -> FakeGroup:
        group = FakeGroup(self, name, nodes, topics if topics is not None else {})
        for node in group.nodes:
            await self.nursery.start(node.serve)
        self.groups[name] = group
        await group.register()
        return group

    def group(self, name: str) -> FakeGroup:
        return self.groups[name]

    def sends(self) -> list[Received]:
        return [r for r in self.requests if r.code in SEND_CODES]


@dataclass
class Env:
    namesrvs: list[NameServer]
    cluster: FakeCluster

    @property
    def namesrv(self) -> list[str]:
        return [n.address for n in self.namesrvs]

    def group(self, name: str) -> FakeGroup:
        return self.cluster.group(name)


ORDERS = TopicConfig(read_queues=4, write_queues=4)


@asynccontextmanager
async def fake_env(
    groups: Sequence[str] = ("g1", "g2"),
    *,
    nodes: int = 3,
    topics: dict[str, TopicConfig] | None = None,
    namesrvs: int = 1,
) -> AsyncIterator[Env]:
    """NameServers and fake broker groups on loopback, torn down on exit (trio only)."""
    async with trio.open_nursery() as nursery:
        servers: list[NameServer] = []
        for _ in range(namesrvs):
            server = await nursery.start(partial(run_nameserver, "127.0.0.1", 0, expire_ms=10**12))
            servers.append(server)
        cluster = FakeCluster(nursery, [s.address for s in servers])
        for name in groups:
            await cluster.add_group(
                name, nodes=nodes, topics={"orders": ORDERS} if topics is None else topics
            )
        yield Env(servers, cluster)
        nursery.cancel_scope.cancel()
