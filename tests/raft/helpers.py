"""Test helpers: seed a member's durable state, and pick messages off the network."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from raft.local_cluster import LocalCluster
from raft.messages import Entry, Envelope, HardState, Message


def seed_log(
    cluster: LocalCluster,
    node_id: int,
    terms: Sequence[int],
    term: int | None = None,
    commit: int = 0,
) -> None:
    """Replace a member's durable state with a log whose entry i+1 has terms[i] and
    restart it. Data names the term and index: entries with the same index and term
    are identical, as the Log Matching Property promises."""
    member = cluster.members[node_id]
    if member.raft is not None:
        cluster.crash(node_id)
    member.log.reset(0, 0)
    member.log.append([Entry(t, i, f"t{t}i{i}".encode()) for i, t in enumerate(terms, start=1)])
    member.log.sync()
    member.hard_state = HardState(term=max([*terms, term or 0]), commit=commit)
    cluster.restart(node_id)


def log_terms(cluster: LocalCluster, node_id: int) -> list[int]:
    log = cluster.members[node_id].log
    return [log.term_at(i) or 0 for i in range(log.first_index(), log.last_index() + 1)]


def log_entries(cluster: LocalCluster, node_id: int) -> list[Entry]:
    log = cluster.members[node_id].log
    return log.entries(log.first_index(), log.last_index() + 1, 1 << 62)


def take(cluster: LocalCluster, match: Callable[[Envelope], bool]) -> list[Envelope]:
    """Remove and return the queued messages that `match`."""
    kept, taken = [], []
    for env in cluster.network:
        (taken if match(env) else kept).append(env)
    cluster.network.clear()
    cluster.network.extend(kept)
    return taken


def of_type(
    kind: type[Message] | type, src: int | None = None, dst: int | None = None
) -> Callable[[Envelope], bool]:
    def match(env: Envelope) -> bool:
        return (
            isinstance(env.msg, kind)
            and (src is None or env.src == src)
            and (dst is None or env.dst == dst)
        )

    return match
