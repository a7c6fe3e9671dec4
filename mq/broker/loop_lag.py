"""How late a node's event loop runs: the measure of a stall.

One event loop serves every send, pull and Raft message of a node, so anything that
blocks it (an fsync or an unlink on the loop thread, a long GC pause, a process the
machine does not schedule) delays all of them. The driver's tick task asks to wake
every `tick_ms`; how late it wakes is the loop's lag, as Node.js reports its event-loop
delay. A node shows the worst lag of the last one to two minutes and counts the ticks
that came `STALL_MS` or more late; a stall is logged (at most once per
`LOG_EVERY_MS`, with how many there were since the last line).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LOG_EVERY_MS", "STALL_MS", "WINDOW_MS", "LoopLag"]

STALL_MS = 100
"""A tick this late is a stall: a send waited at least this long for nothing."""
WINDOW_MS = 60_000
"""`worst_ms` covers the current window and the one before it."""
LOG_EVERY_MS = 10_000


@dataclass(slots=True)
class LoopLag:
    stalls: int = 0
    """Ticks `STALL_MS` or more late since the start."""
    _window_start_ms: int | None = None
    _worst_ms: float = 0.0
    _previous_worst_ms: float = 0.0
    _last_log_ms: int | None = None
    _unlogged: int = 0

    def record(self, now_ms: int, lag_ms: float) -> int:
        """Note a tick `lag_ms` late; returns how many stalls to log now (0: none)."""
        self._roll(now_ms)
        self._worst_ms = max(self._worst_ms, lag_ms)
        if lag_ms < STALL_MS:
            return 0
        self.stalls += 1
        self._unlogged += 1
        if self._last_log_ms is not None and now_ms - self._last_log_ms < LOG_EVERY_MS:
            return 0
        self._last_log_ms = now_ms
        logged, self._unlogged = self._unlogged, 0
        return logged

    @property
    def worst_ms(self) -> float:
        """The worst lag of the last one to two windows, as of the last tick (ticks
        come every `tick_ms` while the loop runs; a loop that does not run answers
        nobody anyway)."""
        return max(self._worst_ms, self._previous_worst_ms)

    def _roll(self, now_ms: int) -> None:
        start = self._window_start_ms
        if start is None:
            self._window_start_ms = now_ms
            return
        if now_ms - start < WINDOW_MS:
            return
        # The window that just ended is the previous one only if nothing was skipped.
        self._previous_worst_ms = self._worst_ms if now_ms - start < 2 * WINDOW_MS else 0.0
        self._worst_ms = 0.0
        self._window_start_ms = now_ms - (now_ms - start) % WINDOW_MS
