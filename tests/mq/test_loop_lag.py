"""LoopLag: the worst tick lateness of the last one to two minutes, stalls counted and
logged at most once per LOG_EVERY_MS."""

from __future__ import annotations

from mq.broker.loop_lag import LOG_EVERY_MS, STALL_MS, WINDOW_MS, LoopLag


def test_worst_lag_covers_this_window_and_the_one_before() -> None:
    lag = LoopLag()
    lag.record(0, 5.0)
    lag.record(1_000, 40.0)
    lag.record(2_000, 3.0)
    assert lag.worst_ms == 40.0 and lag.stalls == 0
    lag.record(WINDOW_MS + 10, 2.0)  # the next window: the last one still counts
    assert lag.worst_ms == 40.0
    lag.record(2 * WINDOW_MS + 10, 1.0)  # two windows on: it has aged out
    assert lag.worst_ms == 2.0
    lag.record(5 * WINDOW_MS, 1.0)  # after a gap, nothing older than a window is kept
    assert lag.worst_ms == 1.0


def test_stalls_are_counted_and_logged_at_most_once_per_interval() -> None:
    lag = LoopLag()
    assert lag.record(0, STALL_MS - 1) == 0
    assert lag.record(100, STALL_MS) == 1  # the first stall is logged at once
    assert lag.record(200, 300.0) == 0
    assert lag.record(300, 250.0) == 0
    assert lag.record(100 + LOG_EVERY_MS, 120.0) == 3  # then with the ones in between
    assert lag.stalls == 4
    assert lag.worst_ms == 300.0
