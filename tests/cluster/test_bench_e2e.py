"""`mq bench e2e` end to end against a real cluster, with tiny phases: a smoke test of
the benchmark's machinery (consumer process, stamps, counting), not of its numbers."""

from __future__ import annotations

import trio

from mq.bench import e2e_bench
from tests.cluster.harness import LocalCluster


def test_the_e2e_benchmark_counts_every_message_once(cluster: LocalCluster) -> None:
    result = trio.run(
        lambda: e2e_bench.run_async(
            namesrv=cluster.namesrv,
            directory=None,
            flush="sync",
            rate=200,
            light_s=1.0,
            window=8,
            duration_s=1.0,
        )
    )
    light, load = result["light"], result["load"]
    assert light["sent"] == 200 and light["delivered"] == 200 and light["lost"] == 0
    assert load["sent"] > 0 and load["delivered"] == load["sent"] and load["lost"] == 0
    assert 0 < light["latency_p50_ms"] <= light["latency_p99_ms"]
    cpu = light["cpu_us_per_msg"]
    assert set(cpu) == {"leader", "follower", "producer", "consumer", "total"}
    assert cpu["leader"] > 0 and cpu["follower"] > 0 and cpu["producer"] > 0
    assert cpu["total"] >= cpu["leader"] + 2 * cpu["follower"] + cpu["producer"] - 1
    assert result["ratio"] > 0 and result["produce"]["msgs_s"] > 0
