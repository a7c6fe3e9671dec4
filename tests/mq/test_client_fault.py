"""Latency fault tolerance with an injected clock (RocketMQ's thresholds)."""

from __future__ import annotations

import pytest

from mq.client.fault import GROUPS_MAX, LatencyFaultTolerance, not_available_ms


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@pytest.mark.parametrize(
    ("latency_ms", "avoid_ms"),
    [
        (0, 0),
        (49, 0),
        (50, 0),
        (100, 0),
        (549, 0),
        (550, 30_000),
        (999, 30_000),
        (1000, 60_000),
        (2000, 120_000),
        (3000, 180_000),
        (14_999, 180_000),
        (15_000, 600_000),
        (30_000, 600_000),
    ],
)
def test_latency_maps_to_rocketmqs_not_available_durations(latency_ms: int, avoid_ms: int) -> None:
    assert not_available_ms(latency_ms) == avoid_ms


def test_slow_group_is_avoided_for_its_duration_then_available_again() -> None:
    clock = Clock()
    fault = LatencyFaultTolerance(clock)
    assert fault.update("g1", 600) == 30_000
    assert not fault.available("g1") and fault.available("g2")
    clock.now = 29_999
    assert not fault.available("g1")
    clock.now = 30_000
    assert fault.available("g1")


def test_a_failure_counts_as_the_30_second_latency_level() -> None:
    clock = Clock()
    fault = LatencyFaultTolerance(clock)
    assert fault.update("g1", 5, isolation=True) == 600_000
    item = fault.item("g1")
    assert item is not None and item.latency_ms == 30_000


def test_a_fast_answer_makes_a_group_available_at_once() -> None:
    clock = Clock()
    fault = LatencyFaultTolerance(clock)
    fault.update("g1", 0, isolation=True)
    assert not fault.available("g1")
    fault.update("g1", 10)
    assert fault.available("g1")


def test_pick_one_at_least_rotates_over_the_better_half() -> None:
    clock = Clock()
    fault = LatencyFaultTolerance(clock)
    fault.update("g1", 0, isolation=True)  # worst: 30 s latency
    fault.update("g2", 600)
    fault.update("g3", 1000)
    fault.update("g4", 2000)
    picks = {fault.pick_one_at_least(["g1", "g2", "g3", "g4"]) for _ in range(10)}
    assert picks == {"g2", "g3"}
    assert fault.pick_one_at_least(["g1"]) == "g1"
    assert fault.pick_one_at_least([]) is None
    # A candidate with no fault item ranks first: available, zero latency.
    assert fault.pick_one_at_least(["g1", "g9"]) == "g9"


def test_the_table_is_bounded() -> None:
    clock = Clock()
    fault = LatencyFaultTolerance(clock)
    for i in range(GROUPS_MAX + 10):
        fault.update(f"g{i}", 0, isolation=True)
    assert sum(1 for i in range(GROUPS_MAX + 10) if fault.item(f"g{i}")) == GROUPS_MAX
