"""`mq bench storage`: the store's hot paths against plain-file baselines, in one run.

Every ratio compares two numbers measured seconds apart on the same disk, so a
noisy shared machine moves both. Baselines:

* raw_mib_s — os.write of the same bytes in the same batch sizes, one fdatasync
  per 4 MiB: what the disk and page cache give with no record building at all.
* fsync_per_s — one 1 KiB write + fdatasync at a time: what sync flush would
  cost without group commit.
* entry_open_scan_us — a start's walk of the Raft log without the on-disk entry
  index (every entry read and CRC-checked), per entry: the baseline of
  entry_open_index_us, the same open from sealed chunks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import trio

from mq.broker.flusher import Flusher
from storage.commit_log import CommitLog
from storage.entry_log import EntryLog, StoredEntry, encode_entry
from storage.files import RealFileSystem
from storage.flush import FlushMode, FlushPolicy
from storage.message_store import MessageStore, StoreConfig
from storage.record import MessageRecord, encode_message

MESSAGE_BYTES = 1024
BATCH = 32
RAW_SYNC_BYTES = 4 << 20
ENTRY_CHUNK_ENTRIES = 4096
"""Smaller than a broker's 65,536, so that the quick run's log fills several chunks
(the cost per entry loaded does not depend on the chunk size)."""


@dataclass(frozen=True)
class BenchParams:
    total_mib: int
    fsync_seconds: float
    group_seconds: float
    producers: int = 64


def _records(count: int, body: bytes, now_ms: int, seq0: int = 0) -> list[MessageRecord]:
    return [
        MessageRecord(
            topic="bench",
            queue_id=(seq0 + i) % 8,
            body=body,
            tags="t",
            keys=f"k{seq0 + i}",
            msg_id=f"m{seq0 + i:012d}",
            born_timestamp_ms=now_ms,
            store_timestamp_ms=now_ms,
            born_host="127.0.0.1:0",
        )
        for i in range(count)
    ]


def _store_config(mode: FlushMode) -> StoreConfig:
    return StoreConfig(
        segment_bytes=256 << 20, flush_mode=mode, index_slots=500_000, index_entries_max=2_000_000
    )


def bench_raw(path: str, batch_bytes: int, total_bytes: int) -> float:
    buf = os.urandom(batch_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        written = since_sync = 0
        while written < total_bytes:
            written += os.write(fd, buf)
            since_sync += batch_bytes
            if since_sync >= RAW_SYNC_BYTES:
                os.fdatasync(fd)
                since_sync = 0
        os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return written / elapsed / (1 << 20)


def bench_append(root: str, count: int) -> tuple[float, float, float, MessageStore]:
    """Append and dispatch `count` messages in batches; returns msgs/s and MiB/s of the
    whole loop, the share of its time spent dispatching, and the store."""
    store = MessageStore(RealFileSystem(), root, _store_config(FlushMode.ASYNC))
    body = os.urandom(MESSAGE_BYTES)
    batches = [_records(BATCH, body, 0, i * BATCH) for i in range(count // BATCH)]
    policy = FlushPolicy(FlushMode.ASYNC)
    cl = store.commit_log
    start = time.perf_counter()
    last_flush = 0
    dispatch_s = 0.0
    for batch in batches:
        store.put_messages(batch)
        begin = time.perf_counter()
        store.dispatch()
        dispatch_s += time.perf_counter() - begin
        now_ms = int((time.perf_counter() - start) * 1000)
        if policy.due(now_ms, cl.max_offset, cl.flushed_offset, last_flush):
            cl.flush()
            last_flush = now_ms
    store.flush(0)
    elapsed = time.perf_counter() - start
    msgs = len(batches) * BATCH
    return msgs / elapsed, msgs * MESSAGE_BYTES / elapsed / (1 << 20), dispatch_s / elapsed, store


def bench_dispatch(root: str, entries: int) -> tuple[float, float]:
    """Dispatch CPU, microseconds per message, of the same 1 KiB messages as a broker
    stores them (Raft entries of one producer batch: 32 messages of one queue) and as
    loose message frames, in alternating rounds. Dispatch is what every replica does
    per message, so this is the replicas' per-message storage cost."""
    body = os.urandom(MESSAGE_BYTES)
    store = MessageStore(RealFileSystem(), root, _store_config(FlushMode.ASYNC))
    as_entries = as_frames = 0.0
    per_round = 200
    try:
        cl = store.commit_log
        for r in range(0, entries, per_round):
            batches = [_records(BATCH, body, 0, (r + i) * BATCH) for i in range(per_round)]
            for i, batch in enumerate(batches):
                for record in batch:
                    record.queue_id = (r + i) % 8  # a producer batch goes to one queue
                data = b"".join(encode_message(record) for record in batch)
                entry = encode_entry(1, r + i + 1, 0, data)
                cl.append_buffer(bytearray(entry), [len(entry)], verify_crc=False)
            begin = time.process_time()
            store.dispatch()
            as_entries += time.process_time() - begin
            for batch in batches:
                store.put_messages(batch)
            begin = time.process_time()
            store.dispatch()
            as_frames += time.process_time() - begin
    finally:
        store.close(0)
    messages = (entries // per_round) * per_round * BATCH
    return as_entries / messages * 1e6, as_frames / messages * 1e6


def bench_entry_open(root: str, entries: int, chunk_entries: int) -> tuple[float, float]:
    """µs per entry of opening a Raft log of `entries` 1 KiB entries (what a broker
    start does): by walking the CommitLog, and from sealed chunks. Alternating rounds,
    the best of each (the page cache is warm for both: a start after a reboot reads
    every byte from disk on the walk, and only the chunks from the index)."""
    fs = RealFileSystem()
    segment_bytes = 64 << 20
    log = CommitLog(fs, f"{root}/commitlog", segment_bytes)
    if not log.recovered:
        log.recover(log.min_offset)
    meta, index = f"{root}/raft-meta", f"{root}/raft-index"
    writer = EntryLog(fs, log, meta, index_dir=index, chunk_entries=chunk_entries)
    data = os.urandom(MESSAGE_BYTES)
    for first in range(1, entries + 1, 1000):
        count = min(1000, entries + 1 - first)
        writer.append([StoredEntry(1, i, 0, data) for i in range(first, first + count)])
    writer.sync()
    writer.seal(entries)
    scan = indexed = float("inf")
    try:
        for _ in range(3):
            begin = time.process_time()
            scanned = EntryLog(fs, log, meta)
            scan = min(scan, time.process_time() - begin)
            begin = time.process_time()
            loaded = EntryLog(fs, log, meta, index_dir=index, chunk_entries=chunk_entries)
            indexed = min(indexed, time.process_time() - begin)
            assert scanned.last_index() == loaded.last_index() == entries
            assert loaded.opened_by_scan == entries % chunk_entries
    finally:
        log.close()
    return scan / entries * 1e6, indexed / entries * 1e6


def bench_age_scan(store: MessageStore) -> float:
    """MiB/s of reading the newest store time of a whole segment (what retention does
    for a segment whose age it does not know), over the store's first segment."""
    end = min(store.config.segment_bytes, store.commit_log.max_offset)
    start = time.perf_counter()
    store.newest_store_ms(0, end)
    return end / (time.perf_counter() - start) / (1 << 20)


def bench_fsync(path: str, seconds: float) -> tuple[float, list[float]]:
    """fdatasyncs/s of 1 KiB appends one after another, and each one's milliseconds:
    with sync flush every send waits for at least one of these on the leader and one
    on a follower, so their tail is a floor under a send's tail latency."""
    block = os.urandom(MESSAGE_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    took: list[float] = []
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, block)
            began = time.perf_counter()
            os.fdatasync(fd)
            took.append((time.perf_counter() - began) * 1e3)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return len(took) / elapsed, sorted(took)


def bench_group_commit(root: str, producers: int, seconds: float) -> tuple[float, float]:
    """Sync flush as a broker does it: producers hand records to one appender task, which
    appends whatever has queued up as one batch; each producer is acknowledged once the
    fdatasync covering its record returned. Appends go on while an fsync runs."""
    store = MessageStore(RealFileSystem(), root, _store_config(FlushMode.SYNC))
    flusher = Flusher(store.commit_log)
    body = os.urandom(MESSAGE_BYTES)
    acked = 0
    queued: list[tuple[MessageRecord, list[int], trio.Event]] = []
    work = trio.Event()

    async def appender() -> None:
        nonlocal work
        while True:
            await work.wait()
            work = trio.Event()
            batch = queued[:]
            queued.clear()
            ends = store.put_messages([record for record, _, _ in batch])
            store.dispatch()
            for (_, slot, appended), end in zip(batch, ends, strict=True):
                slot.append(end)
                appended.set()
            await trio.lowlevel.checkpoint()

    async def producer(seq0: int, deadline: float) -> None:
        nonlocal acked
        seq = seq0
        while trio.current_time() < deadline:
            slot: list[int] = []
            appended = trio.Event()
            queued.append((_records(1, body, 0, seq)[0], slot, appended))
            work.set()
            await appended.wait()
            await flusher.wait_durable(slot[0] + 1)
            acked += 1
            seq += producers

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher.run_sync_mode)
            nursery.start_soon(appender)
            start = trio.current_time()
            deadline = start + seconds
            async with trio.open_nursery() as workers:
                for i in range(producers):
                    workers.start_soon(producer, i, deadline)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        return elapsed

    elapsed = trio.run(main)
    store.close(0)
    return acked / elapsed, acked / max(flusher.fsyncs, 1)


def bench_read(store: MessageStore, seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    queues = [(q, store.max_offset("bench", q)) for q in range(8)]
    while time.perf_counter() - start < seconds:
        for queue_id, max_offset in queues:
            offset = 0
            while offset < max_offset and time.perf_counter() - start < seconds:
                got = store.get_messages("bench", queue_id, offset, max_count=32)
                n += len(got.messages)
                offset = got.next_offset
    return n / (time.perf_counter() - start)


def run(directory: str | None, quick: bool) -> dict[str, Any]:
    params = (
        BenchParams(total_mib=64, fsync_seconds=1.0, group_seconds=2.0)
        if quick
        else BenchParams(total_mib=256, fsync_seconds=3.0, group_seconds=5.0)
    )
    base = tempfile.mkdtemp(prefix="mq-bench-", dir=directory)
    try:
        total = params.total_mib << 20
        count = total // MESSAGE_BYTES
        raw = bench_raw(os.path.join(base, "raw"), BATCH * MESSAGE_BYTES, total)
        append_msgs, append_mib, dispatch_share, store = bench_append(
            os.path.join(base, "append"), count
        )
        read_msgs = bench_read(store, 1.0 if quick else 3.0)
        entry_us, frame_us = bench_dispatch(os.path.join(base, "dispatch"), count // BATCH // 2)
        age_scan = bench_age_scan(store)
        store.close(0)
        scan_us, index_us = bench_entry_open(
            os.path.join(base, "entries"), count // 4, ENTRY_CHUNK_ENTRIES
        )
        fsync, fsync_ms = bench_fsync(os.path.join(base, "fsync"), params.fsync_seconds)
        group, per_fsync = bench_group_commit(
            os.path.join(base, "group"), params.producers, params.group_seconds
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "message_bytes": MESSAGE_BYTES,
        "batch": BATCH,
        "total_mib": params.total_mib,
        "raw_mib_s": round(raw, 1),
        "append_mib_s": round(append_mib, 1),
        "append_msgs_s": round(append_msgs),
        "append_ratio": round(append_mib / raw, 3),
        "dispatch_share": round(dispatch_share, 3),
        "dispatch_entry_us": round(entry_us, 2),
        "dispatch_frame_us": round(frame_us, 2),
        "dispatch_entry_ratio": round(entry_us / frame_us, 2),
        "age_scan_mib_s": round(age_scan, 1),
        "age_scan_ratio": round(age_scan / raw, 2),
        "entry_open_scan_us": round(scan_us, 2),
        "entry_open_index_us": round(index_us, 3),
        "entry_open_ratio": round(index_us / scan_us, 3),
        "fsync_per_s": round(fsync, 1),
        "fsync_p50_ms": round(fsync_ms[len(fsync_ms) // 2], 3),
        "fsync_p99_ms": round(fsync_ms[len(fsync_ms) * 99 // 100], 3),
        "fsync_max_ms": round(fsync_ms[-1], 3),
        "group_commit_per_s": round(group, 1),
        "group_commit_msgs_per_fsync": round(per_fsync, 1),
        "group_commit_ratio": round(group / fsync, 2),
        "producers": params.producers,
        "read_msgs_s": round(read_msgs),
    }
