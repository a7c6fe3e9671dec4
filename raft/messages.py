"""What Raft nodes say to each other, and the log entries they replicate.

Messages are immutable value objects; the transport (trio driver, simulator,
in-memory benchmark) delivers an `Envelope` to `RaftNode.step`. Every message
carries the sender's term, so the term rules of the paper are applied in one
place before a message reaches its handler.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

# Fixed per-entry cost (term, index, kind, framing) that `Entry.size_bytes` adds to the
# payload; named so byte accounting can be done in bulk without a call per entry.
ENTRY_OVERHEAD_BYTES = 24


class EntryKind(IntEnum):
    """NORMAL carries the caller's data; NOOP is the empty entry a new leader appends
    so that it can commit entries of earlier terms (Raft paper, section 5.4.2)."""

    NORMAL = 0
    NOOP = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL

    def size_bytes(self) -> int:
        """Bytes this entry costs in flight; bounds batches and the in-flight window."""
        return len(self.data) + ENTRY_OVERHEAD_BYTES


_new_entry = Entry.__new__
_set_term, _set_index, _set_data, _set_kind = (
    Entry.__dict__[name].__set__ for name in ("term", "index", "data", "kind")
)


def make_entries(
    term: int, first_index: int, datas: Iterable[bytes], kind: EntryKind = EntryKind.NORMAL
) -> list[Entry]:
    """`[Entry(term, i, d, kind) for i, d in enumerate(datas, first_index)]`, at less than
    half the cost: a frozen dataclass's __init__ pays one object.__setattr__ call per
    field, which dominates a leader's per-entry work; this fills the slots directly."""
    out: list[Entry] = []
    append = out.append
    for index, data in enumerate(datas, first_index):
        entry = _new_entry(Entry)
        _set_term(entry, term)
        _set_index(entry, index)
        _set_data(entry, data)
        _set_kind(entry, kind)
        append(entry)
    return out


@dataclass(frozen=True, slots=True)
class HardState:
    """Persisted before a node votes or acknowledges: losing any field breaks safety."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote, or PreVote when `pre_vote` (term is then the term the candidate would
    campaign in, and nobody changes state on receipt). `transfer` marks a campaign started
    by TimeoutNow, which may disregard the receiver's leader lease."""

    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """AppendEntries; with no entries it is a heartbeat (still checked for consistency)."""

    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """On success `match_index` is the last index the follower holds that matches the
    leader's log. On rejection `conflict_index` / `conflict_term` let the leader skip a
    whole term per round trip instead of one entry (fast backtracking). `reject_index`
    is the `prev_index` of the rejected request, so the leader can tell a stale rejection
    (one it already acted on, or older than what the follower has since matched) from a
    fresh one."""

    term: int
    success: bool
    match_index: int
    conflict_index: int = 0
    conflict_term: int = 0
    reject_index: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One chunk of an install-snapshot transfer; `done` on the last chunk."""

    term: int
    last_index: int
    last_term: int
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    term: int
    last_index: int
    next_offset: int
    success: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells a caught-up follower to campaign at once."""

    term: int


Message: TypeAlias = (
    VoteRequest
    | VoteResponse
    | AppendRequest
    | AppendResponse
    | SnapshotRequest
    | SnapshotResponse
    | TimeoutNow
)


@dataclass(frozen=True, slots=True)
class Envelope:
    src: int
    dst: int
    msg: Message
