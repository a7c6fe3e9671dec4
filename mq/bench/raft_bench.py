"""`mq bench raft`: a 3-node in-process Raft cluster (no sim, in-memory transport).

Measures committed 1 KiB entries/s with the in-memory LogStore and with the
CommitLog-backed LogStore on real files (one fsync per Ready per node), against a
baseline from the same run: the same entries appended to three in-memory logs with
no Raft at all (the cost floor of moving the bytes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from mq.broker.raft_log import CommitLogStore
from raft.config import Config
from raft.local_cluster import LocalCluster
from raft.log_store import LogStore, MemoryLogStore
from raft.messages import make_entries
from storage.commit_log import CommitLog
from storage.entry_log import EntryLog
from storage.files import RealFileSystem

ENTRY_BYTES = 1024


def _baseline(total: int, batch: int, data: bytes) -> float:
    logs = [MemoryLogStore() for _ in range(3)]
    datas = [data] * batch
    start = time.perf_counter()
    index = 1
    while index <= total:
        entries = make_entries(1, index, datas)
        for log in logs:
            log.append(entries)
        index += batch
    return total / (time.perf_counter() - start)


def _run(total: int, batch: int, data: bytes, log_factory: Any = None) -> float:
    cluster = LocalCluster(3, Config(), seed=1, record=False, log_factory=log_factory)
    start = time.perf_counter()
    cluster.drive_load(total, batch, data)
    return total / (time.perf_counter() - start)


def run(directory: str | None, quick: bool, batch: int) -> dict[str, Any]:
    data = os.urandom(ENTRY_BYTES)
    total_memory = 100_000 if quick else 400_000
    total_disk = 20_000 if quick else 100_000
    base = tempfile.mkdtemp(prefix="mq-bench-raft-", dir=directory)
    fs = RealFileSystem()

    def disk_log(node_id: int) -> LogStore:
        root = f"{base}/node{node_id}"
        fs.makedirs(root)
        log = CommitLog(fs, f"{root}/commitlog", 256 << 20)
        return CommitLogStore(EntryLog(fs, log, f"{root}/raft-meta"))

    try:
        baseline = _baseline(total_memory, batch, data)
        memory = _run(total_memory, batch, data)
        disk = _run(total_disk, batch, data, disk_log)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mib = ENTRY_BYTES / (1 << 20)
    return {
        "nodes": 3,
        "entry_bytes": ENTRY_BYTES,
        "batch": batch,
        "baseline_append_entries_s": round(baseline),
        "memory_entries_s": round(memory),
        "memory_mib_s": round(memory * mib, 1),
        "memory_ratio": round(memory / baseline, 3),
        "commitlog_entries_s": round(disk),
        "commitlog_mib_s": round(disk * mib, 1),
        "commitlog_ratio": round(disk / baseline, 3),
    }
