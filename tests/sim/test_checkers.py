"""Each checker fails a hand-made history that breaks its guarantee, and passes the
same history without the break."""

from __future__ import annotations

import pytest

from raft.messages import Entry, EntryKind
from sim.checkers import Checkers, Violation
from sim.state_machine import decode_op, encode_op


def e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term, index, data or f"x{index}".encode())


def op(index: int, term: int, client: int, seq: int) -> Entry:
    return Entry(term, index, encode_op(client, seq))


def checkers() -> Checkers:
    return Checkers([1, 2, 3])


def violated(checker: str) -> pytest.RaisesContext[Violation]:
    return pytest.raises(Violation, match=rf"^{checker}:")


# -- election safety


def test_election_safety_catches_two_leaders_in_one_term() -> None:
    c = checkers()
    c.on_role(1, True, 3)
    with violated("election_safety"):
        c.on_role(2, True, 3)


def test_election_safety_allows_one_leader_per_term_and_re_observation() -> None:
    c = checkers()
    c.on_role(1, True, 3)
    c.on_role(1, True, 3)
    c.on_role(1, False, 4)
    c.on_role(2, True, 4)
    c.on_role(1, True, 5)


def test_election_safety_remembers_the_whole_history() -> None:
    c = checkers()
    c.on_role(1, True, 3)
    c.on_role(1, False, 0)  # crashed
    c.on_role(2, True, 4)
    with violated("election_safety"):
        c.on_role(3, True, 3)  # a late leader of an old term


# -- leader append-only


def test_leader_append_only_catches_a_leader_truncating_its_log() -> None:
    c = checkers()
    c.on_role(1, True, 2)
    c.on_append(1, [e(1, 1), e(2, 2)])
    with violated("leader_append_only"):
        c.on_truncate(1, 2, is_leader=True, term=2)


def test_a_follower_may_truncate_an_uncommitted_suffix() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 1)])
    c.on_truncate(1, 2, is_leader=False, term=2)
    c.on_append(1, [e(2, 2)])
    assert c.chain_at(1, 2) is not None


def test_truncating_past_the_end_is_not_a_removal() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1)])
    c.on_truncate(1, 2, is_leader=True, term=1)


# -- log matching


def test_log_matching_catches_same_index_and_term_with_different_prefixes() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1, b"a"), e(2, 2, b"b")])
    with violated("log_matching"):
        c.on_append(2, [e(1, 1, b"DIFFERENT"), e(2, 2, b"b")])


def test_log_matching_catches_a_difference_before_the_matching_entry() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1, b"a"), e(2, 1, b"b"), e(3, 2, b"c")])
    c.on_append(2, [e(1, 1, b"a"), e(2, 3, b"z")])  # a different term at 2 is fine
    with violated("log_matching"):
        c.on_append(2, [e(3, 2, b"c")])  # but (3, 2) now sits on a different prefix


def test_log_matching_passes_identical_logs() -> None:
    c = checkers()
    entries = [e(1, 1), e(2, 1), e(3, 2)]
    c.on_append(1, entries)
    c.on_append(2, entries[:2])
    c.on_append(2, entries[2:])


def test_committed_prefixes_must_agree() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1, b"a"), e(2, 1, b"b")])
    c.on_commit(1, 2, 1)
    c.on_append(2, [e(1, 2, b"other"), e(2, 2, b"b")])
    with violated("log_matching"):
        c.on_commit(2, 1, 2)


def test_a_commit_index_past_the_log_is_caught() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1)])
    with violated("log_matching"):
        c.on_commit(1, 2, 1)


# -- leader completeness


def test_leader_completeness_catches_a_leader_missing_a_committed_entry() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 1)])
    c.on_append(2, [e(1, 1), e(2, 1)])
    c.on_append(3, [e(1, 1)])
    c.on_role(1, True, 1)
    c.on_commit(1, 2, 1)
    with violated("leader_completeness"):
        c.on_role(3, True, 2)


def test_leader_completeness_catches_a_leader_with_a_different_committed_entry() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 1)])
    c.on_commit(1, 2, 1)
    c.on_append(3, [e(1, 1), e(2, 2, b"overwritten")])
    with violated("leader_completeness"):
        c.on_role(3, True, 3)


def test_leader_completeness_only_asks_for_entries_committed_in_earlier_terms() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 5)])
    c.on_commit(1, 2, 5)  # committed in term 5
    c.on_append(3, [e(1, 1)])
    c.on_role(3, True, 4)  # a stale leader of term 4 need not hold it (election safety does)
    with violated("leader_completeness"):
        c.on_role(2, True, 6)  # n2 holds nothing


def test_truncating_a_committed_entry_is_caught() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 1)])
    c.on_commit(1, 2, 1)
    c.on_append(2, [e(1, 1), e(2, 1)])
    with violated("leader_completeness"):
        c.on_truncate(2, 2, is_leader=False, term=2)


# -- state machine safety


def test_state_machine_safety_catches_different_entries_applied_at_one_index() -> None:
    c = checkers()
    c.on_apply(1, e(1, 1, b"a"))
    with violated("state_machine_safety"):
        c.on_apply(2, e(1, 1, b"b"))


def test_state_machine_safety_catches_a_gap() -> None:
    c = checkers()
    c.on_apply(1, e(1, 1))
    with violated("state_machine_safety"):
        c.on_apply(1, e(3, 1))


def test_a_restarted_node_reapplies_from_the_start() -> None:
    c = checkers()
    c.on_apply(1, e(1, 1, b"a"))
    c.on_apply(1, e(2, 1, b"b"))
    c.on_restart(1)
    c.on_apply(1, e(1, 1, b"a"))
    with violated("state_machine_safety"):
        c.on_apply(1, e(2, 1, b"not b"))


# -- durability


def final_state(entries: list[Entry]) -> tuple[list[Entry], list[tuple[int, int]]]:
    ops = []
    seen = set()
    for entry in entries:
        o = decode_op(entry.data) if entry.kind == EntryKind.NORMAL else None
        if o is not None and o not in seen:
            seen.add(o)
            ops.append(o)
    return entries, ops


def test_durability_passes_when_every_ack_is_committed_where_it_was_acked() -> None:
    c = checkers()
    c.on_ack(1, 1, 1, 1)
    log, ops = final_state([op(1, 1, 1, 1), op(2, 1, 1, 1)])  # a retry committed twice
    c.check_durability(log, 2, ops, 2, decode_op)


def test_durability_catches_an_acked_entry_overwritten_by_another_term() -> None:
    c = checkers()
    c.on_ack(1, 1, 1, 1)
    log, ops = final_state([op(1, 2, 2, 1)])
    with violated("durability"):
        c.check_durability(log, 1, ops, 1, decode_op)


def test_durability_catches_an_acked_entry_past_the_final_commit() -> None:
    c = checkers()
    c.on_ack(1, 1, 2, 1)
    log, ops = final_state([op(1, 1, 2, 1), op(2, 1, 1, 1)])
    with violated("durability"):
        c.check_durability(log, 1, ops, 1, decode_op)


def test_durability_catches_an_acked_operation_missing_from_the_applied_state() -> None:
    c = checkers()
    c.on_ack(1, 1, 1, 1)
    log, _ = final_state([op(1, 1, 1, 1)])
    with violated("durability"):
        c.check_durability(log, 1, [], 1, decode_op)


def test_durability_catches_an_operation_applied_twice() -> None:
    c = checkers()
    c.on_ack(1, 1, 1, 1)
    log, _ = final_state([op(1, 1, 1, 1), op(2, 1, 1, 1)])
    with violated("durability"):
        c.check_durability(log, 2, [(1, 1), (1, 1)], 2, decode_op)


# -- snapshots


def test_a_snapshot_past_the_committed_index_is_caught() -> None:
    c = checkers()
    c.on_append(1, [e(1, 1), e(2, 1)])
    c.on_commit(1, 1, 1)
    c.on_log_snapshot(2, 1)
    assert c.chain_at(2, 1) == c.chain_at(1, 1)
    with violated("log_matching"):
        c.on_log_snapshot(3, 2)


def test_a_snapshot_behind_what_a_node_applied_is_caught() -> None:
    c = checkers()
    c.on_apply(1, e(1, 1))
    c.on_apply(1, e(2, 1))
    with violated("state_machine_safety"):
        c.on_snapshot_installed(1, 1)


def test_durability_checks_compacted_acks_against_what_was_applied() -> None:
    c = checkers()
    c.on_apply(1, op(1, 1, 1, 1))
    c.on_ack(1, 1, 1, 1)
    c.check_durability([op(2, 1, 2, 1)], 2, [(1, 1), (2, 1)], 2, decode_op, first_index=2)
    c.on_ack(2, 2, 1, 7)  # acknowledged at index 1 with another term
    with violated("durability"):
        c.check_durability(
            [op(2, 1, 2, 1)], 2, [(1, 1), (2, 1), (2, 2)], 2, decode_op, first_index=2
        )
