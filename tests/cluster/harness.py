"""Real-process cluster harness: a NameServer and broker groups as OS processes.

`LocalCluster` starts a cluster through `mq.cluster` (plan + start_process, the same
code `mq cluster up` runs), or adopts one the CLI started, and gives tests what fault
injection needs: `leader()`, `kill(name, sig)`, `start(name)`, `status(name)`.

Everything here talks to the nodes with plain blocking sockets (GET_BROKER_STATUS,
GET_MAX_OFFSET, PULL_MESSAGE straight to one node), so tests can be ordinary functions
whose only event loops are the clients under test (the blocking facade runs its own
loop thread); a trio test calls these helpers through `trio.to_thread.run_sync`.

The machine is small and shared: every wait polls its condition with a generous
deadline (`DEADLINE_S`, scaled by $MQ_TEST_TIME_SCALE); nothing sleeps to "let things
settle".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mq import cluster as local
from mq.client import Message, MessageQueue
from mq.client.blocking import BlockingAdmin, BlockingProducer, BlockingPullConsumer
from mq.client.errors import MQClientError
from mq.client.producer import RETRYABLE_ERRORS, SendResult
from mq.client.pull_consumer import TagFilter, _pull_result
from mq.message import MessageExt
from mq.protocol import ErrorCode, Frame, FrameDecoder, RequestCode, encode_frame, request
from mq.rpc.address import parse_address

TIME_SCALE = float(os.environ.get("MQ_TEST_TIME_SCALE", "1"))
DEADLINE_S = 60.0 * TIME_SCALE
"""How long any condition may take to become true. Generous: other engineers run
benchmarks on the same two cores, and a slow pass costs nothing when things work."""
POLL_S = 0.05
RPC_TIMEOUT_S = 2.0

ELECTION_MS = 500
HEARTBEAT_MS = 50
SEGMENT_BYTES = 16 * 1024 * 1024
BROKER_ARGS = [
    f"--election-ms={ELECTION_MS}",
    f"--heartbeat-ms={HEARTBEAT_MS}",
    f"--segment-bytes={SEGMENT_BYTES}",
    "--log-level=info",
]
"""Elections in about 0.5-1 s instead of 1-2 s: failover tests wait for several. Not
shorter: on a loaded machine a shorter timeout makes healthy leaders look dead.
Segments of 16 MiB, not `mq cluster up`'s 256: each segment is reserved on disk in
full, and a run of the suite otherwise fills 14 GB."""

BATCH_EVERY = 4
BATCH_SIZE = 3
"""The workload's every 4th request is a SEND_BATCH of 3 messages."""

T = TypeVar("T")

CLUSTERS_KEY = pytest.StashKey[list["LocalCluster"]]()
"""A test item's clusters, whose logs conftest attaches to the report when it fails."""


class ConditionTimeout(AssertionError):
    pass


def wait_until(
    condition: Callable[[], T | bool | None],
    what: str,
    timeout_s: float = DEADLINE_S,
    poll_s: float = POLL_S,
) -> T:
    """Poll `condition` until it returns something truthy (returned) or the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except (OSError, MQClientError, KeyError) as exc:  # a node mid-restart, ...
            value, last_error = None, exc
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise ConditionTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- raw RPC


def rpc(address: str, frame: Frame, timeout_s: float = RPC_TIMEOUT_S) -> Frame:
    """One request on a fresh connection, blocking; the response frame."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_frame(replace(frame, request_id=1)))
        decoder = FrameDecoder()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address} did not answer in {timeout_s} s")
            sock.settimeout(remaining)
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"{address} closed the connection without an answer")
            decoder.receive_data(data)
            response = decoder.next_frame()
            if response is not None:
                return response


def broker_status(address: str, timeout_s: float = RPC_TIMEOUT_S) -> dict[str, Any] | None:
    """GET_BROKER_STATUS of one node, or None if it does not answer (down, stopped)."""
    try:
        response = rpc(address, request(RequestCode.GET_BROKER_STATUS), timeout_s)
    except OSError:
        return None
    assert response.ok, f"GET_BROKER_STATUS failed on {address}: {response.remark}"
    return dict(response.fields)


def max_offset(address: str, topic: str, queue_id: int) -> int:
    response = rpc(
        address, request(RequestCode.GET_MAX_OFFSET, {"topic": topic, "queue_id": queue_id})
    )
    assert response.ok, response.remark
    return int(response.fields["offset"])


def node_queue(address: str, topic: str, queue_id: int) -> list[MessageExt]:
    """Every message of one queue as one node (leader or follower) serves it."""
    mq = MessageQueue(topic, "?", queue_id)
    out: list[MessageExt] = []
    offset = 0
    while True:
        fields = {"topic": topic, "queue_id": queue_id, "offset": offset, "max_count": 256}
        response = rpc(address, request(RequestCode.PULL_MESSAGE, fields))
        assert response.ok, response.remark
        result = _pull_result(mq, response, TagFilter(None))
        out.extend(result.messages)
        if result.status in ("NO_NEW_MSG",) or result.next_offset == offset:
            return out
        offset = result.next_offset


# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    """A running cluster described by `<directory>/cluster.json`."""

    def __init__(self, spec: local.ClusterSpec) -> None:
        self.spec = spec
        self.directory = Path(spec.directory)
        self.seen_pids: set[int] = {p.pid for p in spec.processes if p.pid}

    # --- starting and stopping ---------------------------------------------------

    @classmethod
    def start_new(
        cls,
        directory: Path,
        *,
        groups: int = 1,
        flush: str = "sync",
        broker_args: Iterable[str] = BROKER_ARGS,
        attempts: int = 3,
    ) -> LocalCluster:
        """Plan and start a cluster, and wait for every group's leader. Ports come from
        `free_ports`, which another process on this shared machine can take before our
        node binds: a node that exits at once gets the whole cluster re-planned."""
        for attempt in range(1, attempts + 1):
            spec = local.plan(
                str(directory), groups=groups, flush=flush, extra_broker_args=list(broker_args)
            )
            cluster = cls(spec)
            for proc in spec.processes:
                local.start_process(proc)
                cluster.seen_pids.add(proc.pid)
            spec.save()
            try:
                cluster.wait_started()
                for group in cluster.groups():
                    cluster.leader(group)
                return cluster
            except ConditionTimeout:
                exited_early = cluster.exited_early()  # a port was taken, most likely
                cluster.destroy()
                if attempt == attempts or not exited_early:
                    raise
            except BaseException:
                cluster.destroy()
                raise
        raise AssertionError("unreachable")

    @classmethod
    def adopt(cls, directory: Path) -> LocalCluster:
        """The cluster the CLI started in `directory`."""
        return cls(local.ClusterSpec.load(str(directory)))

    def reload(self) -> None:
        """Re-read cluster.json after the CLI changed it (start-node records a new pid)."""
        self.spec = local.ClusterSpec.load(str(self.directory))
        self.seen_pids.update(p.pid for p in self.spec.processes if p.pid)

    def live_pids(self) -> list[int]:
        return sorted(pid for pid in self.seen_pids if local.alive(pid))

    def exited_early(self) -> bool:
        return any(not local.alive(p.pid) for p in self.spec.processes)

    def wait_started(self) -> None:
        def answering() -> bool:
            dead = [p.name for p in self.spec.processes if not local.alive(p.pid)]
            if dead:
                raise ConditionTimeout(f"processes exited during startup: {dead}")
            return all(self.status(p.name) is not None for p in self.spec.brokers())

        wait_until(answering, "every broker to answer GET_BROKER_STATUS")

    def destroy(self, graceful_s: float = 5.0) -> None:
        """Stop every process this cluster ever ran: SIGCONT (a SIGSTOPped node cannot
        act on SIGTERM), SIGTERM, and kill -9 whatever is still there after `graceful_s`."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.reload()
        pids = {pid for pid in self.seen_pids if local.alive(pid)}
        for sig in (signal.SIGCONT, signal.SIGTERM):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + graceful_s
        while any(local.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for pid in pids:
            if local.alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + graceful_s
        while any(local.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    # --- looking --------------------------------------------------------------------

    @property
    def namesrv(self) -> list[str]:
        return list(self.spec.nameservers)

    def groups(self) -> list[str]:
        return sorted({p.group for p in self.spec.brokers()})

    def brokers(self, group: str | None = None) -> list[str]:
        return [p.name for p in self.spec.brokers() if group is None or p.group == group]

    def proc(self, name: str) -> local.ProcessSpec:
        return self.spec.process(name)

    def address(self, name: str) -> str:
        return self.proc(name).address

    def name_of(self, address: str) -> str:
        return next(p.name for p in self.spec.processes if p.address == address)

    def pid(self, name: str) -> int:
        return self.proc(name).pid

    def alive(self, name: str) -> bool:
        return local.alive(self.pid(name))

    def status(self, name: str, timeout_s: float = RPC_TIMEOUT_S) -> dict[str, Any] | None:
        return broker_status(self.address(name), timeout_s)

    def statuses(self, group: str = "broker-a") -> dict[str, dict[str, Any] | None]:
        return {name: self.status(name, timeout_s=1.0) for name in self.brokers(group)}

    def current_leader(self, group: str = "broker-a", exclude: Iterable[str] = ()) -> str | None:
        """The node a majority of the group follows right now, or None.

        A node saying "leader" is not enough (a deposed or paused leader can still think
        it is one): it must be the highest-term leader and a majority of the group's
        nodes, itself included, must report it as their leader in that term.
        """
        skip = set(exclude)
        statuses = {n: s for n, s in self.statuses(group).items() if s is not None}
        leaders = [
            (s["term"], n) for n, s in statuses.items() if s["role"] == "leader" and n not in skip
        ]
        if not leaders:
            return None
        term, name = max(leaders)
        address = self.address(name)
        followers = sum(
            1 for s in statuses.values() if s["term"] == term and s["leader"] == address
        )
        return name if followers > len(self.brokers(group)) // 2 else None

    def leader(
        self, group: str = "broker-a", *, exclude: Iterable[str] = (), timeout_s: float = DEADLINE_S
    ) -> str:
        """Wait for a leader a majority follows (not one of `exclude`); its name."""
        skip = tuple(exclude)
        what = f"a leader of {group}" + (f" other than {list(skip)}" if skip else "")
        return wait_until(lambda: self.current_leader(group, skip), what, timeout_s)

    # --- faults -----------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a node; for SIGKILL/SIGTERM wait until the process is gone."""
        pid = self.pid(name)
        assert local.alive(pid), f"{name} (pid {pid}) is not running"
        os.kill(pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            wait_until(lambda: not local.alive(pid), f"{name} (pid {pid}) to exit")

    def kill_all(self, names: Iterable[str]) -> None:
        """kill -9 several nodes at once, then wait until every one is gone."""
        pids = [self.pid(name) for name in names]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(local.alive(pid) for pid in pids), "the killed nodes to exit")

    def start(self, name: str) -> None:
        """Start a node that is down (same ports, same data) and wait until it answers."""
        proc = self.proc(name)
        assert not local.alive(proc.pid), f"{name} is still running (pid {proc.pid})"
        local.start_process(proc)
        self.seen_pids.add(proc.pid)
        self.spec.save()
        self.wait_answering(name)

    def wait_answering(self, name: str) -> None:
        """Poll until the node (NameServer or broker) answers a PING."""
        pid = self.pid(name)

        def answering() -> bool:
            if not local.alive(pid):
                raise ConditionTimeout(f"{name} exited; see {self.proc(name).log}")
            try:
                return rpc(self.address(name), request(RequestCode.PING)).ok
            except OSError:
                return False

        wait_until(answering, f"{name} to answer")

    def all_alive(self) -> dict[str, bool]:
        return {p.name: local.alive(p.pid) for p in self.spec.processes}

    # --- data -------------------------------------------------------------------------

    def wait_caught_up(self, name: str, topic: str, queues: int, group: str = "broker-a") -> None:
        """Poll until `name` has applied everything the group's leader has committed and
        serves the same max offset in every queue of `topic`."""

        def caught_up() -> bool:
            leader = self.current_leader(group)
            if leader is None or leader == name:
                return leader == name
            lead, node = self.status(self.proc(leader).name), self.status(name)
            if lead is None or node is None:
                return False
            if node["applied_index"] < lead["commit_index"]:
                return False
            return all(
                max_offset(self.address(name), topic, q)
                == max_offset(self.address(leader), topic, q)
                for q in range(queues)
            )

        wait_until(caught_up, f"{name} to catch up with the leader of {group}")

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for proc in self.spec.processes:
            try:
                text = Path(proc.log).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {proc.name} ({proc.log}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def log_events(self, *events: str) -> list[dict[str, Any]]:
        """Structured log lines (JSON) of every process whose event is one of `events`."""
        found = []
        for proc in self.spec.processes:
            with contextlib.suppress(OSError):
                for line in Path(proc.log).read_text(errors="replace").splitlines():
                    if not line.startswith("{"):
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("event") in events:
                        found.append({"process": proc.name, **record})
        return found


# --------------------------------------------------------------------------- workload


@dataclass
class Acked:
    """One acknowledged message (a batch's messages are acknowledged together)."""

    n: int
    """Index of the message in the workload (sends are sequential: ack order = send order)."""
    msg_id: str
    body: bytes
    result: SendResult
    index: int = 0
    """Position in its batch: it is stored at `result.queue_offset + index`."""

    @property
    def where(self) -> tuple[str, int, int]:
        r = self.result
        return r.group, r.queue_id, r.queue_offset + self.index


UNAVAILABLE_CODES = {None, *RETRYABLE_ERRORS, ErrorCode.NOT_LEADER}
"""How a send may fail while nodes fail: no answer (None), or a retryable broker error.
Anything else (INVALID_REQUEST, ...) means the request itself was refused."""


def acked_of(first_n: int, bodies: list[bytes], result: SendResult) -> list[Acked]:
    assert len(result.msg_ids) == len(bodies), result
    return [
        Acked(first_n + i, msg_id, body, result, i)
        for i, (msg_id, body) in enumerate(zip(result.msg_ids, bodies, strict=True))
    ]


@dataclass
class SequentialProducer:
    """One producer thread sending one request at a time until stopped (every
    `BATCH_EVERY`th a batch of `BATCH_SIZE` messages), recording every acknowledged
    message in acknowledgement order. A send that fails (the group is electing, the
    leader is gone) is *not* retried with the same message: its outcome is unknown (it
    may be stored, once); the next message is sent after a short pause."""

    namesrv: list[str]
    topic: str
    send_timeout_ms: int = 2000
    acked: list[Acked] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SequentialProducer:
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DEADLINE_S)
            assert not self._thread.is_alive(), "the producer thread did not stop"
            self._thread = None
        if self.error is not None:
            raise AssertionError(f"the producer thread crashed: {self.error!r}") from self.error
        assert self.batches_acked() > 0 or len(self.acked) < 2 * BATCH_EVERY, (
            "no batch was acknowledged"
        )

    def batches_acked(self) -> int:
        return sum(1 for a in self.acked if a.index == 1)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_acked(self, count: int, what: str) -> None:
        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"producer crashed: {self.error!r}")
            return self.count() >= count

        try:
            wait_until(enough, f"{count} acknowledged sends ({what})")
        except ConditionTimeout as exc:
            raise ConditionTimeout(f"{exc}; last send failures: {self.failures[-3:]}") from None

    def _run(self) -> None:
        try:
            with BlockingProducer(self.namesrv, send_timeout_ms=self.send_timeout_ms) as producer:
                n = 0
                for request_number in itertools.count():
                    if self._stop.is_set():
                        break
                    size = BATCH_SIZE if request_number % BATCH_EVERY == BATCH_EVERY - 1 else 1
                    bodies = [f"{self.topic}-{n + i}".encode() for i in range(size)]
                    try:
                        if size == 1:
                            result = producer.send(Message(self.topic, bodies[0]))
                        else:
                            result = producer.send_batch([Message(self.topic, b) for b in bodies])
                    except MQClientError as exc:
                        if getattr(exc, "code", None) not in UNAVAILABLE_CODES:
                            raise  # refused for what it is, not for a fault: a bug
                        self.failures.append(f"{n}: {exc!r}")
                        self._stop.wait(POLL_S)  # pace retries while the group elects
                    else:
                        with self._lock:
                            self.acked.extend(acked_of(n, bodies, result))
                    n += size
        except BaseException as exc:  # surfaced by stop()
            self.error = exc


def create_topic(namesrv: list[str], topic: str, queues: int) -> None:
    with BlockingAdmin(namesrv) as admin:
        admin.create_topic(topic, queues)


def send_sequentially(namesrv: list[str], topic: str, count: int) -> list[Acked]:
    """`count` sends, one at a time, each must succeed (a healthy cluster)."""
    acked = []
    with BlockingProducer(namesrv) as producer:
        for n in range(count):
            body = f"{topic}-{n}".encode()
            acked.extend(acked_of(n, [body], producer.send(Message(topic, body))))
    return acked


# --------------------------------------------------------------------------- checks


def consume_all(namesrv: list[str], topic: str) -> dict[tuple[str, int], list[MessageExt]]:
    """Every message of every queue of `topic`, through the PullConsumer."""
    out: dict[tuple[str, int], list[MessageExt]] = {}
    with BlockingPullConsumer(namesrv) as consumer:
        for mq in consumer.fetch_queues(topic):
            messages: list[MessageExt] = []
            offset = consumer.min_offset(mq)
            while True:
                result = consumer.pull(mq, offset, max_count=256)
                messages.extend(result.messages)
                if result.status == "NO_NEW_MSG" or result.next_offset == offset:
                    break
                offset = result.next_offset
            out[(mq.group, mq.queue_id)] = messages
    return out


def check_delivery(
    acked: list[Acked],
    consumed: dict[tuple[str, int], list[MessageExt]],
    *,
    ordered: bool = True,
) -> None:
    """The queue-safety properties the failover tests promise:

    * every acknowledged message is consumable, exactly where its SendResult said
      (group, queue, queue offset), with its body;
    * no message id is stored twice (acknowledged or not: the producer is idempotent);
    * queue offsets in each queue are contiguous and increasing;
    * with `ordered` (sends were sequential), in each queue the acknowledged messages
      appear in acknowledgement order.
    """
    where: dict[str, tuple[tuple[str, int], int, bytes]] = {}
    duplicates = []
    for key, messages in consumed.items():
        offsets = [m.queue_offset for m in messages]
        if offsets:
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), (
                f"queue {key}: offsets not contiguous and increasing: {offsets}"
            )
        for m in messages:
            if m.msg_id in where:
                duplicates.append((m.msg_id, where[m.msg_id][:2], (key, m.queue_offset)))
            where[m.msg_id] = (key, m.queue_offset, m.body)
    assert not duplicates, f"messages stored twice: {duplicates[:10]}"

    lost = [a for a in acked if a.msg_id not in where]
    assert not lost, (
        f"{len(lost)} of {len(acked)} acknowledged messages are missing, e.g. "
        f"{[(a.n, a.msg_id, a.where) for a in lost[:5]]}"
    )
    for a in acked:
        key, offset, body = where[a.msg_id]
        assert (*key, offset) == a.where, (
            f"message {a.n} was acknowledged at {a.where} but is stored at {(*key, offset)}"
        )
        assert body == a.body, f"send {a.n}: body {body!r} != {a.body!r}"

    if not ordered:
        return
    by_queue: dict[tuple[str, int], list[int]] = {}
    for a in acked:
        by_queue.setdefault(a.where[:2], []).append(a.n)
    position = {a.msg_id: a.n for a in acked}
    for key, expected in by_queue.items():
        seen = [position[m.msg_id] for m in consumed[key] if m.msg_id in position]
        assert seen == expected, f"queue {key}: acknowledged sends consumed in order {seen}"


def check_replicas_identical(cluster: LocalCluster, topic: str, queues: int) -> None:
    """Every node of the group serves byte-for-byte the same messages in each queue."""
    for group in cluster.groups():
        names = cluster.brokers(group)
        for q in range(queues):
            views = {
                n: [
                    (m.queue_offset, m.msg_id, m.body)
                    for m in node_queue(cluster.address(n), topic, q)
                ]
                for n in names
            }
            first = views[names[0]]
            for n in names[1:]:
                assert views[n] == first, (
                    f"{group} queue {q}: {n} serves {len(views[n])} messages, "
                    f"{names[0]} serves {len(first)}; they differ"
                )
