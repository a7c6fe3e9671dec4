"""A checkpoint's fsyncs run in `Work.run` (a worker thread on a real leader), not in
`advance` on the event loop: sends and pulls go on being served while they run."""

from __future__ import annotations

from typing import Any

import pytest

from mq.protocol import RequestCode, request
from storage.checkpoint import Checkpoint
from storage.files import SimFileSystem, SimSegment
from tests.mq.broker_cluster import CoreCluster, send_request
from tests.mq.test_broker_core import all_bodies, bodies_of


class _IoCount:
    """Counts segment syncs and atomic file writes (by path) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncs = 0
        self.written: list[str] = []
        sync, write_atomic = SimSegment.sync, SimFileSystem.write_atomic

        def counted_sync(segment: SimSegment) -> None:
            self.syncs += 1
            sync(segment)

        def counted_write(fs: SimFileSystem, path: str, data: bytes) -> None:
            self.written.append(path)
            write_atomic(fs, path, data)

        monkeypatch.setattr(SimSegment, "sync", counted_sync)
        monkeypatch.setattr(SimFileSystem, "write_atomic", counted_write)

    def take(self) -> tuple[int, list[str]]:
        out = self.syncs, self.written
        self.syncs, self.written = 0, []
        return out


def _cluster(**overrides: Any) -> tuple[CoreCluster, int]:
    # Checkpoints only when a test moves the clock past the interval itself.
    cluster = CoreCluster(
        checkpoint_interval_ms=60_000, state_snapshot_interval_ms=60_000, **overrides
    )
    leader = cluster.elect()
    cluster.request(leader, send_request("t", [b"a", b"b"]))
    cluster.settle()
    cluster.now_ms += 60_000
    cluster.run()  # a first checkpoint on every node
    return cluster, leader


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_checkpoint_io_runs_in_the_work_and_none_in_advance(
    monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    cluster, leader = _cluster()
    node = leader if role == "leader" else cluster.followers()[0]
    core = cluster.cores[node]
    cluster.request(leader, send_request("t", [b"c"]))  # something new to checkpoint
    cluster.settle()
    io = _IoCount(monkeypatch)
    cluster.now_ms += 60_000
    work = core.ready(cluster.now_ms)
    assert work is not None and work.checkpoint is not None and work.blocking
    assert work.state_snapshot is not None, "the snapshot was due too"
    dispatched = core.store.dispatcher.dispatched_offset
    assert io.take() == (0, []), "preparing a checkpoint does no I/O"

    # While the Work is out, the node still takes requests: a send appends (on the
    # leader), a pull is answered from what is dispatched.
    if role == "leader":
        pending = cluster.call(node, send_request("t", [b"d"]))
    assert _bodies_now(cluster, node) == [b"a", b"b", b"c"]

    work.run()
    syncs, written = io.take()
    root = cluster.configs[node].data_dir
    assert syncs >= 2, "queue and index synced in the Work"
    assert f"{root}/store/checkpoint" in written and f"{root}/state" in written
    assert written.index(f"{root}/store/checkpoint") < written.index(f"{root}/state")
    record = Checkpoint.decode(cluster.fss[node].read_bytes(f"{root}/store/checkpoint"))
    assert record is not None and record.dispatched == dispatched
    assert record.commitlog_flushed >= dispatched

    core.advance(work, cluster.now_ms)
    assert io.take() == (0, []), "advance did no checkpoint I/O"
    assert core.status()["disk_full"] == []

    cluster.run()
    cluster.settle()
    if role == "leader":
        assert cluster.reply(pending) is not None
    for i in cluster.ids:
        cluster.crash(i)
    for i in cluster.ids:
        cluster.start(i)
    cluster.elect()
    cluster.settle()
    expected = [b"a", b"b", b"c", b"d"] if role == "leader" else [b"a", b"b", b"c"]
    for i in cluster.ids:
        assert all_bodies(cluster, i, "t") == expected


def _bodies_now(cluster: CoreCluster, node: int) -> list[bytes]:
    """A pull handled at once by the node (no driving of the cluster)."""
    frame = request(RequestCode.PULL_MESSAGE, {"topic": "t", "queue_id": 0, "offset": 0})
    response = cluster.cores[node].handle(frame, 0, cluster.now_ms)
    assert response is not None
    return bodies_of(response)


def test_a_checkpoint_the_disk_refuses_leaves_the_previous_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, leader = _cluster()
    core = cluster.cores[leader]
    root = cluster.configs[leader].data_dir
    before = cluster.fss[leader].read_bytes(f"{root}/store/checkpoint")
    cluster.request(leader, send_request("t", [b"c"]))
    cluster.settle()
    cluster.now_ms += 60_000
    work = core.ready(cluster.now_ms)
    assert work is not None and work.checkpoint is not None
    fs = cluster.fss[leader]
    fs.capacity_bytes = fs.used_bytes()  # full: no new file fits
    work.run()
    assert not work.checkpoint.written and work.checkpoint.disk_full is not None
    core.advance(work, cluster.now_ms)
    assert "checkpoint" in core.status()["disk_full"]
    assert fs.read_bytes(f"{root}/store/checkpoint") == before
    previous = Checkpoint.decode(before)
    assert previous is not None and previous.dispatched < core.store.dispatcher.dispatched_offset
    fs.capacity_bytes = None
    cluster.now_ms += 60_000
    cluster.run()  # the next interval tries again
    assert core.status()["disk_full"] == []
    again = Checkpoint.decode(fs.read_bytes(f"{root}/store/checkpoint"))
    assert again is not None and again.dispatched == core.store.dispatcher.dispatched_offset
