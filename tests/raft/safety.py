"""Raft's safety properties (paper, Figure 3), checked against a LocalCluster."""

from __future__ import annotations

from raft.local_cluster import LocalCluster
from raft.messages import Entry
from raft.node import Role


class SafetyViolation(AssertionError):
    pass


class SafetyChecker:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.commit_of_term: dict[int, int] = {}  # the highest commit a leader of the term had

    def check(self) -> None:
        self.election_safety()
        self.log_matching()
        self.state_machine_safety()
        self.leader_completeness()

    def election_safety(self) -> None:
        """At most one leader can be elected in a given term."""
        for i in self.cluster.up():
            node = self.cluster.node(i)
            if node.role is Role.LEADER:
                first = self.leader_of_term.setdefault(node.term, i)
                if first != i:
                    raise SafetyViolation(f"two leaders in term {node.term}: {first} and {i}")

    def log_matching(self) -> None:
        """If two logs contain an entry with the same index and term, the logs are
        identical in all entries up through that index."""
        ids = self.cluster.ids
        for a in ids:
            for b in ids:
                if a < b:
                    self._match_pair(a, b)

    def _match_pair(self, a: int, b: int) -> None:
        log_a = self.cluster.members[a].log
        log_b = self.cluster.members[b].log
        lo = max(log_a.first_index(), log_b.first_index())
        hi = min(log_a.last_index(), log_b.last_index())
        if lo > hi:
            return
        ents_a = log_a.entries(lo, hi + 1, 1 << 62)
        ents_b = log_b.entries(lo, hi + 1, 1 << 62)
        top = next(
            (k for k in range(len(ents_a) - 1, -1, -1) if ents_a[k].term == ents_b[k].term),
            None,
        )
        if top is not None and ents_a[: top + 1] != ents_b[: top + 1]:
            raise SafetyViolation(f"logs of {a} and {b} agree at {lo + top} but differ before")

    def state_machine_safety(self) -> None:
        """If a server has applied a log entry at a given index, no other server will
        ever apply a different log entry for the same index."""
        for i in self.cluster.ids:
            for entry in self.cluster.members[i].sm.entries:
                self._committed(entry, f"node {i} applied")

    def _committed(self, entry: Entry, who: str) -> None:
        seen = self.committed.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise SafetyViolation(f"{who} {entry} but {seen} was committed at that index")

    def leader_completeness(self) -> None:
        """If an entry is committed in a term, it is in the logs of the leaders of all
        higher terms."""
        for i in self.cluster.up():
            node = self.cluster.node(i)
            if node.role is not Role.LEADER:
                continue
            log = self.cluster.members[i].log
            commit = node.commit_index
            if commit > self.commit_of_term.get(node.term, 0):
                self.commit_of_term[node.term] = commit
                for entry in log.entries(log.first_index(), commit + 1, 1 << 62):
                    self._committed(entry, f"leader {i} of term {node.term} committed")
            owed = max((c for t, c in self.commit_of_term.items() if t < node.term), default=0)
            for index in range(log.first_index(), owed + 1):
                term, _ = self.committed[index]
                if log.term_at(index) != term:
                    raise SafetyViolation(
                        f"leader {i} of term {node.term} lacks committed entry {index}"
                    )
