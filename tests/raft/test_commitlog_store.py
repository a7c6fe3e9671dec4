"""Raft replicating through the CommitLog-backed LogStore (the broker's configuration)."""

from __future__ import annotations

import random

from mq.broker.raft_log import CommitLogStore
from raft.config import Config
from raft.local_cluster import LocalCluster
from raft.log_store import LogStore
from raft.messages import Entry
from storage.commit_log import CommitLog
from storage.entry_log import EntryLog
from storage.files import SimFileSystem


def commit_log_cluster(fs: SimFileSystem, cache_entries_max: int = 65_536) -> LocalCluster:
    def factory(node_id: int) -> LogStore:
        log = CommitLog(fs, f"/n{node_id}/commitlog", 64 << 10)
        return CommitLogStore(EntryLog(fs, log, f"/n{node_id}/raft-meta"), cache_entries_max)

    return LocalCluster(3, Config(), seed=7, record=True, log_factory=factory)


def test_replicas_build_byte_identical_commit_logs():
    fs = SimFileSystem(random.Random(1))
    cluster = commit_log_cluster(fs)
    cluster.drive_load(600, 16, b"x" * 700)
    segments = {
        node: [
            bytes(fs.open_segment(f"/n{node}/commitlog/{name}", 64 << 10).read(0, 64 << 10))
            for name in fs.listdir(f"/n{node}/commitlog")
            if name.isdigit()
        ]
        for node in (1, 2, 3)
    }
    assert len(segments[1]) > 1, "the load spans several segments"
    assert segments[1] == segments[2] == segments[3]


def test_entries_come_back_the_same_from_cache_and_from_disk():
    fs = SimFileSystem(random.Random(2))
    cluster = commit_log_cluster(fs, cache_entries_max=8)
    cluster.drive_load(200, 10, b"y" * 100)
    store = cluster.members[1].log
    assert isinstance(store, CommitLogStore)
    everything: list[Entry] = store.entries(1, store.last_index() + 1, 1 << 30)
    assert [e.index for e in everything] == list(range(1, store.last_index() + 1))
    tail = store.entries(store.last_index() - 3, store.last_index() + 1, 1 << 30)
    assert tail == everything[-4:]
