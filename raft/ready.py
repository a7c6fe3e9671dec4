"""The hand-off between the core and its driver: what to persist, send and apply.

The driver's loop, in order:

1. `ready = node.ready()`; if it is None there is nothing to do.
2. If `ready.hard_state` is set, persist it durably (write + fsync).
3. If `snapshot` is set (a follower received the last chunk of an install-snapshot),
   install it in the state machine durably *before* step 4: the core already reset
   the log to start after the snapshot, and that reset must not become durable while
   the state machine lacks the snapshot (after a crash, neither would hold the
   entries in between). Nothing in `committed` is older than the snapshot.
4. If `ready.sync_log`, call `log.sync()` — entries the core appended (or truncated,
   or a reset) become durable. Steps 2 and 4 may run concurrently with sending
   `messages`.
5. Send `messages` (allowed before the persistence of steps 2-4 completes: they are
   the leader's appends, heartbeats and other messages whose safety needs no fsync).
6. After steps 2-4 completed, send `persisted_messages`. These are votes and
   acknowledgements: "a node must not reply before its state is on stable storage"
   (Raft paper, Figure 2, rules for all servers / persistent state).
7. Apply `committed` to the state machine, in order.
8. `node.advance(ready)`: the core learns what became durable and applied.

Recovery after a crash: if the state machine holds a snapshot the log does not
reflect (step 3 done, step 4 lost), reset the log to the snapshot's (index, term)
before constructing the node; `applied` must lie within the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raft.messages import Entry, Envelope, HardState


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    last_index: int
    last_term: int


@dataclass(frozen=True, slots=True)
class ReceivedSnapshot:
    """A complete snapshot a follower received; the driver installs `data` and the
    core has already reset the log to start after `meta.last_index`."""

    meta: SnapshotMeta
    data: bytes


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    sync_log: bool = False
    messages: list[Envelope] = field(default_factory=list)
    persisted_messages: list[Envelope] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    snapshot: ReceivedSnapshot | None = None
