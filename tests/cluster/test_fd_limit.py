"""A leader flooded with idle connections until it runs short of file descriptors, on
real processes: it refuses new clients with SYSTEM_BUSY but keeps running, keeps the
descriptors its own files need, and still lets its group's Raft links in."""

from __future__ import annotations

import os
import resource
import signal
import socket

from mq.protocol import ErrorCode, RequestCode, request
from mq.rpc.address import parse_address
from tests.cluster.harness import (
    LocalCluster,
    SequentialProducer,
    check_delivery,
    consume_all,
    create_topic,
    rpc,
    wait_until,
)

HEADROOM = 150
"""Descriptors above what the leader holds when its limit is lowered."""


def test_a_leader_out_of_file_descriptors_keeps_serving_its_group(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    status = cluster.status(leader)
    assert status is not None
    term, pid = status["term"], cluster.pid(leader)
    restarted, stopped = (name for name in cluster.brokers() if name != leader)
    create_topic(cluster.namesrv, "fds", 2)
    address = parse_address(cluster.address(leader))
    flood: list[socket.socket] = []
    with SequentialProducer(cluster.namesrv, "fds") as producer:
        producer.wait_acked(10, "before the flood")
        limit = len(os.listdir(f"/proc/{pid}/fd")) + HEADROOM
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        try:
            # More connections than it has descriptors for; they never send anything.
            flood.extend(socket.create_connection(address, timeout=10) for _ in range(limit))

            def told_busy() -> bool:
                # Until the silent connections read for a first frame time out, the
                # ones after them are closed unread.
                try:
                    answer = rpc(cluster.address(leader), request(RequestCode.GET_BROKER_STATUS))
                except OSError:
                    return False
                assert answer.error == ErrorCode.SYSTEM_BUSY, answer
                assert "too many connections" in answer.remark and "ulimit -n" in answer.remark
                return True

            wait_until(told_busy, "a new client to be told SYSTEM_BUSY")
            # A follower restarted now needs a new link to the leader, over the limit,
            # and with the other follower stopped, every commit needs its acks.
            cluster.kill(restarted)
            # Its old link's descriptor is free now: take it, and whatever else came free.
            flood.extend(socket.create_connection(address, timeout=10) for _ in range(20))
            cluster.start(restarted)
            cluster.kill(stopped, signal.SIGSTOP)
            try:
                # Long enough for several checkpoints (once a second), each of which
                # opens files: the node must have kept descriptors for them.
                producer.wait_acked(producer.count() + 300, "with one follower, flooded")
            finally:
                cluster.kill(stopped, signal.SIGCONT)
        finally:
            for sock in flood:
                sock.close()
        producer.wait_acked(producer.count() + 10, "after the flood")
    assert cluster.pid(leader) == pid and cluster.alive(leader)

    def leading_as_before() -> bool:
        now = cluster.status(leader)
        return now is not None and now["role"] == "leader" and now["term"] == term

    wait_until(leading_as_before, f"{leader} answering, leader of term {term} still")
    check_delivery(producer.acked, consume_all(cluster.namesrv, "fds"))
