"""Deliberate bugs for `mq sim broker --plant NAME`: the queue checkers must catch each.

The broker core is not touched: every plant lives on the simulator's side of the
core's API, in the host that drives it (a request filter that answers some requests
itself, an fsync that is skipped, the snapshot Raft is handed to send, which the host
gets by wrapping the core's `snapshot()`: Raft calls it through
`snapshot_source=core`) or in the workload (a producer that retries under a fresh seq,
a consumer that reorders what it was served). Each models a bug a real
broker or client could have; tests/sim/test_broker_plants.py asserts each is caught
within a seed budget.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

from mq.broker.segment_snapshot import SegmentSnapshot, SnapshotFiles
from mq.protocol import Frame, RequestCode, request
from raft.ready import SnapshotMeta
from sim.queue_checkers import message_frames
from storage.entry_log import inner_frames
from storage.record import MAGIC_MESSAGE, decode_message_header

if TYPE_CHECKING:
    from sim.broker_cluster import BrokerCluster
    from sim.broker_host import BrokerHost, SnapshotOut

PLANTS: dict[str, str] = {
    "pull_uncommitted": "a node serves pulls past its ConsumeQueue from the uncommitted "
    "tail of its CommitLog, numbering the messages on from the queue's end",
    "ack_unstored": "the leader acknowledges one send in ten without storing it, with "
    "the offset the batch would get",
    "offset_ack_unstored": "the leader acknowledges one consumer offset commit in five "
    "without proposing it",
    "fsync_lies": "CommitLog fsyncs are reported done but never happen (the disk cache "
    "lies), so a power cut loses acknowledged entries",
    "fresh_seq_retry": "a producer retries a batch under a new seq, so the broker cannot "
    "tell the retry from a new batch",
    "swap_served": "a consumer hands the first two messages of a pull to the checker in "
    "the wrong order",
    "stale_generation_applied": "consumers ignore resets and keep committing with the "
    "generation they first read, and the leader applies such commits anyway",
    "unregister_ignored": "a node acknowledges UNREGISTER_CLIENT without removing the "
    "member, so a cleanly stopped consumer stays listed (and notified) until it expires",
    "snapshot_from_later_segment": "a leader sends a follower that needs compacted entries "
    "the newest segment snapshot it has on disk instead of the one where its CommitLog "
    "begins, so the follower silently lacks the messages in between",
    "snapshot_queue_offsets_off": "the next queue offset of one queue in the snapshots "
    "leaders send is one too many",
}

WORKLOAD_PLANTS = frozenset({"fresh_seq_retry", "swap_served"})
"""Plants that live only in the workload (stale_generation_applied has both halves)."""


def install(plant: str | None, cluster: BrokerCluster, rng: random.Random) -> None:
    """Turn on a host-side plant on every node (workload plants are the workload's)."""
    if plant is None or plant in WORKLOAD_PLANTS:
        return
    for node_id in cluster.node_ids:
        host = cluster.hosts[node_id]
        if plant == "pull_uncommitted":
            host.request_filter = _pull_uncommitted
        elif plant == "ack_unstored":
            host.request_filter = _AckUnstored(random.Random(rng.getrandbits(64)))
        elif plant == "offset_ack_unstored":
            host.request_filter = _OffsetAckUnstored(random.Random(rng.getrandbits(64)))
        elif plant == "stale_generation_applied":
            host.request_rewrite = _current_generation
        elif plant == "unregister_ignored":
            host.request_filter = _unregister_ignored
        elif plant == "fsync_lies":
            host.skip_fsync = True
        elif plant == "snapshot_from_later_segment":
            host.snapshot_plant = _newest_snapshot
        elif plant == "snapshot_queue_offsets_off":
            host.snapshot_plant = _queue_offset_off
        else:
            raise ValueError(f"unknown plant {plant!r}")


def _newest_snapshot(host: BrokerHost, sent: SnapshotOut) -> SnapshotOut:
    """The newest segment snapshot on the node's disk instead of the one where its log
    begins: the design mistake of taking "the latest state" for a Raft snapshot. Raft
    accepts it (it covers the compacted entries and is committed: the newest one the
    node's commit index covers, since after a restart snapshots taken before the crash
    may lie past the commit index it came back with), and the follower replicates from
    after it, never getting the messages between the two."""
    core = host.core
    assert core is not None
    files = SnapshotFiles(host.fs, f"{host.config.data_dir.rstrip('/')}/snapshots")
    for offset in sorted(files.offsets(), reverse=True):
        data = files.read(offset)
        snapshot = SegmentSnapshot.decode(data)
        if data is not None and snapshot is not None and snapshot.index <= core.raft.commit_index:
            return SnapshotMeta(snapshot.index, snapshot.term), data
    return sent


def _queue_offset_off(host: BrokerHost, sent: SnapshotOut) -> SnapshotOut:
    """One queue's next offset is one too many (the first queue named): the follower
    numbers that queue's messages one past where every other node does."""
    meta, data = sent
    snapshot = SegmentSnapshot.decode(data)
    if snapshot is None or not snapshot.queues:
        return sent
    queues = dict(snapshot.queues)
    key = min(queues)
    queues[key] += 1
    return meta, dataclasses.replace(snapshot, queues=queues).encode()


def _pull_uncommitted(host: BrokerHost, frame: Frame, now_ms: int) -> Frame | None:
    """Serve a pull at or past the queue's end from the not yet dispatched tail."""
    core = host.core
    if core is None or frame.code != RequestCode.PULL_MESSAGE:
        return None
    f = frame.fields
    topic, queue_id, offset = f.get("topic"), f.get("queue_id"), f.get("offset")
    if not isinstance(topic, str) or not isinstance(queue_id, int) or not isinstance(offset, int):
        return None
    next_offset = core.store.max_offset(topic, queue_id)
    if offset < next_offset:
        return None
    log = core.commit_log
    start = core.store.dispatcher.dispatched_offset
    offsets: list[int] = []
    frames: list[bytes] = []
    for _pos, entry_frame in log.iter_frames(start, log.max_offset, verify_crc=False):
        for _at, magic, inner in inner_frames(entry_frame):
            if magic != MAGIC_MESSAGE:
                continue
            head = decode_message_header(inner, verify_crc=False)
            if head.topic == topic and head.queue_id == queue_id:
                if next_offset >= offset:
                    offsets.append(next_offset)
                    frames.append(bytes(inner))
                next_offset += 1
    if not frames or offsets[0] != offset:
        return None
    return frame.make_response(
        {
            "status": "FOUND",
            "next_offset": offsets[-1] + 1,
            "min_offset": 0,
            "max_offset": next_offset,
            "queue_offsets": offsets,
        },
        b"".join(frames),
    )


def _current_generation(host: BrokerHost, frame: Frame) -> Frame:
    """Rewrite an offset commit's entries to the node's current generation: the bug of
    a broker that does not compare generations, so a commit from before a reset undoes
    it."""
    core = host.core
    if core is None or frame.code != RequestCode.UPDATE_CONSUMER_OFFSET:
        return frame
    group, offsets = frame.fields.get("group"), frame.fields.get("offsets")
    if not isinstance(group, str) or not isinstance(offsets, list):
        return frame
    rewritten: list[object] = []
    for entry in offsets:
        if not isinstance(entry, list) or len(entry) != 4 or not isinstance(entry[0], str):
            return frame
        query = request(RequestCode.QUERY_CONSUMER_OFFSET, {"group": group, "topic": entry[0]})
        answer = core.handle(query, 0, host.now_ms())
        generation = answer.fields.get("generation", 0) if answer is not None else 0
        rewritten.append([entry[0], entry[1], entry[2], generation])
    return dataclasses.replace(frame, fields={**frame.fields, "offsets": rewritten})


def _unregister_ignored(host: BrokerHost, frame: Frame, now_ms: int) -> Frame | None:
    """Answer UNREGISTER_CLIENT as done and drop it: the bug of a node that looks the
    member up under the wrong key and reports success anyway."""
    if frame.code != RequestCode.UNREGISTER_CLIENT:
        return None
    return frame.make_response({})


class _AckUnstored:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self, host: BrokerHost, frame: Frame, now_ms: int) -> Frame | None:
        core = host.core
        if core is None or frame.code != RequestCode.SEND_BATCH or not core.is_leader:
            return None
        if self._rng.random() >= 0.1:
            return None
        f = frame.fields
        topic, queue_id = f["topic"], f["queue_id"]
        ids = [decode_message_header(m).msg_id for m in message_frames(frame.body)]
        return frame.make_response(
            {
                "msg_ids": ids,
                "queue_id": queue_id,
                "queue_offset": core.store.max_offset(topic, queue_id),
                "commit_offset": core.store.dispatcher.dispatched_offset,
                "duplicate": False,
            }
        )


class _OffsetAckUnstored:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self, host: BrokerHost, frame: Frame, now_ms: int) -> Frame | None:
        core = host.core
        if core is None or frame.code != RequestCode.UPDATE_CONSUMER_OFFSET or not core.is_leader:
            return None
        if self._rng.random() >= 0.2:
            return None
        return frame.make_response({"stale": []})
