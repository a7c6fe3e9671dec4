"""Tunables of a Raft node, and the deliberate bugs the simulator can plant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class RandomSource(Protocol):
    """The part of `random.Random` the core uses; injected so runs replay by seed."""

    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...


# Each plant turns on one deliberate bug in the core. The simulator's checkers must
# catch every one of them; tests/sim asserts they do. Keep this list in sync with the
# `if "name" in self._plants:` sites in raft/node.py.
PLANTS: dict[str, str] = {
    "commit_old_term": "leader commits an entry of an earlier term by counting replicas",
    "ack_before_fsync": "follower acknowledges appended entries before they are durable",
    "double_vote": "a node grants a second vote in the same term",
    "skip_truncate": "follower keeps a conflicting suffix instead of truncating it",
    "accept_stale_term": "follower accepts AppendEntries from a leader of an older term",
    "forget_vote": "a restarted node forgets whom it voted for",
}


@dataclass(frozen=True, slots=True)
class Config:
    """Times are in ticks; the driver decides how long a tick is (`tick_ms` in the broker, 50 ms by default)."""

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    inflight_msgs_max: int = 64
    inflight_bytes_max: int = 8 << 20
    append_bytes_max: int = 1 << 20
    snapshot_chunk_bytes: int = 1 << 20
    # Committed entries handed out by one Ready (at least one entry, however big).
    ready_committed_bytes_max: int = 8 << 20
    # Proposals are refused (BacklogFullError) while this many entries await commit.
    uncommitted_entries_max: int = 1 << 18
    # Tell followers a new commit index at once (an empty append) when no append is on
    # its way to carry it. Off, they learn it with the next append or heartbeat: half
    # the messages of a lone proposal, for followers that apply (and serve reads) up
    # to a heartbeat later. Commit on the leader is the same either way.
    eager_commit_notice: bool = True
    # A node that starts at term 0 (nothing durable: a new node, or one whose disk was
    # replaced) neither votes nor campaigns for this many ticks. A replaced disk lost the
    # node's vote; one election timeout at most (2 * election_ticks) after the node went
    # down, any election it voted in is over, so it cannot vote twice in that term. It
    # also lost the entries it acknowledged: until a leader has brought its log up to
    # the commit index that leader reported, it votes only for candidates whose log is
    # empty too (a brand-new group), so its vote cannot elect a node that lacks them.
    # 0: off (both).
    fresh_vote_hold_ticks: int = 0
    # The node is known to join an existing group (a replaced disk, started with the
    # broker's `--join`): if it starts at term 0, it neither votes nor campaigns until
    # a leader has brought its log up to that leader's commit index, not even for an
    # empty-log candidate. Without it, two empty logs (this one and a node that never
    # stored anything) look like a brand-new group and could elect each other over the
    # node that holds the committed entries. No effect once the node has a durable term.
    join_existing: bool = False
    plants: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = self.plants - PLANTS.keys()
        if unknown:
            raise ValueError(f"unknown plants: {sorted(unknown)}")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be smaller than election_ticks")
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be at least 1")
        if self.fresh_vote_hold_ticks < 0:
            raise ValueError("fresh_vote_hold_ticks must not be negative")
        for name in (
            "inflight_msgs_max",
            "inflight_bytes_max",
            "append_bytes_max",
            "snapshot_chunk_bytes",
            "ready_committed_bytes_max",
            "uncommitted_entries_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
