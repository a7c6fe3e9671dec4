"""The benchmarks' latency histogram: buckets tile the integers, percentiles are within
the bucket precision of the exact nearest-rank percentile."""

from __future__ import annotations

import math
import random

import pytest

from mq.bench.histogram import Histogram


def exact_percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def test_buckets_tile_the_integers_and_have_bounded_width() -> None:
    h = Histogram(sub_bits=5)
    previous_high = -1
    for index in range(h.bucket_of(1 << 30) + 1):
        low, high = h.bucket_bounds(index)
        assert low == previous_high + 1  # contiguous, no gap, no overlap
        assert h.bucket_of(low) == index and h.bucket_of(high) == index
        assert high - low + 1 <= max(1, low / 16)  # width <= value / 2**(sub_bits-1)
        previous_high = high


def test_small_values_are_exact() -> None:
    h = Histogram()
    for v in range(256):
        h.record(v)
    assert h.percentile(50) == exact_percentile(list(range(256)), 50)
    assert h.percentile(100) == 255
    assert h.percentile(0) == 0
    assert h.min == 0 and h.max == 255


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_within_bucket_precision(seed: int) -> None:
    rng = random.Random(seed)
    # Latency-like: log-normal around 2 ms with a long tail, in microseconds.
    values = [int(rng.lognormvariate(math.log(2000), 1.0)) for _ in range(20_000)]
    values += [rng.randrange(50_000, 2_000_000) for _ in range(30)]
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.count == len(values)
    assert h.min == min(values) and h.max == max(values)
    assert h.mean == pytest.approx(sum(values) / len(values))
    for p in (1, 10, 50, 90, 99, 99.9, 99.99, 100):
        exact = exact_percentile(values, p)
        got = h.percentile(p)
        assert exact <= got <= exact + max(0, exact / 128), (p, exact, got)


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = rng.randrange(0, 10_000_000)
        (a if i % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.count == both.count and a.min == both.min and a.max == both.max
    for p in (50, 99, 99.9):
        assert a.percentile(p) == both.percentile(p)


def test_summary_in_milliseconds_and_empty_histogram() -> None:
    h = Histogram()
    assert h.percentile(99) == 0 and h.summary_ms()["count"] == 0
    h.record_seconds(0.0015)
    h.record_seconds(0.0025)
    s = h.summary_ms()
    assert s["count"] == 2
    assert s["p50_ms"] == pytest.approx(1.5, rel=1 / 128)
    assert s["max_ms"] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        h.record(-1)
    with pytest.raises(ValueError):
        h.percentile(101)
