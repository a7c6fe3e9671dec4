"""What a leader knows about one follower, and how fast it may send to it.

Flow control follows etcd-raft's progress tracker:

- PROBE: the leader does not know where the follower's log matches its own. It sends
  one AppendRequest at a time (`probe_sent` pauses it) and backtracks on rejection.
- REPLICATE: the follower matched; the leader advances `next` optimistically as it
  sends and keeps several appends in flight, bounded by `Inflights` (message count and
  bytes). A rejection sends it back to PROBE.
- SNAPSHOT: the entries the follower needs were compacted; the leader streams a
  snapshot, one chunk in flight, and then probes from just after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from raft.ready import SnapshotMeta


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The appends sent to one follower and not yet acknowledged: at most `msgs_max`
    messages and, unless a single message is larger, `bytes_max` bytes."""

    __slots__ = ("_bytes", "_window", "bytes_max", "msgs_max")

    def __init__(self, msgs_max: int, bytes_max: int) -> None:
        assert msgs_max >= 1 and bytes_max >= 1
        self.msgs_max = msgs_max
        self.bytes_max = bytes_max
        self._window: deque[tuple[int, int]] = deque()  # (last index, bytes), ascending
        self._bytes = 0

    def full(self) -> bool:
        return len(self._window) >= self.msgs_max or self._bytes >= self.bytes_max

    def add(self, last_index: int, size_bytes: int) -> None:
        assert not self.full(), "caller must check full() before sending"
        assert not self._window or self._window[-1][0] < last_index
        self._window.append((last_index, size_bytes))
        self._bytes += size_bytes

    def free_to(self, index: int) -> None:
        """Forget every message whose entries are all at or below `index`."""
        window = self._window
        while window and window[0][0] <= index:
            self._bytes -= window.popleft()[1]

    def reset(self) -> None:
        self._window.clear()
        self._bytes = 0

    def count(self) -> int:
        return len(self._window)

    def size_bytes(self) -> int:
        return self._bytes


@dataclass(slots=True)
class OutgoingSnapshot:
    """A snapshot being streamed to one follower: `offset` is the next byte to send;
    `sent_end` is the end of the chunk in flight (-1 when none is), `wait_ticks` how long
    its answer has been awaited."""

    meta: SnapshotMeta
    data: bytes
    offset: int = 0
    sent_end: int = -1
    wait_ticks: int = 0


class Progress:
    __slots__ = (
        "commit_sent",
        "inflights",
        "match",
        "next",
        "probe_sent",
        "recent_active",
        "snapshot",
        "stalled_acks",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.inflights = inflights
        # The commit index the follower can derive from what it was sent; a leader whose
        # commit moved past it tells the follower with an empty append.
        self.commit_sent = 0
        # Acks that matched nothing new while entries were outstanding: appends got lost.
        self.stalled_acks = 0
        self.snapshot: OutgoingSnapshot | None = None

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1 if self.next <= self.match else self.next
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot = None
        self.stalled_acks = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot = None
        self.stalled_acks = 0

    def become_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot = OutgoingSnapshot(meta, data)

    def paused(self) -> bool:
        """True when nothing more may be sent now (a probe or a full window is out)."""
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return True

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "match": self.match,
            "next": self.next,
            "recent_active": self.recent_active,
            "inflight_msgs": self.inflights.count(),
            "inflight_bytes": self.inflights.size_bytes(),
            "snapshot_offset": self.snapshot.offset if self.snapshot else None,
        }
