"""Fixtures for the real-process cluster tests.

`cluster` is a fresh cluster (a NameServer and one 3-node broker group, sync flush) in
the test's tmp_path, with a leader elected; `make_cluster(groups=..., flush=...)` starts
others. Every process a test's clusters ever ran (restarted nodes included) is stopped
when the test ends, whatever happened: SIGCONT, SIGTERM, then kill -9.

When a test fails, the tail of every node's log is attached to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import CLUSTERS_KEY, LocalCluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for cluster in item.stash.get(CLUSTERS_KEY, []):
            report.sections.append((f"cluster logs ({cluster.directory})", cluster.log_tails()))
    return report


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., LocalCluster]]:
    started = request.node.stash.setdefault(CLUSTERS_KEY, [])

    def make(name: str = "cluster", **options: Any) -> LocalCluster:
        cluster = LocalCluster.start_new(tmp_path / name, **options)
        started.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            cluster.destroy()
        leftovers = [(c.directory, pid) for c in started for pid in c.live_pids()]
        assert not leftovers, f"processes survived teardown: {leftovers}"


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()
