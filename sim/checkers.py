"""Safety and liveness checkers: they watch a run event by event and fail it the moment
a Raft guarantee is broken.

The checkers see the run only through the calls below, made by the node hosts as things
happen, so a test can feed them a hand-made history. Each call does O(1) work, or work
proportional to the entries it reports, never a scan of whole logs:

* `on_role(node, is_leader, term)`       a node was seen in a role at a term
* `on_append(node, entries)`              entries were appended to a node's log
* `on_truncate(node, index, is_leader)`  a node's log lost its suffix from `index`
* `on_log_reset(node, keep, entries)`    a node's log after a crash: its first `keep`
                                         entries, then `entries` (what else survived)
* `on_commit(node, commit_index, term)`  a node's commit index advanced
* `on_apply(node, entry)`                a node's state machine applied an entry
* `on_restart(node, applied)`            a node restarts, its state machine restored
                                         up to index `applied` (its checkpoint)
* `on_log_snapshot(node, index)`         a node's log was reset after a snapshot
* `on_snapshot_installed(node, index)`   its state machine was replaced by the snapshot
* `on_ack(client, seq, index, term)`     a client got an acknowledgement
* `check_durability(...)`                at the end: every ack is in the final log

To compare logs cheaply every log is mirrored as a *chain hash* per index:
`h(i) = hash(h(i-1), term, kind, data)`. Two logs with equal chain hashes at `i` are
identical up to `i` (up to hash collisions, 2**-64), so log matching and prefix
agreement become one comparison instead of a scan.

What each checker states (names as reported):

* election_safety: at most one node is ever seen as leader of a given term.
* leader_append_only: a leader never removes entries from its own log; a truncation
  while the node is leader fails.
* log_matching: if two logs hold an entry with the same index and term, they are
  identical up to it (checked on every append, on all logs, not only committed
  prefixes); and committed prefixes of all nodes agree.
* leader_completeness: when a node becomes leader of term T, its log holds every entry
  committed in a term before T (an entry's commit term is the term of the first node seen
  committing it).
* state_machine_safety: every node applies the same entry at the same index, in index
  order without gaps.
* durability: every acknowledged proposal is, at the end, in the committed log at the
  index and term it was acknowledged with, and in the applied state exactly once.
* liveness: raised by the run when, after every fault healed, no proposal commits within
  the bound (see sim/run.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from raft.messages import Entry


class Violation(Exception):
    """A checker found a broken guarantee; the run stops and reports it."""

    def __init__(self, checker: str, message: str) -> None:
        super().__init__(f"{checker}: {message}")
        self.checker = checker
        self.message = message


CHECKERS: dict[str, str] = {
    "election_safety": "at most one leader per term, over the whole run",
    "leader_append_only": "a leader never removes or overwrites entries in its own log",
    "log_matching": "same index and term => identical logs up to it; committed prefixes agree",
    "leader_completeness": "a new leader holds every entry committed in earlier terms",
    "state_machine_safety": "all nodes apply the same entry at each index, in order",
    "durability": "every acknowledged proposal ends up committed once, where it was acked",
    "liveness": "after faults heal, a leader is elected and a proposal commits in time",
}


def chain(prev: int, entry: Entry) -> int:
    return hash((prev, entry.term, int(entry.kind), entry.data))


@dataclass(frozen=True, slots=True)
class Ack:
    client: int
    seq: int
    index: int
    term: int


class Checkers:
    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = tuple(node_ids)
        # election_safety
        self.leaders: dict[int, int] = {}
        self._leader_term: dict[int, int | None] = dict.fromkeys(self.node_ids)
        # per-node mirror of the log as chain hashes (index i at position i - 1)
        self._chains: dict[int, list[int]] = {n: [] for n in self.node_ids}
        # log_matching: (index, term) -> (chain hash, node that first held it)
        self._seen: dict[tuple[int, int], tuple[int, int]] = {}
        # committed prefix (chain hashes) and the highest index first committed per term
        self.committed: list[int] = []
        self._commit_max_by_term: dict[int, int] = {}
        # state_machine_safety
        self.applied: list[tuple[int, int, bytes]] = []
        self._applied_count: dict[int, int] = dict.fromkeys(self.node_ids, 0)
        # durability
        self.acks: list[Ack] = []

    # -- roles

    def on_role(self, node: int, is_leader: bool, term: int) -> None:
        if not is_leader:
            self._leader_term[node] = None
            return
        if self._leader_term[node] == term:
            return
        other = self.leaders.get(term)
        if other is not None and other != node:
            raise Violation(
                "election_safety", f"n{node} and n{other} are both leaders of term {term}"
            )
        self.leaders[term] = node
        self._leader_term[node] = term
        self._check_completeness(node, term)

    def _check_completeness(self, node: int, term: int) -> None:
        needed = 0
        for commit_term, index in self._commit_max_by_term.items():
            if commit_term < term and index > needed:
                needed = index
        if needed == 0:
            return
        log = self._chains[node]
        if len(log) < needed:
            raise Violation(
                "leader_completeness",
                f"n{node} became leader of term {term} with last index {len(log)}, "
                f"but index {needed} was committed in an earlier term",
            )
        if log[needed - 1] != self.committed[needed - 1]:
            first_bad = next(i + 1 for i in range(needed) if log[i] != self.committed[i])
            raise Violation(
                "leader_completeness",
                f"n{node} became leader of term {term} but its entry at index {first_bad} "
                f"differs from the committed one (committed up to {needed} before term {term})",
            )

    # -- logs

    def on_append(self, node: int, entries: Sequence[Entry]) -> None:
        log = self._chains[node]
        seen = self._seen
        prev = log[-1] if log else 0
        for entry in entries:
            assert entry.index == len(log) + 1, "mirror out of step with the log"
            h = chain(prev, entry)
            key = (entry.index, entry.term)
            first = seen.get(key)
            if first is None:
                seen[key] = (h, node)
            elif first[0] != h:
                raise Violation(
                    "log_matching",
                    f"n{node} and n{first[1]} both hold index {entry.index} term {entry.term} "
                    f"but their logs differ at or before it",
                )
            log.append(h)
            prev = h

    def on_truncate(self, node: int, index: int, is_leader: bool, term: int) -> None:
        log = self._chains[node]
        if index > len(log):
            return
        if is_leader:
            raise Violation(
                "leader_append_only",
                f"n{node}, leader of term {term}, removed its entries from index {index} "
                f"to {len(log)}",
            )
        committed = len(self.committed)
        if index <= committed and log[index - 1] == self.committed[index - 1]:
            # Not a Raft rule by itself (the node may not know it is committed), but a
            # committed entry must never be truncated from a log that holds it.
            raise Violation(
                "leader_completeness",
                f"n{node} truncated its log from index {index}, below the committed "
                f"index {committed}",
            )
        del log[index - 1 :]

    def on_log_reset(
        self, node: int, keep: int, entries: Sequence[Entry], base: int | None = None
    ) -> None:
        """After a crash: the log's first `keep` entries are unchanged and `entries`
        follow them. With `base`, the log now starts after a snapshot at `base` (a reset
        landed, or one was undone) and `entries` are all it holds after it."""
        if base is None:
            del self._chains[node][keep:]
        else:
            self._chains[node] = self._snapshot_prefix(node, base)
        self.on_append(node, entries)

    def on_log_snapshot(self, node: int, index: int) -> None:
        """The node's log was reset to start after a snapshot ending at `index`."""
        self._chains[node] = self._snapshot_prefix(node, index)

    def _snapshot_prefix(self, node: int, index: int) -> list[int]:
        if index > len(self.committed):
            raise Violation(
                "log_matching",
                f"n{node} holds a snapshot up to index {index}, past the committed "
                f"index {len(self.committed)}",
            )
        return self.committed[:index]

    def chain_at(self, node: int, index: int) -> int | None:
        log = self._chains[node]
        return log[index - 1] if 0 < index <= len(log) else None

    # -- commit and apply

    def on_commit(self, node: int, commit_index: int, term: int) -> None:
        log = self._chains[node]
        if commit_index > len(log):
            raise Violation(
                "log_matching",
                f"n{node} has commit index {commit_index} past its last log index {len(log)}",
            )
        committed = self.committed
        known = len(committed)
        probe = min(commit_index, known)
        if probe and log[probe - 1] != committed[probe - 1]:
            first_bad = next(i + 1 for i in range(probe) if log[i] != committed[i])
            raise Violation(
                "log_matching",
                f"n{node} committed up to {commit_index} but its entry at index {first_bad} "
                f"differs from the one committed before",
            )
        if commit_index > known:
            committed.extend(log[known:commit_index])
            if self._commit_max_by_term.get(term, 0) < commit_index:
                self._commit_max_by_term[term] = commit_index

    def on_snapshot_installed(self, node: int, index: int) -> None:
        """The node's state machine was replaced by a snapshot taken at `index`."""
        if index < self._applied_count[node]:
            raise Violation(
                "state_machine_safety",
                f"n{node} installed a snapshot at {index}, behind the {self._applied_count[node]} "
                f"entries it had applied",
            )
        if index > len(self.applied):
            raise Violation(
                "state_machine_safety",
                f"n{node} installed a snapshot at {index}, past everything applied anywhere",
            )
        self._applied_count[node] = index

    def on_restart(self, node: int, applied: int = 0) -> None:
        if applied > self._applied_count[node]:
            raise Violation(
                "state_machine_safety",
                f"n{node} restarts with index {applied} applied, past the "
                f"{self._applied_count[node]} it had applied",
            )
        self._applied_count[node] = applied
        self._leader_term[node] = None

    def on_apply(self, node: int, entry: Entry) -> None:
        count = self._applied_count[node]
        if entry.index != count + 1:
            raise Violation(
                "state_machine_safety",
                f"n{node} applied index {entry.index} after index {count} (gap or reorder)",
            )
        self._applied_count[node] = entry.index
        applied = self.applied
        record = (entry.term, int(entry.kind), entry.data)
        if entry.index <= len(applied):
            if applied[entry.index - 1] != record:
                t, _, data = applied[entry.index - 1]
                raise Violation(
                    "state_machine_safety",
                    f"n{node} applied term {entry.term} {entry.data!r} at index {entry.index}, "
                    f"another node applied term {t} {data!r} there",
                )
        else:
            applied.append(record)

    # -- clients

    def on_ack(self, client: int, seq: int, index: int, term: int) -> None:
        self.acks.append(Ack(client, seq, index, term))

    def check_durability(
        self,
        final_log: Sequence[Entry],
        final_commit: int,
        applied_ops: Sequence[tuple[int, int]],
        applied_index: int,
        decode: Callable[[bytes], tuple[int, int] | None],
        first_index: int = 1,
    ) -> None:
        """At the end: `final_log` is the log of the node with the highest commit index,
        `final_commit` its commit index, `applied_ops` the (client, seq) pairs its state
        machine holds, in apply order, up to `applied_index`, and `decode` reads
        (client, seq) from entry data. An ack past `applied_index` (the node has not
        applied it yet) is checked in the log only; one before the log's `first_index`
        (compacted into a snapshot) against what every node applied there."""
        counts: dict[tuple[int, int], int] = {}
        for op in applied_ops:
            counts[op] = counts.get(op, 0) + 1
        by_index = {e.index: e for e in final_log}
        for ack in self.acks:
            if ack.index > final_commit:
                raise Violation(
                    "durability",
                    f"client {ack.client} seq {ack.seq} was acknowledged at index {ack.index} "
                    f"term {ack.term}, but the final commit index is {final_commit}",
                )
            entry = by_index.get(ack.index)
            if entry is not None:
                term, data = entry.term, entry.data
            elif ack.index < first_index and ack.index <= len(self.applied):
                # Compacted away: the final node's committed prefix is the one every node
                # applied (log_matching and state_machine_safety held all along).
                term, _, data = self.applied[ack.index - 1]
            else:
                raise Violation(
                    "durability",
                    f"client {ack.client} seq {ack.seq} was acknowledged at index {ack.index} "
                    f"term {ack.term}; the final committed log has nothing there",
                )
            if term != ack.term or decode(data) != (ack.client, ack.seq):
                raise Violation(
                    "durability",
                    f"client {ack.client} seq {ack.seq} was acknowledged at index {ack.index} "
                    f"term {ack.term}; the final committed log holds term {term} {data!r} there",
                )
            n = counts.get((ack.client, ack.seq), 0)
            if n != 1 and ack.index <= applied_index:
                raise Violation(
                    "durability",
                    f"client {ack.client} seq {ack.seq} is in the final applied state {n} times",
                )
