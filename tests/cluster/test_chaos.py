"""Successive random faults on one broker group, with real processes.

Eight rounds, each picking (by seed, $MQ_CHAOS_SEED) a node - the leader more often
than not - and a fault: kill -9, SIGTERM (a clean stop), or SIGSTOP. The group must elect
another leader and take writes while the node is out; the node then comes back (restart,
or SIGCONT) and writes go on. A sequential producer runs throughout. At the end every
node has caught up, every acknowledged message is consumable once, in order, where its
SendResult said, and every replica serves identical queues.
"""

from __future__ import annotations

import os
import random
import signal

from tests.cluster.harness import (
    LocalCluster,
    SequentialProducer,
    check_delivery,
    check_replicas_identical,
    consume_all,
    create_topic,
)

SEED = int(os.environ.get("MQ_CHAOS_SEED", "7"))
ROUNDS = 8
QUEUES = 4
FAULTS = {"kill -9": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGSTOP": signal.SIGSTOP}


def test_successive_random_node_faults_lose_nothing_acknowledged_and_replicas_converge(
    cluster: LocalCluster,
) -> None:
    rng = random.Random(SEED)
    topic = "chaos"
    create_topic(cluster.namesrv, topic, QUEUES)
    nodes = cluster.brokers()
    history: list[str] = []

    with SequentialProducer(cluster.namesrv, topic) as producer:
        producer.wait_acked(30, "before the first fault")
        for round_ in range(ROUNDS):
            leader = cluster.leader()
            target = leader if rng.random() < 0.6 else rng.choice(nodes)
            fault = rng.choice(["kill -9", "kill -9", "SIGTERM", "SIGSTOP"])
            history.append(f"{fault} {target}{' (leader)' if target == leader else ''}")
            what = f"round {round_} (MQ_CHAOS_SEED={SEED}): {history[-1]}"
            cluster.kill(target, FAULTS[fault])
            cluster.leader(exclude=[target])
            producer.wait_acked(producer.count() + rng.randrange(5, 40), f"{what}, node out")
            if fault == "SIGSTOP":
                cluster.kill(target, signal.SIGCONT)
            else:
                cluster.start(target)
            producer.wait_acked(producer.count() + rng.randrange(5, 40), f"{what}, node back")

    print(f"MQ_CHAOS_SEED={SEED}: {history}")  # shown if a check below fails
    for name in nodes:
        cluster.wait_caught_up(name, topic, QUEUES)
    check_delivery(producer.acked, consume_all(cluster.namesrv, topic))
    check_replicas_identical(cluster, topic, QUEUES)
