"""Consumer groups with real processes: push consumers (each its own OS process,
tests/cluster/consumer_proc.py) against a real 3-node broker group.

- clustering: three members share 8 queues, each message is handled by exactly one of
  them; a member killed with -9 loses its queues to the others at the next rebalance
  (the brokers see its connection close and notify the rest), and nothing is lost;
- broadcasting: every member handles every message;
- the leader killed while members consume: they go on (from followers while there is
  no leader, then from the new one), nothing is lost, and the committed offsets
  survive: a member restarted after a graceful stop handles only what is new.

Duplicates are allowed only around a rebalance or a failover (at-least-once), and the
tests count them instead of hiding them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import (
    DEADLINE_S,
    Acked,
    LocalCluster,
    SequentialProducer,
    create_topic,
    send_sequentially,
    wait_until,
)

QUEUES = 8
REBALANCE_MS = 2_000
"""Members also rebalance on notification; the periodic one is a backstop."""


class ConsumerProcess:
    def __init__(
        self,
        namesrv: list[str],
        topic: str,
        group: str,
        directory: Path,
        *,
        broadcast: bool = False,
        instance: str = "default",
    ) -> None:
        self.directory = directory
        args = [
            sys.executable, "-m", "tests.cluster.consumer_proc",
            ";".join(namesrv), topic, group, str(directory),
            "--instance", instance, f"--rebalance-ms={REBALANCE_MS}",
        ]  # fmt: skip
        if broadcast:
            args.append("--broadcast")
        directory.mkdir(parents=True, exist_ok=True)
        self.log = (directory / "consumer.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def handled(self) -> list[dict[str, Any]]:
        path = self.directory / "handled.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def handled_ids(self) -> Counter[str]:
        return Counter(h["id"] for h in self.handled())

    def assigned(self) -> set[tuple[str, int]]:
        path = self.directory / "assigned.json"
        if self.proc.poll() is not None or not path.exists():
            return set()
        return {(g, q) for g, q in json.loads(path.read_text())}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def consumers() -> Any:
    started: list[ConsumerProcess] = []
    yield started
    for consumer in started:
        consumer.stop(signal.SIGKILL)


def _start(started: list[ConsumerProcess], *args: Any, **kwargs: Any) -> ConsumerProcess:
    consumer = ConsumerProcess(*args, **kwargs)
    started.append(consumer)
    return consumer


def _wait_partition(members: list[ConsumerProcess], what: str) -> None:
    """Until the members' assignments are disjoint and cover every queue."""

    def partitioned() -> bool:
        sets = [m.assigned() for m in members]
        union = set().union(*sets)
        return len(union) == QUEUES and sum(len(s) for s in sets) == QUEUES and all(sets)

    wait_until(partitioned, what)


def _wait_handled(members: list[ConsumerProcess], acked: list[Acked], what: str) -> Counter[str]:
    """Until every acknowledged message was handled by some member; the merged counts."""
    want = {a.msg_id for a in acked}

    def all_handled() -> Counter[str] | None:
        counts: Counter[str] = Counter()
        for m in members:
            counts.update(m.handled_ids())
        return counts if want <= counts.keys() else None

    return wait_until(all_handled, what)


def test_a_clustering_group_shares_the_queues_and_survives_a_member_killed(
    cluster: LocalCluster, consumers: list[ConsumerProcess], tmp_path: Path
) -> None:
    topic, group = "shared", "workers"
    create_topic(cluster.namesrv, topic, QUEUES)
    members = [
        _start(consumers, cluster.namesrv, topic, group, tmp_path / f"c{i}") for i in range(3)
    ]
    _wait_partition(members, "three members to split the 8 queues")
    acked = send_sequentially(cluster.namesrv, topic, 240)
    counts = _wait_handled(members, acked, "every message handled")
    assert not [i for i, n in counts.items() if n > 1], (
        "a message handled twice without a rebalance"
    )
    per_member = [m.handled_ids() for m in members]
    assert all(per_member), "a member handled nothing"
    for a in acked:  # each message was handled by the member that owns its queue
        owners = [i for i, ids in enumerate(per_member) if a.msg_id in ids]
        assert len(owners) == 1

    # Kill one member: the brokers see its connection close and tell the others.
    victim, survivors = members[0], members[1:]
    victim.stop(signal.SIGKILL)
    _wait_partition(survivors, "the two survivors to take over the victim's queues")
    more = send_sequentially(cluster.namesrv, f"{topic}", 160)
    counts = _wait_handled(survivors, more, "every new message handled by the survivors")
    # Messages sent after the takeover are handled once each; only what the victim had
    # in flight (handled, not yet committed) may come again, and that is earlier.
    assert not [m.msg_id for m in more if counts[m.msg_id] != 1]


def test_a_broadcasting_group_gives_every_member_every_message(
    cluster: LocalCluster, consumers: list[ConsumerProcess], tmp_path: Path
) -> None:
    topic, group = "news", "listeners"
    create_topic(cluster.namesrv, topic, QUEUES)
    members = [
        _start(
            consumers,
            cluster.namesrv,
            topic,
            group,
            tmp_path / f"b{i}",
            broadcast=True,
            instance=f"listener-{i}",
        )
        for i in range(2)
    ]
    wait_until(
        lambda: all(len(m.assigned()) == QUEUES for m in members), "every member on 8 queues"
    )
    acked = send_sequentially(cluster.namesrv, topic, 120)
    for m in members:
        counts = _wait_handled([m], acked, f"every message handled by {m.directory.name}")
        assert not [i for i, n in counts.items() if n > 1]
    # Offsets are the member's own (a local file): a restarted member resumes there.
    first = members[0]
    first.stop(signal.SIGTERM)
    assert first.proc.returncode == 0
    before = first.handled_ids()
    again = _start(
        consumers, cluster.namesrv, topic, group, first.directory,
        broadcast=True, instance="listener-0",
    )  # fmt: skip
    wait_until(lambda: len(again.assigned()) == QUEUES, "the restarted member on 8 queues")
    more = send_sequentially(cluster.namesrv, topic, 40)
    counts = _wait_handled([again], more, "the new messages handled by the restarted member")
    replayed = [i for i in before if counts[i] > before[i]]
    assert not replayed, f"{len(replayed)} messages handled again after a graceful restart"


def test_consumers_go_on_through_a_leader_kill_and_offsets_survive_it(
    cluster: LocalCluster, consumers: list[ConsumerProcess], tmp_path: Path
) -> None:
    topic, group = "orders", "billing"
    create_topic(cluster.namesrv, topic, QUEUES)
    members = [
        _start(consumers, cluster.namesrv, topic, group, tmp_path / f"f{i}") for i in range(2)
    ]
    _wait_partition(members, "two members to split the 8 queues")
    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(100, "before the kill")
        old = cluster.leader()
        cluster.kill(old)
        new = wait_until(lambda: cluster.current_leader(exclude=[old]), "a new leader")
        assert new != old
        producer.wait_acked(producer.count() + 100, "after the kill")
    acked = producer.acked
    counts = _wait_handled(members, acked, "every acknowledged message handled")
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= len(acked) // 2, f"{duplicates} duplicates for {len(acked)} messages"

    # A graceful stop commits; the group's offsets live in the replicated log, so a
    # new member (the old leader is still dead) starts where the group left off.
    for m in members:
        m.stop(signal.SIGTERM)
        assert m.proc.returncode == 0
    fresh = _start(consumers, cluster.namesrv, topic, group, tmp_path / "fresh")
    wait_until(lambda: len(fresh.assigned()) == QUEUES, "the new member on 8 queues")
    more = send_sequentially(cluster.namesrv, topic, 40)
    counts = _wait_handled([fresh], more, "the new messages handled")
    replayed = [a.msg_id for a in acked if counts[a.msg_id]]
    assert not replayed, f"{len(replayed)} messages handled again: offsets were lost"
