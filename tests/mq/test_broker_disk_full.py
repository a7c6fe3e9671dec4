"""A full disk on a broker node: writes get a clear error, nothing is lost or stored
twice, the node stays up, and everything resumes once there is space again.

Each node runs on its own SimFileSystem; `capacity_bytes` is its disk size."""

from __future__ import annotations

import pytest

from mq.broker.config import ConfigError, config_from_mapping
from mq.broker.raft_codec import decode_envelope
from mq.protocol import ErrorCode, Frame
from raft.messages import VoteRequest
from tests.mq.broker_cluster import CoreCluster, send_request
from tests.mq.test_broker_core import all_bodies

BIG = 60_000
"""A body of this size fills a 256 KiB test segment in four sends."""


def fill(cluster: CoreCluster, node: int, room: int = 1_000) -> None:
    """Leave `room` bytes on `node`'s disk: no new segment or file fits."""
    fs = cluster.fss[node]
    fs.capacity_bytes = fs.used_bytes() + room


def free(cluster: CoreCluster, node: int) -> None:
    cluster.fss[node].capacity_bytes = None


def assert_replicas_agree(cluster: CoreCluster, topic: str, queue_id: int = 0) -> list[bytes]:
    bodies = {node: all_bodies(cluster, node, topic, queue_id) for node in cluster.ids}
    first = bodies[cluster.ids[0]]
    assert all(b == first for b in bodies.values()), "replicas differ"
    return first


def test_a_leader_with_a_full_disk_refuses_sends_and_hands_leadership_over() -> None:
    cluster = CoreCluster()
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"first"])).ok
    cluster.settle()
    fill(cluster, leader)
    refused = None
    for i in range(8):  # until a send needs a new segment
        response = cluster.request(leader, send_request("orders", [bytes(BIG)], prefix=f"a{i}"))
        if not response.ok:
            refused = response
            break
    assert refused is not None, "the disk never filled"
    assert refused.error == ErrorCode.SERVICE_NOT_AVAILABLE
    assert "disk is full" in refused.remark
    assert cluster.cores[leader].stats()["disk_full_errors"] >= 1
    # The refused send is nowhere, and a follower with room takes over the writes.
    new_leader = cluster.elect()
    assert new_leader != leader
    stored = cluster.request(new_leader, send_request("orders", [b"after"], prefix="b"))
    assert stored.ok, stored.remark
    free(cluster, leader)
    cluster.settle(20)
    bodies = assert_replicas_agree(cluster, "orders")
    assert bodies[0] == b"first" and bodies[-1] == b"after"
    assert len(bodies) == i + 2, "every acknowledged send once, the refused one nowhere"


def test_a_follower_with_a_full_disk_falls_behind_and_catches_up() -> None:
    cluster = CoreCluster()
    leader = cluster.elect()
    full = cluster.followers()[0]
    fill(cluster, full)
    for i in range(8):  # more than its segment holds
        response = cluster.request(leader, send_request("orders", [bytes(BIG)], prefix=f"a{i}"))
        assert response.ok, response.remark  # the other follower makes the majority
    cluster.settle()
    assert cluster.cores[full].stats()["disk_full_errors"] >= 1
    assert len(all_bodies(cluster, full, "orders")) < 8
    assert cluster.cores[full].raft.role.name == "FOLLOWER", "it stays in the group"
    free(cluster, full)
    cluster.settle(20)
    assert len(assert_replicas_agree(cluster, "orders")) == 8


def test_a_dispatch_stopped_by_a_full_disk_resumes_without_applying_twice() -> None:
    # The CommitLog segment has room, but a new queue's ConsumeQueue file does not fit:
    # the send commits and waits, undispatched, until there is space.
    cluster = CoreCluster()
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"warm"])).ok
    cluster.settle()
    for node in cluster.ids:
        fill(cluster, node, room=100)
    request = send_request("orders", [b"x", b"y"], queue_id=3, producer_id="p1", seq=1)
    reply_id = cluster.call(leader, request)
    cluster.settle(10)
    assert cluster.reply(reply_id) is None, "answered before its messages were queued"
    assert all(c.stats()["disk_full_errors"] >= 1 for c in cluster.cores.values())
    status = cluster.cores[leader].status()
    assert status["disk_full"] == ["dispatch"]
    assert status["applied_index"] < status["commit_index"]
    for node in cluster.ids:
        free(cluster, node)
    cluster.settle(3)
    response = cluster.reply(reply_id)
    assert response is not None and response.ok, response
    assert response.fields["duplicate"] is False and response.fields["queue_offset"] == 0
    status = cluster.cores[leader].status()
    assert status["disk_full"] == [] and status["applied_index"] == status["commit_index"]
    assert assert_replicas_agree(cluster, "orders", 3) == [b"x", b"y"]
    # The producer table saw the batch once: a retry is a duplicate, stored nowhere.
    again = cluster.request(leader, send_request("orders", [b"x", b"y"], queue_id=3,
                                                 producer_id="p1", seq=1))  # fmt: skip
    assert again.ok and again.fields["duplicate"] is True
    assert assert_replicas_agree(cluster, "orders", 3) == [b"x", b"y"]


def test_a_node_that_crashes_while_its_dispatch_is_stopped_recovers_each_message_once() -> None:
    cluster = CoreCluster(state_snapshot_interval_ms=10, checkpoint_interval_ms=10)
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"warm"])).ok
    cluster.settle()
    victim = cluster.followers()[0]
    fill(cluster, victim, room=100)
    request = send_request("orders", [b"x", b"y"], queue_id=3, producer_id="p1", seq=1)
    assert cluster.request(leader, request).ok
    cluster.settle(10)  # several checkpoints and snapshot chances while stopped
    assert cluster.cores[victim].stats()["disk_full_errors"] >= 1
    cluster.crash(victim)
    free(cluster, victim)
    cluster.start(victim)
    cluster.settle(10)
    assert assert_replicas_agree(cluster, "orders", 3) == [b"x", b"y"]
    again = cluster.request(leader, send_request("orders", [b"z"], queue_id=3,
                                                 producer_id="p1", seq=2))  # fmt: skip
    assert again.ok and again.fields["duplicate"] is False
    cluster.settle()
    assert assert_replicas_agree(cluster, "orders", 3) == [b"x", b"y", b"z"]


def test_a_send_whose_dispatch_stops_midway_is_answered_with_all_its_messages() -> None:
    # Small IndexFiles: a message inside the batch needs a new one, which does not fit,
    # after the messages before it were queued.
    cluster = CoreCluster(index_entries_max=64)
    leader = cluster.elect()
    for i in range(6):
        warm = send_request("orders", [b"w"] * 10, prefix=f"w{i}")
        assert cluster.request(leader, warm).ok
    cluster.settle()
    for node in cluster.ids:
        fill(cluster, node, room=100)
    reply_id = cluster.call(leader, send_request("orders", [b"%d" % i for i in range(8)]))
    cluster.settle(10)
    assert cluster.reply(reply_id) is None
    assert 60 < len(all_bodies(cluster, leader, "orders")) < 68, "stopped within the batch"
    for node in cluster.ids:
        free(cluster, node)
    cluster.settle(3)
    response = cluster.reply(reply_id)
    assert response is not None and response.ok, response
    assert len(response.fields["msg_ids"]) == 8 and response.fields["queue_offset"] == 60
    bodies = assert_replicas_agree(cluster, "orders")
    assert bodies[60:] == [b"%d" % i for i in range(8)]


def test_without_room_for_the_hard_state_votes_wait_until_there_is_room() -> None:
    cluster = CoreCluster(checkpoint_interval_ms=20, state_snapshot_interval_ms=20)
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"before"])).ok
    cluster.settle()
    others = cluster.followers()
    for node in others:
        fill(cluster, node, room=0)  # not even a small file fits
    cluster.isolate(leader)
    cluster.tick(100)  # elections time out; no candidate can persist its vote
    assert all(cluster.cores[n].status()["disk_full"] for n in others)
    # A vote is granted only once durable: with no room for it, nobody can win.
    assert not any(cluster.cores[n].is_leader for n in others)
    for node in others:
        free(cluster, node)
    cluster.tick(100)
    new_leader = cluster.leader()
    assert new_leader in others
    assert cluster.request(new_leader, send_request("orders", [b"after"], prefix="a")).ok
    cluster.heal()
    cluster.settle(20)
    for node in others:  # restarts from what the full disk let it write
        cluster.crash(node)
        cluster.start(node)
    cluster.elect()
    cluster.settle(20)
    assert assert_replicas_agree(cluster, "orders") == [b"before", b"after"]


def test_a_follower_without_a_byte_of_room_keeps_acknowledging_what_fits() -> None:
    # Checkpoints (and the commit index they write) fail; the appends that fit the open
    # segment go on, so the follower still counts towards the majority.
    cluster = CoreCluster(checkpoint_interval_ms=20, state_snapshot_interval_ms=20)
    leader = cluster.elect()
    follower = cluster.followers()[0]
    cluster.stop(cluster.followers()[1])  # the majority needs `follower`
    fill(cluster, follower, room=0)
    for i in range(5):
        response = cluster.request(leader, send_request("orders", [b"%d" % i], prefix=f"a{i}"))
        assert response.ok, response.remark
        cluster.settle(3)
    assert "checkpoint" in cluster.cores[follower].status()["disk_full"]
    free(cluster, follower)
    cluster.settle(15)  # dispatch is retried every 100 ms
    assert cluster.cores[follower].status()["disk_full"] == []
    cluster.crash(follower)
    cluster.start(follower)
    cluster.settle(5)
    assert all_bodies(cluster, follower, "orders") == [b"%d" % i for i in range(5)]


def test_a_leader_refuses_sends_while_its_disk_is_fuller_than_the_refuse_ratio() -> None:
    cluster = CoreCluster()
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"before"])).ok
    fs = cluster.fss[leader]
    fs.capacity_bytes = int(fs.used_bytes() / 0.97)  # 97 % used, room left
    cluster.tick(110)  # the usage is read once a second
    assert cluster.cores[leader].status()["disk_full"] == ["sends"]
    refused = cluster.request(leader, send_request("orders", [b"x"], prefix="x"))
    assert refused.error == ErrorCode.SERVICE_NOT_AVAILABLE
    assert "97.0% used" in refused.remark and "disk_refuse_ratio 0.95" in refused.remark
    new_leader = cluster.elect()  # handed over to a follower with room
    assert new_leader != leader
    assert cluster.request(new_leader, send_request("orders", [b"after"], prefix="a")).ok
    free(cluster, leader)
    cluster.tick(110)
    assert cluster.cores[leader].status()["disk_full"] == []
    cluster.settle()
    assert assert_replicas_agree(cluster, "orders") == [b"before", b"after"]


def test_the_refuse_ratio_is_a_number_within_0_and_1() -> None:
    assert config_from_mapping({"disk_refuse_ratio": 1}).disk_refuse_ratio == 1.0
    assert config_from_mapping({"disk-refuse-ratio": 0.9}).disk_refuse_ratio == 0.9
    for bad in (0, 1.5, "0.9", True):
        with pytest.raises(ConfigError):
            config_from_mapping({"disk_refuse_ratio": bad})


def test_a_committed_send_whose_dispatch_waits_is_not_answered_as_a_timeout() -> None:
    cluster = CoreCluster()
    leader = cluster.elect()
    assert cluster.request(leader, send_request("orders", [b"warm"])).ok
    cluster.settle()
    fill(cluster, leader, room=100)  # the log has room, a new ConsumeQueue file not
    reply_id = cluster.call(leader, send_request("orders", [b"x"], queue_id=3))
    cluster.settle(250)  # past send_timeout_ms
    assert cluster.reply(reply_id) is None, "committed: not a REPLICATION_TIMEOUT"
    free(cluster, leader)
    cluster.settle(15)
    response = cluster.reply(reply_id)
    assert response is not None and response.ok, response
    assert all_bodies(cluster, leader, "orders", 3) == [b"x"]


def test_a_candidate_without_room_for_its_no_op_does_not_become_a_leader_that_cannot_commit(
) -> None:  # fmt: skip
    cluster = CoreCluster()
    old = cluster.elect()
    log = cluster.cores[old].commit_log
    segment = log.segment_bytes

    def remaining() -> int:
        return segment - log.max_offset % segment

    before = log.max_offset
    assert cluster.request(old, send_request("orders", [bytes(1000)], prefix="p")).ok
    overhead = log.max_offset - before - 1000
    i = 0
    while remaining() > 70_000 + overhead:
        assert cluster.request(old, send_request("orders", [bytes(BIG)], prefix=f"f{i}")).ok
        i += 1
    cluster.settle()
    # The last acknowledged send leaves 10 bytes of the segment: no room for a no-op.
    reply_id = cluster.call(old, send_request("orders", [b"K" * (remaining() - overhead - 10)]))
    cluster.drop = lambda src, dst, frame: src == old and reply_id in cluster.replies
    cluster.run()
    assert cluster.replies[reply_id].ok
    cluster.crash(old)  # before the followers learn that the send committed
    cluster.drop = None
    full, other = [n for n in cluster.ids if n != old]
    fill(cluster, full, room=100)  # the hard state fits, a new segment does not

    def others_campaign_unheard(src: int, dst: int, frame: Frame) -> bool:
        return src == other and isinstance(decode_envelope(frame)[1].msg, VoteRequest)

    cluster.drop = others_campaign_unheard  # `other` votes for `full`, never wins itself
    cluster.tick(300)
    assert not cluster.cores[full].is_leader, "a leader without its no-op"
    free(cluster, full)
    cluster.drop = None
    cluster.tick(300)
    new = cluster.leader()
    assert new is not None
    assert cluster.cores[new].raft.commit_index == cluster.cores[new].log.last_index()
    assert any(b.startswith(b"KKK") for b in all_bodies(cluster, new, "orders"))
