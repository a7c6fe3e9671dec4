"""One simulated node's disk: its hard state file, its Raft log and its state machine
checkpoint, and what a crash does to them.

The hard state is a small file written with `SimFileSystem.write_atomic` (durable when it
returns, like the real write-tmp, fsync, rename, fsync-dir). The log is a `LogStore`;
today `SimDiskLog`, later the CommitLog-backed store over the same `SimFileSystem`. The
node host talks only to this class, so swapping the log is a change here and nowhere else.
"""

from __future__ import annotations

import random

from raft.messages import HardState
from sim.disk_log import SimDiskLog
from sim.state_machine import Checkpoint
from storage.files import SimFileSystem


def encode_hard_state(hs: HardState) -> bytes:
    vote = "-" if hs.vote is None else str(hs.vote)
    return f"term={hs.term} vote={vote} commit={hs.commit}\n".encode()


def decode_hard_state(data: bytes) -> HardState:
    fields = dict(part.split("=", 1) for part in data.decode().split())
    vote = None if fields["vote"] == "-" else int(fields["vote"])
    return HardState(term=int(fields["term"]), vote=vote, commit=int(fields["commit"]))


class NodeDisk:
    def __init__(self, node_id: int, rng: random.Random) -> None:
        self._rng = rng
        self.fs = SimFileSystem(rng)
        self.fs.makedirs(f"n{node_id}")
        self._hard_state_path = f"n{node_id}/hardstate"
        self._checkpoint_path = f"n{node_id}/checkpoint"
        self.log = SimDiskLog()
        # The state machine's operations, append-only; a checkpoint records how many of
        # them it covers, so only that prefix counts after a crash (a stand-in for the
        # broker's dispatched ConsumeQueue, which is append-only too).
        self.applied_ops: list[tuple[int, int]] = []
        self.hard_state_writes = 0

    def load_hard_state(self) -> HardState:
        data = self.fs.read_bytes(self._hard_state_path)
        return HardState() if data is None else decode_hard_state(data)

    def save_hard_state(self, hs: HardState) -> None:
        self.fs.write_atomic(self._hard_state_path, encode_hard_state(hs))
        self.hard_state_writes += 1

    def load_checkpoint(self) -> Checkpoint | None:
        data = self.fs.read_bytes(self._checkpoint_path)
        return None if data is None else Checkpoint.decode(data)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.fs.write_atomic(self._checkpoint_path, checkpoint.encode())

    def begin_sync(self) -> int:
        return self.log.begin_sync()

    def finish_sync(self, token: int) -> None:
        self.log.finish_sync(token)

    def crash(self) -> int:
        """Power cut: unsynced log writes are lost or torn; returns how many were lost."""
        self.fs.crash()
        return self.log.crash(self._rng)
