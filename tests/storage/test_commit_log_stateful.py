"""Random appends, flushes, truncations and torn crashes against a model of the log."""

from __future__ import annotations

import itertools
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from storage.commit_log import WRITE_LIMIT_FILE, CommitLog
from storage.files import SimFileSystem
from storage.record import MAGIC_ENTRY, encode_frame

SEG = 256
D = "/node/commitlog"


class CommitLogMachine(RuleBasedStateMachine):
    """The model is the list of (offset, frame) the log must hold, and how many are durable."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = SimFileSystem(random.Random(0))
        self.log = CommitLog(self.fs, D, segment_bytes=SEG)
        self.reserve = 1 << 20
        self.model: list[tuple[int, bytes]] = []
        self.durable = 0
        self.serial = 0

    @initialize(seed=st.integers(0, 2**32 - 1), reserve=st.sampled_from([1, 100, 1 << 20]))
    def start(self, seed: int, reserve: int) -> None:
        self.fs = SimFileSystem(random.Random(seed))
        self.reserve = reserve  # small reserves make the write limit bound recovery scans
        self.log = self._open()

    def _open(self) -> CommitLog:
        return CommitLog(self.fs, D, segment_bytes=SEG, write_reserve_bytes=self.reserve)

    def _frame(self, size: int) -> bytes:
        self.serial += 1
        payload = self.serial.to_bytes(4, "little") * ((size - 12) // 4 + 1)
        return encode_frame(MAGIC_ENTRY, payload[: size - 12])

    @rule(sizes=st.lists(st.integers(12, 140), min_size=1, max_size=6), one_buffer=st.booleans())
    def append(self, sizes: list[int], one_buffer: bool) -> None:
        frames = [self._frame(size) for size in sizes]
        before = self.log.max_offset
        if one_buffer:
            offsets = self.log.append_buffer(b"".join(frames), sizes)
        else:
            offsets = self.log.append(frames)
        assert offsets[0] >= before
        assert all(a < b for a, b in itertools.pairwise(offsets))
        self.model.extend(zip(offsets, frames, strict=True))

    @rule()
    def flush(self) -> None:
        assert self.log.flush() == self.log.max_offset
        self.durable = len(self.model)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.model) - 1), label="truncate at frame")
        self.log.truncate(self.model[i][0])
        del self.model[i:]
        self.durable = len(self.model)  # truncate syncs before returning

    @rule(tear=st.booleans(), from_segment_start=st.booleans())
    def crash_and_recover(self, tear: bool, from_segment_start: bool) -> None:
        checkpoint = self.log.flushed_offset
        self.fs.crash(tear=tear)
        self.log = self._open()
        from_offset = checkpoint - checkpoint % SEG if from_segment_start else checkpoint
        report = self.log.recover(from_offset)
        got = self._frames()
        assert len(got) >= self.durable, (report, len(got), self.durable)
        # Everything flushed is back byte-identical; past it, only whole frames that were
        # written, in order: nothing torn, nothing after a torn frame, nothing stale.
        assert got == self.model[: len(got)], report
        self.model = got
        self.durable = len(got)

    @rule()
    def kill_and_restart(self) -> None:
        # The process dies but the OS does not: unsynced bytes stay in the page cache.
        checkpoint = self.log.flushed_offset
        self.log = self._open()
        self.log.recover(checkpoint)
        assert self._frames() == self.model
        self.durable = len(self.model)  # recovery syncs what it validated

    def _frames(self) -> list[tuple[int, bytes]]:
        return [(off, bytes(view)) for off, view in self.log.iter_frames()]

    @invariant()
    def log_holds_exactly_the_model(self) -> None:
        got = self._frames()
        assert got == self.model
        assert all(a[0] < b[0] for a, b in itertools.pairwise(got))
        log = self.log
        assert log.min_offset <= log.flushed_offset <= log.max_offset
        if self.model:
            last_offset, last_frame = self.model[-1]
            assert log.max_offset >= last_offset + len(last_frame)
            # Nothing was ever written past the durable write limit. (max_offset may be
            # beyond the last byte written: a tail too short for a frame is skipped.)
            limit = self.fs.read_bytes(f"{D}/{WRITE_LIMIT_FILE}")
            written_end = last_offset + len(last_frame)
            assert limit is not None and int.from_bytes(limit[:8], "little") >= written_end

    def teardown(self) -> None:
        self.log.close()


CommitLogMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None
)
TestCommitLogStateful = CommitLogMachine.TestCase
