"""Latency fault tolerance: steer sends away from slow or failing broker groups.

RocketMQ's `MQFaultStrategy` + `LatencyFaultToleranceImpl`, with its numbers. After every
send the producer reports the group and how long the request took; a latency at or over
`latency_max_ms[i]` makes the group unavailable for `not_available_ms[i]`:

    latency  >= 50    100   550     1000    2000     3000     15000  ms
    avoid for   0     0     30 000  60 000  120 000  180 000  600 000 ms

A failed request (connection error, timeout) is "isolated": it counts as a latency of
`error_latency_ms` (30 000, RocketMQ's value), i.e. the top level, 600 s. A later fast
answer from the group makes it available again at once (each report replaces the
group's item). An unavailable group is not a dead group: when every candidate is
unavailable, `pick_one_at_least` still offers the least bad half, round-robin, so sends
never stop for lack of a perfect group.

Sans-IO: time is `now_ms()`, injected (the producer passes its event loop's clock, the
tests a fake).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

LATENCY_MAX_MS = (50, 100, 550, 1000, 2000, 3000, 15000)
NOT_AVAILABLE_MS = (0, 0, 30_000, 60_000, 120_000, 180_000, 600_000)
ERROR_LATENCY_MS = 30_000
"""The latency a failed request counts as (RocketMQ's `isolation` value)."""

GROUPS_MAX = 4096
"""Fault items kept; past this the items of groups available again are dropped first."""


def not_available_ms(
    latency_ms: int,
    latency_max_ms: tuple[int, ...] = LATENCY_MAX_MS,
    durations_ms: tuple[int, ...] = NOT_AVAILABLE_MS,
) -> int:
    """How long to avoid a group whose request took `latency_ms` (RocketMQ's
    `computeNotAvailableDuration`: the highest level the latency reaches)."""
    for threshold, duration in zip(reversed(latency_max_ms), reversed(durations_ms), strict=True):
        if latency_ms >= threshold:
            return duration
    return 0


@dataclass(slots=True)
class FaultItem:
    group: str
    latency_ms: int
    available_at_ms: int

    def available(self, now_ms: int) -> bool:
        return now_ms >= self.available_at_ms


class LatencyFaultTolerance:
    def __init__(
        self,
        now_ms: Callable[[], int],
        *,
        latency_max_ms: tuple[int, ...] = LATENCY_MAX_MS,
        not_available_ms: tuple[int, ...] = NOT_AVAILABLE_MS,
        error_latency_ms: int = ERROR_LATENCY_MS,
    ) -> None:
        assert len(latency_max_ms) == len(not_available_ms)
        assert list(latency_max_ms) == sorted(latency_max_ms)
        self.now_ms = now_ms
        self.latency_max_ms = latency_max_ms
        self.not_available_ms = not_available_ms
        self.error_latency_ms = error_latency_ms
        self._items: dict[str, FaultItem] = {}
        self._worst_index = 0

    def update(self, group: str, latency_ms: int, *, isolation: bool = False) -> int:
        """Record a request to `group` that took `latency_ms` (or failed, `isolation`);
        returns how long the group is now avoided, in ms."""
        latency_ms = self.error_latency_ms if isolation else max(0, latency_ms)
        duration = not_available_ms(latency_ms, self.latency_max_ms, self.not_available_ms)
        now = self.now_ms()
        item = self._items.get(group)
        if item is None:
            if len(self._items) >= GROUPS_MAX:
                self._evict(now)
            self._items[group] = FaultItem(group, latency_ms, now + duration)
        else:
            item.latency_ms = latency_ms
            item.available_at_ms = now + duration
        return duration

    def available(self, group: str) -> bool:
        item = self._items.get(group)
        return item is None or item.available(self.now_ms())

    def remove(self, group: str) -> None:
        self._items.pop(group, None)

    def pick_one_at_least(self, candidates: Iterable[str]) -> str | None:
        """Among `candidates`, one of the better half by (available, latency, the time it
        becomes available), taken round-robin; None if there are no candidates.

        RocketMQ picks from every group it has an item for; we restrict to the groups
        that can take the send (the caller's candidates), and a candidate we never heard
        a fault about ranks as available with zero latency.
        """
        now = self.now_ms()
        ranked = sorted(
            (self._items.get(g) or FaultItem(g, 0, 0) for g in dict.fromkeys(candidates)),
            key=lambda item: (not item.available(now), item.latency_ms, item.available_at_ms),
        )
        if not ranked:
            return None
        half = len(ranked) // 2
        if half == 0:
            return ranked[0].group
        self._worst_index += 1
        return ranked[self._worst_index % half].group

    def item(self, group: str) -> FaultItem | None:
        return self._items.get(group)

    def _evict(self, now_ms: int) -> None:
        for group in [g for g, item in self._items.items() if item.available(now_ms)]:
            del self._items[group]
        if len(self._items) >= GROUPS_MAX:  # all unavailable: drop the soonest to recover
            soonest = min(self._items.values(), key=lambda item: item.available_at_ms)
            del self._items[soonest.group]
