"""Where a leader gets the snapshot it sends to a follower whose entries it compacted.

The state machine (broker core, simulator, local cluster) implements `SnapshotSource`.
The core asks for a snapshot only when a follower needs entries the leader's log no
longer holds, and caches it while it still covers the log's snapshot boundary.
"""

from __future__ import annotations

from typing import Protocol

from raft.ready import ReceivedSnapshot, SnapshotMeta

__all__ = ["ReceivedSnapshot", "SnapshotMeta", "SnapshotSource"]


class SnapshotSource(Protocol):
    def snapshot(self) -> tuple[SnapshotMeta, bytes]:
        """The state machine at some applied index, with that index's term. The index
        must be at least `log.first_index() - 1`: every compacted entry is inside it."""
        ...
