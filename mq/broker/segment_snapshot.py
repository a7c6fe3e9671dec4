"""The broker's Raft snapshot: the replicated state where a CommitLog segment begins.

Retention deletes whole CommitLog segments, and since the CommitLog is the Raft log,
deleting one compacts the log: a follower that needs an entry of a deleted segment
must be sent a snapshot instead. The snapshot is taken exactly where the first kept
segment begins, so the follower that installs it then replicates every entry the
leader still holds, and ends up with the same messages at the same commit and queue
offsets; a snapshot taken anywhere later would leave it without the messages in
between.

The state at a segment boundary is captured when dispatch reaches the boundary (the
state then reflects exactly the entries before it), once per segment, before any
checkpoint can move past it: a node that crashes before writing it re-dispatches
across the boundary on restart and captures it then.

A snapshot holds no messages: the follower's store is reset to begin, empty, at the
boundary's commit offset, with each ConsumeQueue continuing at the queue offset the
snapshot names (storage's `MessageStore.reset`).

File: `<data_dir>/snapshots/<commit offset, 20 digits>`, written atomically; its bytes
are also what a leader sends (CRC-checked on install).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mq.broker.state import seal, unseal
from storage.files import FileSystem

_VERSION = 1
_NAME_DIGITS = 20


@dataclass(frozen=True, slots=True)
class SegmentSnapshot:
    offset: int
    """CommitLog offset where the segment begins (a multiple of the segment size)."""
    index: int
    """The last Raft entry before it (0 if none), and that entry's term."""
    term: int
    queues: dict[tuple[str, int], int]
    """The next queue offset of every queue that has one (absent: 0)."""
    state: bytes
    """`BrokerState.encode(offset)`."""
    newest_ms: int
    """Store time of the newest message in the segment that ends here (0 if none): the
    age retention goes by, noted as dispatch passed those messages, so that deciding
    needs no read of a segment that may be a GiB."""

    def encode(self) -> bytes:
        payload: dict[str, Any] = {
            "v": _VERSION,
            "offset": self.offset,
            "index": self.index,
            "term": self.term,
            "queues": [[topic, queue_id, n] for (topic, queue_id), n in self.queues.items()],
            "state": self.state,
            "newest_ms": self.newest_ms,
        }
        return seal(payload)

    @classmethod
    def decode(cls, data: bytes | None) -> SegmentSnapshot | None:
        """None if absent or damaged."""
        payload = unseal(data)
        if payload is None:
            return None
        try:
            if payload["v"] != _VERSION:
                return None
            queues = {(str(t), int(q)): int(n) for t, q, n in payload["queues"]}
            return cls(
                int(payload["offset"]),
                int(payload["index"]),
                int(payload["term"]),
                queues,
                bytes(payload["state"]),
                int(payload["newest_ms"]),
            )
        except Exception:
            return None


class SnapshotFiles:
    """The snapshots a node keeps: one per segment boundary it dispatched past and has
    not deleted yet (the oldest, at the CommitLog's first byte, is the one sent)."""

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self._fs = fs
        self.directory = directory
        fs.makedirs(directory)

    def _path(self, offset: int) -> str:
        return f"{self.directory}/{offset:0{_NAME_DIGITS}d}"

    def offsets(self) -> list[int]:
        return sorted(
            int(name)
            for name in self._fs.listdir(self.directory)
            if len(name) == _NAME_DIGITS and name.isdigit()
        )

    def write(self, offset: int, data: bytes) -> None:
        """Durable when it returns; raises DiskFullError and keeps nothing if no room."""
        self._fs.write_atomic(self._path(offset), data)

    def read(self, offset: int) -> bytes | None:
        return self._fs.read_bytes(self._path(offset))

    def load(self, offset: int) -> SegmentSnapshot | None:
        return SegmentSnapshot.decode(self.read(offset))

    def delete_below(self, offset: int) -> None:
        for old in self.offsets():
            if old < offset:
                self._fs.remove(self._path(old))

    def delete_except(self, offset: int) -> None:
        for old in self.offsets():
            if old != offset:
                self._fs.remove(self._path(old))
