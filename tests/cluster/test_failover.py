"""Failover with real processes: the leader killed (-9) or paused (SIGSTOP/SIGCONT), the
whole group killed, the NameServer killed, and concurrent sends across a leader kill.

Each test runs a producer while it injects the fault and records every acknowledged
message. Afterwards, through the PullConsumer, every acknowledged message must be where
its SendResult said, once, and - for the sequential producer (blocking facade, in a
thread, every 4th request a batch) - in acknowledgement order within its queue; no
message id may be stored twice (retries reuse (producer_id, seq), so they are
idempotent). Replicas must serve identical queues."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import pytest
import trio

from mq.client import Message, Producer
from mq.client.errors import MQClientError
from tests.cluster.harness import (
    DEADLINE_S,
    POLL_S,
    TIME_SCALE,
    Acked,
    LocalCluster,
    SequentialProducer,
    acked_of,
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


def test_a_leader_stopped_with_sigterm_hands_leadership_over_first(cluster: LocalCluster) -> None:
    """A planned stop (SIGTERM) of the leader: it hands leadership to a caught-up node
    before it exits, so the group elects without waiting for an election timeout, and
    the producer loses nothing (sends refused during the hand-over are retried)."""
    topic = "handover"
    create_topic(cluster.namesrv, topic, QUEUES)
    old = cluster.leader()
    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(BATCH, "before the stop")
        cluster.kill(old, signal.SIGTERM)
        new = cluster.leader(exclude=[old])
        producer.wait_acked(producer.count() + BATCH, "the new leader serves writes")
    handed = [e for e in cluster.log_events("leadership_handed_over") if e["process"] == old]
    assert handed, f"{old} exited without handing leadership over"
    assert new != old
    check_delivery(producer.acked, consume_all(cluster.namesrv, topic))


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


async def test_concurrent_async_sends_of_one_producer_store_every_acked_message_once_across_a_leader_kill(
    cluster: LocalCluster,
) -> None:
    """One async Producer (under trio) with many sends in flight: a group remembers
    only the last batch per producer id, so concurrent batches must not share one (a
    batch overtaken by another, or retried after the failover, would be refused as an
    old duplicate and lost). On a healthy group no send may fail at all."""
    topic = "concurrent"
    await trio.to_thread.run_sync(create_topic, cluster.namesrv, topic, QUEUES)
    acked: list[Acked] = []
    failures: list[BaseException] = []

    async with Producer(cluster.namesrv, send_timeout_ms=2000) as producer:
        futures = [
            await producer.send_async(Message(topic, f"burst-{i}".encode())) for i in range(400)
        ]
        for i, future in enumerate(futures):
            acked.extend(acked_of(i, [f"burst-{i}".encode()], await future))

        stop = trio.Event()

        async def sender(worker: int) -> None:
            for i in itertools.count():
                if stop.is_set():
                    return
                body = f"w{worker}-{i}".encode()
                try:
                    result = await producer.send(Message(topic, body))
                except MQClientError as exc:
                    failures.append(exc)
                    await trio.sleep(POLL_S)  # the group is electing
                else:
                    acked.extend(acked_of(len(acked), [body], result))

        async def wait_acked(count: int) -> None:
            with trio.fail_after(DEADLINE_S):
                while len(acked) < count:
                    await trio.sleep(POLL_S)

        async with trio.open_nursery() as nursery:
            for worker in range(16):
                nursery.start_soon(sender, worker)
            await wait_acked(len(acked) + 100)
            old = await trio.to_thread.run_sync(cluster.leader)
            await trio.to_thread.run_sync(cluster.kill, old)
            await trio.to_thread.run_sync(partial(cluster.leader, exclude=[old]))
            await wait_acked(len(acked) + 200)
            stop.set()

    consumed = await trio.to_thread.run_sync(consume_all, cluster.namesrv, topic)
    check_delivery(acked, consumed, ordered=False)
    assert len({a.msg_id for a in acked}) == len(acked)
