"""Broker bugs `mq sim broker` found (docs/simulations.md), each reproduced in a few lines."""

from __future__ import annotations

from mq.broker.state import BrokerState
from tests.mq.broker_cluster import CoreCluster, send_request


def test_a_broker_restarts_after_a_state_snapshot_at_a_segment_tail() -> None:
    """A state snapshot taken where an entry ends less than 8 bytes (a frame header)
    before the end of a CommitLog segment: the replay on restart starts there."""
    segment_bytes = 4096
    cluster = CoreCluster(
        size=1,
        segment_bytes=segment_bytes,
        checkpoint_interval_ms=10,
        state_snapshot_interval_ms=60,
    )
    leader = cluster.elect()
    seqs = iter(range(1, 10_000))

    def send(body_bytes: int) -> int:
        seq = next(seqs)
        frame = send_request("T", [bytes(body_bytes)], producer_id="p", seq=seq, prefix=f"s{seq}-")
        assert cluster.request(leader, frame).ok
        return cluster.cores[leader].store.dispatcher.dispatched_offset

    first = send(10)
    end = send(20)
    overhead = end - first - 20
    while segment_bytes - 4 - end - overhead < 10:
        end = send(10)
    cluster.tick(10)  # a state snapshot is due at the next checkpoint
    end = send(segment_bytes - 4 - end - overhead)
    assert end == segment_bytes - 4
    for _ in range(20):
        decoded = BrokerState.decode(cluster.fss[leader].read_bytes("/n1/state"), 100)
        if decoded is not None and decoded[1] == end:
            break
        cluster.tick()
    else:
        raise AssertionError("no state snapshot at the segment tail")
    send(10)  # replayed from the snapshot on restart
    cluster.tick()
    cluster.crash(leader)
    core = cluster.start(leader)
    assert core.store.dispatcher.dispatched_offset > end
