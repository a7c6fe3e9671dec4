"""Wire fuzzing of every port of a running cluster (NameServer and every broker node).

A seeded fuzzer ($MQ_FUZZ_SEED, printed on failure) opens a few hundred connections
and sends random bytes, truncated frames, oversized and inconsistent length prefixes,
headers that are not what the protocol says, valid frames whose fields are garbage, and
SEND requests whose message records are subtly broken but carry a correct CRC. Some
connections stay open half-way through a frame for the whole test.

Afterwards:
* every process is alive, with the pid it started with;
* no handler raised (no SYSTEM_ERROR answer, no handler_failed/connection_failed log);
* whatever the server sent back decodes as frames;
* the cluster serves produce and consume, and every message a broker acknowledged to
  the fuzzer is consumable (a broker must not store what its readers cannot decode).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2

from mq.client.errors import MQClientError, NoRouteError
from mq.protocol import (
    FRAME_BYTES_MAX,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    ProtocolError,
    RequestCode,
    encode_frame,
    error_name,
    request,
)
from mq.rpc.address import parse_address
from storage.record import MessageRecord, encode_messages
from tests.cluster.harness import (
    LocalCluster,
    check_delivery,
    consume_all,
    create_topic,
    rpc,
    send_sequentially,
)

SEED = int(os.environ.get("MQ_FUZZ_SEED", "1127"))
CONNECTIONS_PER_PORT = int(os.environ.get("MQ_FUZZ_CONNECTIONS", "100"))
IDLE_CONNECTIONS_PER_PORT = 8
READ_DEADLINE_S = 1.5
FUZZ_TOPICS = [f"fuzz-{i}" for i in range(3)]

_PREFIX = struct.Struct(">II")
BORN_MS = 1_790_000_000_000


# --------------------------------------------------------------------------- generators


def garbage_value(rng: random.Random, depth: int = 0) -> Any:
    """Plain data of every kind the header may carry, biased towards edge cases."""
    choice = rng.randrange(12 if depth < 3 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 7, 255])
    if choice == 3:
        return rng.randrange(-1000, 100_000)
    if choice == 4:
        return rng.choice([0.0, -0.5, 1e308, float("inf"), float("-inf"), float("nan")])
    if choice == 5:
        return rng.choice(["", "x" * 300, "broker-a", "topic", "\u2603\u0000", "../..", "*"])
    if choice == 6:
        return "".join(rng.choice("abc-_%|é\x01\x02 ") for _ in range(rng.randrange(0, 20)))
    if choice == 7:
        return rng.randbytes(rng.randrange(0, 40))
    if choice in (8, 9):
        return [garbage_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {
        rng.choice([*FIELD_NAMES, "", "zz"]): garbage_value(rng, depth + 1)
        for _ in range(rng.randrange(0, 5))
    }


FIELD_NAMES = [
    "topic", "queue_id", "offset", "max_count", "max_bytes", "tag_hashes", "suspend_ms",
    "producer_id", "seq", "count", "read_queues", "write_queues", "perm", "timestamp_ms",
    "key", "begin_ms", "end_ms", "msg_id", "group", "src", "dst", "type", "term", "cluster",
    "node_id", "address", "role", "topics", "leader_address", "nodes", "granted", "entries",
]  # fmt: skip

PLAUSIBLE: dict[str, Callable[[random.Random], Any]] = {
    "topic": lambda r: r.choice([*FUZZ_TOPICS, "", "bad topic", "x" * 200, "fuzz-\u00e9"]),
    "queue_id": lambda r: r.choice([0, 1, 3, 7, 8, 255, 256, 1 << 20, -1]),
    "offset": lambda r: r.choice([0, 1, 5, -1, 2**63 - 1, 2**40]),
    "max_count": lambda r: r.choice([1, 32, 0, -5, 1024, 1025, 2**40]),
    "max_bytes": lambda r: r.choice([1, 0, 10, 2**62, -1]),
    "tag_hashes": lambda r: r.choice([[], [0], [2**64 - 1, 5], [True], ["x"], [-1]]),
    "suspend_ms": lambda r: r.choice([0, 1, 50, -1, 2**62]),
    "producer_id": lambda r: r.choice(["p1", "p2", "", "x" * 300]),
    "seq": lambda r: r.choice([0, 1, 2, -1, 2**63 - 1]),
    "count": lambda r: r.choice([1, 2, 0, -1, 1025, 3]),
    "read_queues": lambda r: r.choice([1, 0, 4, 2**31, -2]),
    "write_queues": lambda r: r.choice([1, 0, 4, 2**31, -2]),
    "perm": lambda r: r.choice([0, 2, 4, 6, 255, 256, -1]),
    "timestamp_ms": lambda r: r.choice([0, -1, 2**63 - 1, BORN_MS]),
    "key": lambda r: r.choice(["k", "", "x" * 70000]),
    "msg_id": lambda r: r.choice(["", "00" * 16, "\u00e9"]),
    "group": lambda r: r.choice(["broker-a", "broker-z", ""]),
    "type": lambda r: r.choice(
        ["AppendRequest", "VoteRequest", "AppendResponse", "SnapshotRequest", "TimeoutNow", "X"]
    ),
}


def garbage_fields(rng: random.Random) -> dict[Any, Any]:
    names = rng.sample(FIELD_NAMES, rng.randrange(0, 8))
    out: dict[Any, Any] = {}
    for name in names:
        plausible = PLAUSIBLE.get(name)
        out[name] = plausible(rng) if plausible and rng.random() < 0.7 else garbage_value(rng)
    if rng.random() < 0.1:
        out[rng.randrange(-5, 5)] = garbage_value(rng)  # int keys are allowed on the wire
    return out


def message_frames(rng: random.Random, topic: str, queue_id: int, count: int) -> bytes:
    records = [
        MessageRecord(
            topic if validish(topic) else "fuzz-0",
            rng.randbytes(rng.randrange(0, 64)),
            queue_id if is_int(queue_id) and 0 <= queue_id < 2**32 else 0,
            tags=rng.choice(["", "a", "b"]),
            keys=rng.choice(["", "k1", "k1 k2"]),
            properties=rng.choice([{}, {"p": "v"}, {"a": "1", "b": "2"}]),
            msg_id=f"{rng.getrandbits(128):032X}",
            born_timestamp_ms=BORN_MS,
        )
        for _ in range(max(1, min(count, 4)) if is_int(count) else 1)
    ]
    buf, sizes = encode_messages(records)
    if rng.random() < 0.6:
        mutate_with_valid_crc(rng, buf, sizes)
    return bytes(buf)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validish(topic: object) -> bool:
    return isinstance(topic, str) and topic in FUZZ_TOPICS


def mutate_with_valid_crc(rng: random.Random, buf: bytearray, sizes: list[int]) -> None:
    """Break a message frame's fields but keep its CRC right, so only the broker's field
    checks stand between the bytes and the CommitLog."""
    pos = 0
    starts = []
    for size in sizes:
        starts.append((pos, size))
        pos += size
    start, size = rng.choice(starts)
    kind = rng.randrange(3)
    if kind == 0:  # properties that do not decode (the u32 length and bytes just before the body)
        props = b"p\x01v\x02"
        at = buf.find(props, start, start + size)
        if at < 0:
            at = buf.find(b"a\x011\x02", start, start + size)
        if at >= 0:
            buf[at : at + 4] = rng.choice(
                [b"\xff\xfe\x01\x02", b"p\x02v\x02", b"\x01\x01\x01\x02", b"pv\x01x"]
            )
    elif kind == 1:  # flip a few bytes anywhere after the frame header
        for _ in range(rng.randrange(1, 4)):
            at = start + rng.randrange(12, size)
            buf[at] ^= 1 << rng.randrange(8)
    else:  # tags / keys / born host that are not UTF-8: overwrite a byte with 0xff
        at = start + rng.randrange(12, size)
        buf[at] = 0xFF
    struct.pack_into("<I", buf, start + 8, zlib.crc32(buf[start + 12 : start + size]))


BROKER_CODES = [
    RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH, RequestCode.PULL_MESSAGE,
    RequestCode.QUERY_MESSAGE, RequestCode.VIEW_MESSAGE_BY_ID, RequestCode.CREATE_TOPIC,
    RequestCode.GET_ALL_TOPICS, RequestCode.GET_MIN_OFFSET, RequestCode.GET_MAX_OFFSET,
    RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, RequestCode.GET_BROKER_STATUS, RequestCode.PING,
    RequestCode.RAFT_MESSAGE,
]  # fmt: skip
NAMESERVER_CODES = [
    RequestCode.PING, RequestCode.REGISTER_BROKER, RequestCode.UNREGISTER_BROKER,
    RequestCode.GET_ROUTE, RequestCode.GET_CLUSTER_INFO, RequestCode.GET_ALL_TOPICS,
]  # fmt: skip


def garbage_request(
    rng: random.Random, request_id: int, served: list[RequestCode] = BROKER_CODES
) -> bytes:
    """A frame that decodes, with a code the target serves (mostly) or any other, and
    garbage fields and body."""
    roll = rng.random()
    if roll < 0.25 and RequestCode.SEND_MESSAGE in served:
        code = rng.choice([RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH])
    elif roll < 0.75:
        code = rng.choice(served)
    elif roll < 0.92:
        code = rng.choice(list(RequestCode))
    else:
        code = rng.choice([0, -1, 9999, 2**63, -(2**63)])
    fields = garbage_fields(rng)
    body = b""
    if code in (RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH):
        fields["topic"] = rng.choice(FUZZ_TOPICS)
        fields.setdefault("queue_id", rng.randrange(0, 4))
        if rng.random() < 0.5:
            fields.pop("producer_id", None)
        elif "producer_id" in fields:
            fields["producer_id"] = f"fuzz-{rng.randrange(3)}"
            fields["seq"] = rng.randrange(0, 2**40)
        count = fields.get("count", 1)
        body = message_frames(rng, fields["topic"], fields["queue_id"], count)
        if rng.random() < 0.2:
            body = body[: rng.randrange(0, len(body) + 1)]
    elif code == RequestCode.CREATE_TOPIC and fields.get("topic") in FUZZ_TOPICS:
        # Re-creating a topic with fewer read queues or without read permission hides
        # its stored messages from consumers by design; keep the topics we read back.
        fields["topic"] = "fuzz-created"
    elif code == RequestCode.RAFT_MESSAGE:
        # Never a message a node would act on: the sender is no member of the group
        # (nodes ignore those) or a field has the wrong type.
        fields.update({"group": "broker-a", "dst": rng.randrange(0, 4)})
        fields["type"] = PLAUSIBLE["type"](rng)
        if rng.random() < 0.5:
            fields["src"] = 99
            for name in ("term", "prev_index", "prev_term", "commit", "last_log_index",
                         "last_log_term", "match_index", "last_index", "last_term", "offset",
                         "next_offset"):  # fmt: skip
                fields[name] = rng.choice([0, 1, -1, 2**63 - 1])
            for name in ("success", "granted", "done", "pre_vote", "transfer"):
                fields[name] = rng.choice([True, False])
        else:
            fields["src"] = rng.randrange(1, 4)
            fields["term"] = "not an int"
        body = rng.randbytes(rng.randrange(0, 200))
    elif rng.random() < 0.3:
        body = rng.randbytes(rng.randrange(0, 300))
    flags = rng.choice([0, 0, 0, Flag.ONEWAY, 4, 8 | Flag.ONEWAY, 2**40])
    frame = Frame(code=code, request_id=request_id, flags=flags, fields=fields, body=body)
    try:
        return encode_frame(frame)
    except ValueError:  # a value the encoder refuses (e.g. an int out of range): send it raw
        return raw_frame({0: code, 1: request_id, 2: flags, 3: fields}, body)


def raw_frame(header: Any, body: bytes = b"", *, total: int | None = None) -> bytes:
    encoded = cbor2.dumps(header)
    return (
        _PREFIX.pack(total if total is not None else 4 + len(encoded) + len(body), len(encoded))
        + encoded
        + body
    )


def bad_framing(rng: random.Random, request_id: int, served: list[RequestCode]) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:  # noise
        return rng.randbytes(rng.randrange(0, 4096))
    if kind == 1:  # a good frame cut short
        frame = garbage_request(rng, request_id, served)
        return frame[: rng.randrange(0, len(frame))]
    if kind == 2:  # oversized: readable header (answered with FRAME_TOO_LARGE) or not
        header = cbor2.dumps({0: int(RequestCode.PING), 1: request_id})
        total = rng.choice([FRAME_BYTES_MAX + 1, 2**31, 2**32 - 1])
        hlen = rng.choice([len(header), len(header), 2**20, 2**32 - 1])
        return _PREFIX.pack(total, hlen) + header + rng.randbytes(rng.randrange(0, 100))
    if kind == 3:  # header length that does not fit the frame
        total = rng.choice([0, 1, 3, 4, 10, 100])
        hlen = rng.choice([0, total, total + 1, 2**32 - 1])
        return _PREFIX.pack(total, hlen) + rng.randbytes(rng.randrange(0, 64))
    if kind == 4:  # a CBOR header that is not a map
        return raw_frame(rng.choice([[1, 2], 5, "x", b"y", None, 1.5]))
    if kind == 5:  # a map without a code / request id, or with the wrong types
        return raw_frame(
            rng.choice([
                {}, {0: 12}, {1: 5}, {0: "12", 1: 1}, {0: 1, 1: -1}, {0: 1, 1: 2**64},
                {0: True, 1: 1}, {0: 1, 1: 1, 2: 3}, {0: 1, 1: 1, 3: [1]}, {0: 1, 1: 1, 4: "e"},
                {0: 1, 1: 1, 5: 7}, {0: 1, 1: 1, 2: -1},
            ])
        )  # fmt: skip
    if kind == 6:  # CBOR tags, deep nesting, lying lengths
        choice = rng.randrange(5)
        if choice == 0:
            return raw_frame({0: 1, 1: 1, 3: {"topic": cbor2.CBORTag(258, [1, 2])}})
        if choice == 1:
            deep: Any = 1
            for _ in range(200):
                deep = [deep]
            return raw_frame({0: 1, 1: 1, 3: {"x": deep}})
        if choice == 2:  # a byte string claiming 2**62 bytes
            header = b"\xa2\x00\x01\x01\x5b" + struct.pack(">Q", 2**62)
            return _PREFIX.pack(4 + len(header), len(header)) + header
        if choice == 3:  # an indefinite-length map that never ends
            header = b"\xbf\x00\x01\x01\x01"
            return _PREFIX.pack(4 + len(header), len(header)) + header
        return raw_frame({0: 1, 1: 1, 3: {"when": cbor2.CBORTag(1, 0)}})
    if kind == 7:  # a response and a one-way at once, or an unsolicited response
        flags = rng.choice([Flag.RESPONSE | Flag.ONEWAY, Flag.RESPONSE])
        return raw_frame({0: 1, 1: request_id, 2: int(flags)})
    # valid pings with noise after them
    ping = encode_frame(Frame(code=RequestCode.PING, request_id=request_id))
    return ping * rng.randrange(1, 5) + rng.randbytes(rng.randrange(1, 50))


# --------------------------------------------------------------------------- driving


@dataclass
class Tally:
    connections: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    system_errors: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    """Message ids a broker acknowledged (stored) to the fuzzer."""


def exchange(address: str, payload: bytes, tally: Tally, what: str, rng: random.Random) -> None:
    """Send `payload` (in random pieces), half-close, read until EOF or the deadline."""
    host, port = parse_address(address)
    tally.connections += 1
    try:
        sock = socket.create_connection((host, port), timeout=READ_DEADLINE_S)
    except OSError as exc:
        raise AssertionError(f"{address} refused a connection ({what}): {exc}") from exc
    with sock:
        received = bytearray()
        try:
            pos = 0
            while pos < len(payload):
                step = rng.choice([1, 7, 100, 4096, len(payload)])
                sock.sendall(payload[pos : pos + step])
                pos += step
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + READ_DEADLINE_S
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                data = sock.recv(1 << 16)
                if not data:
                    break
                received += data
        except OSError:
            pass  # the server may hang up on garbage (even before we half-close), or hold a long poll
    decoder = FrameDecoder()
    decoder.receive_data(received)
    try:
        while (frame := decoder.next_frame()) is not None:
            tally.responses[error_name(frame.error)] += 1
            if frame.error == ErrorCode.SYSTEM_ERROR:
                tally.system_errors.append(f"{address} {what}: code {frame.code}: {frame.remark}")
            stored = frame.ok and frame.fields.get("queue_offset", -1) >= 0
            if stored and frame.code in (RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH):
                tally.acked.update(frame.fields.get("msg_ids") or [])
    except ProtocolError as exc:
        tally.undecodable.append(f"{address} {what}: {exc}")


@contextlib.contextmanager
def idle_half_frames(addresses: list[str], rng: random.Random) -> Iterator[list[socket.socket]]:
    """Connections that send the first bytes of a frame and then nothing."""
    socks = []
    try:
        for address in addresses:
            for _ in range(IDLE_CONNECTIONS_PER_PORT):
                sock = socket.create_connection(parse_address(address), timeout=5)
                frame = garbage_request(rng, 1)
                sock.sendall(frame[: rng.randrange(1, max(2, len(frame)))])
                socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_fuzzing_every_port_leaves_every_process_alive_and_the_cluster_serving(
    cluster: LocalCluster,
) -> None:
    seed_note = f"(MQ_FUZZ_SEED={SEED})"
    pids = {p.name: p.pid for p in cluster.spec.processes}
    addresses = [p.address for p in cluster.spec.processes]
    create_topic(cluster.namesrv, FUZZ_TOPICS[0], 4)
    tally = Tally()

    with idle_half_frames(addresses, random.Random(SEED)):
        for index, proc in enumerate(cluster.spec.processes):
            address = proc.address
            served = NAMESERVER_CODES if proc.kind == "nameserver" else BROKER_CODES
            rng = random.Random(f"{SEED}/{index}")
            for i in range(CONNECTIONS_PER_PORT):
                if rng.random() < 0.45:
                    count = rng.randrange(1, 6)
                    payload = b"".join(
                        garbage_request(rng, i * 10 + j, served) for j in range(count)
                    )
                    what = f"connection {i}: {count} garbage requests"
                else:
                    payload = bad_framing(rng, i, served)
                    what = f"connection {i}: bad framing"
                exchange(address, payload, tally, what, rng)
            dead = [n for n, alive in cluster.all_alive().items() if not alive]
            assert not dead, f"{dead} died while fuzzing {address} {seed_note}"

        # Half-open connections are still held: the cluster must serve regardless.
        cluster.leader()
        acked = send_sequentially(cluster.namesrv, "after-fuzz", 20)
        check_delivery(acked, consume_all(cluster.namesrv, "after-fuzz"))

    assert {p.name: p.pid for p in cluster.spec.processes} == pids
    assert all(cluster.all_alive().values()), f"{cluster.all_alive()} {seed_note}"
    assert not tally.system_errors, f"handlers raised {seed_note}: {tally.system_errors[:5]}"
    assert not tally.undecodable, f"undecodable answers {seed_note}: {tally.undecodable[:5]}"
    failed = cluster.log_events("handler_failed", "connection_failed")
    assert not failed, f"unhandled exceptions logged {seed_note}: {failed[:3]}"
    # The fuzzer reached request handlers, not just the framing layer.
    assert tally.responses["SUCCESS"] > 0 and tally.responses["INVALID_REQUEST"] > 0, tally

    # Whatever a broker acknowledged to the fuzzer must be readable by a consumer.
    stored: set[str] = set()
    for topic in FUZZ_TOPICS:
        try:
            consumed = consume_all(cluster.namesrv, topic)
        except NoRouteError:
            continue  # the fuzzer never got this topic created
        except MQClientError as exc:
            raise AssertionError(
                f"{topic}, written by the fuzzer, cannot be consumed: {exc!r}"
            ) from exc
        stored.update(m.msg_id for messages in consumed.values() for m in messages)
    missing = set(tally.acked) - stored
    if missing:
        leader = cluster.address(cluster.leader())
        topics = rpc(leader, request(RequestCode.GET_ALL_TOPICS)).fields["topics"]
        raise AssertionError(
            f"acknowledged fuzz messages not consumable {seed_note}: {sorted(missing)[:5]}; "
            f"topics: {topics}"
        )
    print(
        f"fuzz {seed_note}: {tally.connections} connections, {len(tally.acked)} messages "
        f"stored, answers {dict(tally.responses)}"
    )
