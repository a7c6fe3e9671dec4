"""A tiny HDR-style latency histogram: log-linear buckets of non-negative integers.

Values below `2**sub_bits` get a bucket each (exact). Above that, every power of two
[2**k, 2**(k+1)) is split into `2**(sub_bits-1)` equal buckets, so a bucket is at most
1/2**(sub_bits-1) of the values in it wide: with the default sub_bits=8 a reported
percentile is within 1/128 (< 0.8 %) of the exact one, whatever the range, in a few
KiB of counters. Record latencies in microseconds (`record_seconds` does it).

Percentiles are nearest-rank: `percentile(p)` is the highest value equivalent to (in the
same bucket as) the smallest recorded value with at least p % of the values at or below
it, capped at the largest value recorded (HdrHistogram's `getValueAtPercentile`).
"""

from __future__ import annotations

import math
from typing import Any


class Histogram:
    __slots__ = ("_counts", "_half", "_sub", "_sub_bits", "count", "max", "min", "total")

    def __init__(self, sub_bits: int = 8) -> None:
        if not 2 <= sub_bits <= 16:
            raise ValueError("sub_bits must be within [2, 16]")
        self._sub_bits = sub_bits
        self._sub = 1 << sub_bits
        self._half = self._sub >> 1
        self._counts: list[int] = []
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    # ------------------------------------------------------------------ buckets

    def bucket_of(self, value: int) -> int:
        if value < self._sub:
            return value
        shift = value.bit_length() - self._sub_bits
        return self._sub + (shift - 1) * self._half + (value >> shift) - self._half

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """[low, high] of the values that fall in bucket `index` (both inclusive)."""
        if index < self._sub:
            return index, index
        shift, top = divmod(index - self._sub, self._half)
        shift += 1
        low = (top + self._half) << shift
        return low, low + (1 << shift) - 1

    # ------------------------------------------------------------------ recording

    def record(self, value: int, count: int = 1) -> None:
        if value < 0:
            raise ValueError("values must be >= 0")
        index = self.bucket_of(value)
        counts = self._counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += count
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += count
        self.total += value * count

    def record_seconds(self, seconds: float) -> None:
        """Record a duration in seconds as whole microseconds."""
        self.record(max(0, round(seconds * 1e6)))

    def merge(self, other: Histogram) -> None:
        if other._sub_bits != self._sub_bits:
            raise ValueError("cannot merge histograms of different precision")
        if other.count == 0:
            return
        if len(other._counts) > len(self._counts):
            self._counts.extend([0] * (len(other._counts) - len(self._counts)))
        for i, c in enumerate(other._counts):
            self._counts[i] += c
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    # ------------------------------------------------------------------ reading

    def percentile(self, p: float) -> int:
        if not 0 <= p <= 100:
            raise ValueError("p must be within [0, 100]")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                return min(self.bucket_bounds(index)[1], self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary_ms(self, scale: float = 1e-3) -> dict[str, Any]:
        """p50/p99/p999/max/mean in milliseconds for values recorded in microseconds."""

        def ms(v: float) -> float:
            return round(v * scale, 3)

        return {
            "count": self.count,
            "p50_ms": ms(self.percentile(50)),
            "p99_ms": ms(self.percentile(99)),
            "p999_ms": ms(self.percentile(99.9)),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        }
