"""Leader failover with real processes: kill -9, SIGSTOP/SIGCONT, and a whole group down.

Each test runs a sequential producer (blocking facade, in a thread) while it injects the
fault, and records every acknowledged SendResult. Afterwards, through the PullConsumer,
every acknowledged message must be where its SendResult said, once, in acknowledgement
order within its queue, and no message id may be stored twice (the producer's
(producer_id, seq) retries are idempotent). Replicas must serve identical queues.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import (
    TIME_SCALE,
    LocalCluster,
    SequentialProducer,
    check_delivery,
    check_replicas_identical,
    consume_all,
    create_topic,
    send_sequentially,
    wait_until,
)

QUEUES = 4
BATCH = 40
"""Acknowledged sends to wait for between steps: enough to span several queues."""
REREGISTER_DEADLINE_S = 15 * TIME_SCALE
"""Brokers reconnect to a NameServer within a second; registering every 30 s is what
this must beat."""


def cli(cluster: LocalCluster, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mq.cli", *args, "--dir", str(cluster.directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"mq {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout


def test_kill_9_leader_during_sends_loses_and_duplicates_nothing_and_restarted_node_catches_up(
    cluster: LocalCluster,
) -> None:
    topic = "failover"
    create_topic(cluster.namesrv, topic, QUEUES)
    old = cluster.leader()
    old_term = cluster.status(old)["term"]  # type: ignore[index]

    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(BATCH, "before the kill")
        cluster.kill(old, signal.SIGKILL)
        at_kill = producer.count()

        new = cluster.leader(exclude=[old])
        assert cluster.status(new)["term"] > old_term  # type: ignore[index]
        producer.wait_acked(at_kill + BATCH, "the new leader serves writes")

        # The killed node comes back through the CLI and rejoins while writes go on.
        assert "started" in cli(cluster, "cluster", "start-node", old)
        cluster.reload()
        cluster.wait_answering(old)
        at_restart = producer.count()
        producer.wait_acked(at_restart + BATCH, "writes after the restart")

    cluster.wait_caught_up(old, topic, QUEUES)
    assert cluster.current_leader() is not None
    check_delivery(producer.acked, consume_all(cluster.namesrv, topic))
    check_replicas_identical(cluster, topic, QUEUES)


def test_sigstopped_leader_is_replaced_and_rejoins_as_follower_after_sigcont(
    cluster: LocalCluster,
) -> None:
    topic = "paused"
    create_topic(cluster.namesrv, topic, QUEUES)
    old = cluster.leader()

    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(BATCH, "before the pause")
        cluster.kill(old, signal.SIGSTOP)
        try:
            at_stop = producer.count()
            cluster.leader(exclude=[old])
            producer.wait_acked(at_stop + BATCH, "the new leader serves writes")
        finally:
            cluster.kill(old, signal.SIGCONT)

        # The old leader wakes up believing it leads an older term; it must step down
        # and follow the group's leader (its uncommitted tail, if any, truncated).
        def follows_new_leader() -> bool:
            status = cluster.status(old)
            leader = cluster.current_leader()
            return (
                status is not None
                and status["role"] == "follower"
                and leader is not None
                and status["leader"] == cluster.address(leader)
            )

        wait_until(follows_new_leader, f"{old} to rejoin as a follower")
        assert cluster.alive(old)
        at_resume = producer.count()
        producer.wait_acked(at_resume + BATCH, "writes after the old leader resumed")

    cluster.wait_caught_up(old, topic, QUEUES)
    check_delivery(producer.acked, consume_all(cluster.namesrv, topic))
    check_replicas_identical(cluster, topic, QUEUES)


@pytest.mark.parametrize("flush", ["sync", "async"])
def test_every_acknowledged_message_survives_kill_9_of_the_whole_group(
    make_cluster: Callable[..., LocalCluster], flush: str
) -> None:
    """sync: acknowledged = fsynced on a majority. async: acknowledged = in the page
    cache of a majority, which a process kill does not lose (docs/broker.md)."""
    cluster = make_cluster(flush=flush)
    topic = "wholegroup"
    create_topic(cluster.namesrv, topic, QUEUES)
    nodes = cluster.brokers("broker-a")

    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(2 * BATCH, "before the group goes down")
        cluster.kill_all(nodes)  # at once: no node outlives the others to notice
        before_restart = producer.count()
        for name in nodes:
            cluster.start(name)
        cluster.leader()
        producer.wait_acked(before_restart + BATCH, "writes after the group restarted")

    for name in nodes:
        cluster.wait_caught_up(name, topic, QUEUES)
    check_delivery(producer.acked, consume_all(cluster.namesrv, topic))
    check_replicas_identical(cluster, topic, QUEUES)


def test_nameserver_kill_9_does_not_stop_writes_and_its_restart_relearns_routes_at_once(
    cluster: LocalCluster,
) -> None:
    """The NameServer is not on the data path: a running producer keeps its cached route
    while it is down. A restarted NameServer knows nothing until brokers register again:
    they must notice the dropped connection and register at once, so that new clients
    find routes in seconds rather than after the 30 s registration interval."""
    topic = "ns-restart"
    create_topic(cluster.namesrv, topic, QUEUES)
    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(BATCH, "before the NameServer dies")
        cluster.kill("nameserver", signal.SIGKILL)
        producer.wait_acked(producer.count() + BATCH, "while the NameServer is down")
        cluster.start("nameserver")
        restarted = time.monotonic()
        fresh = wait_until(
            lambda: send_sequentially(cluster.namesrv, topic, 1),
            "a new producer to find a route",
            timeout_s=REREGISTER_DEADLINE_S,
        )
        elapsed = time.monotonic() - restarted
        producer.wait_acked(producer.count() + BATCH, "after the NameServer restarted")

    assert elapsed < REREGISTER_DEADLINE_S
    consumed = consume_all(cluster.namesrv, topic)
    check_delivery(producer.acked, consumed)
    assert fresh[0].msg_id in {m.msg_id for messages in consumed.values() for m in messages}
