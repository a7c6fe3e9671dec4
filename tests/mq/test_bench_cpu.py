"""mq.bench.cpu: CPU time per process from /proc, and the per-message split by role."""

from __future__ import annotations

import os
import sys

import pytest

from mq.bench.cpu import CpuMeter, cpu_seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_cpu_seconds_of_this_process_grows_with_work() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None and before >= 0
    deadline = before + 0.05
    spent = before
    while spent < deadline:  # burn CPU until the counter (10 ms ticks) has moved
        sum(range(10_000))
        now = cpu_seconds(os.getpid())
        assert now is not None
        spent = now
    assert spent > before


def test_a_process_that_is_not_there_has_no_cpu_time() -> None:
    assert cpu_seconds(2**22 + 12345) is None


def test_per_message_cpu_is_split_by_role_and_followers_are_averaged() -> None:
    meter = CpuMeter({"leader:g/1": 1, "follower:g/2": 2, "follower:g/3": 3, "producer": 4})
    readings = iter(
        [
            {"leader:g/1": 1.0, "follower:g/2": 2.0, "follower:g/3": 3.0, "producer": 4.0},
            {"leader:g/1": 1.5, "follower:g/2": 2.2, "follower:g/3": 3.4, "producer": 4.1},
        ]
    )
    meter._now = lambda: next(readings)  # type: ignore[method-assign]
    meter.start()
    assert meter.stop(1000) == {
        "follower": 300.0,  # (0.2 + 0.4) / 2 s over 1000 messages
        "leader": 500.0,
        "producer": 100.0,
        "total": 1200.0,
    }
