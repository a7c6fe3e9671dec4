"""The canonical trace of a run: one text line per event, hashed as it is written.

A line is `<virtual time in µs> <what happened>`, built only from ints, enum names and
bytes the run produced, never from `repr` of sets or from object ids, so it is the same
in every process. The trace hash is sha256 over the lines joined by newlines: same seed,
same hash. A tick that changes nothing writes no line (what it would change shows up in
the lines of the next event that does); every message sent, delivered or lost, every
persist, apply, role change, commit advance, client request and fault writes one.

Lines are hashed in chunks so a long run keeps only a bounded tail in memory; when a
trace file is given, every line is written to it as well.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import TextIO

from sim.events import EventLoop

_CHUNK_LINES = 4096


class Trace:
    def __init__(self, loop: EventLoop, tail_lines: int = 30, file: TextIO | None = None) -> None:
        self._loop = loop
        self.lines_total = 0
        self._lines: list[str] = []
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._hash = hashlib.sha256()
        self._file = file

    def emit(self, text: str) -> None:
        lines = self._lines
        lines.append(f"{self._loop.now_ns // 1000} {text}")
        if len(lines) >= _CHUNK_LINES:
            self._flush()

    def _flush(self) -> None:
        if not self._lines:
            return
        block = "\n".join(self._lines) + "\n"
        self._hash.update(block.encode())
        if self._file is not None:
            self._file.write(block)
        self._tail.extend(self._lines[-(self._tail.maxlen or 0) :])
        self.lines_total += len(self._lines)
        self._lines = []

    def tail(self) -> list[str]:
        self._flush()
        return list(self._tail)

    def hexdigest(self) -> str:
        self._flush()
        return self._hash.hexdigest()
