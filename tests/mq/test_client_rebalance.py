"""Queue allocation strategies: every queue to exactly one member, deterministically."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from mq.client import (
    AllocateAveragely,
    AllocateAveragelyByCircle,
    AllocateByConfig,
    AllocateConsistentHash,
    MessageQueue,
)
from mq.client.rebalance import AllocateStrategy

FACTORIES: list[Callable[[], AllocateStrategy]] = [
    AllocateAveragely,
    AllocateAveragelyByCircle,
    AllocateConsistentHash,
    lambda: AllocateConsistentHash(virtual_nodes=1),
]
PARTITIONING = [factory() for factory in FACTORIES]

queue_lists = st.lists(
    st.builds(
        MessageQueue,
        st.sampled_from(["orders", "audit"]),
        st.sampled_from(["g1", "g2", "g3"]),
        st.integers(0, 15),
    ),
    unique=True,
    max_size=40,
).map(sorted)
member_lists = st.lists(
    st.text("abcdef0123456789@.", min_size=1, max_size=12), unique=True, min_size=1, max_size=12
).map(sorted)


def allocation(
    strategy: AllocateStrategy, members: list[str], queues: list[MessageQueue]
) -> dict[str, list[MessageQueue]]:
    return {m: strategy.allocate("cg", m, members, queues) for m in members}


@given(members=member_lists, queues=queue_lists)
def test_every_queue_goes_to_exactly_one_member(
    members: list[str], queues: list[MessageQueue]
) -> None:
    for strategy in PARTITIONING:
        shares = allocation(strategy, members, queues)
        taken = [q for share in shares.values() for q in share]
        assert sorted(taken) == queues, strategy.name
        for share in shares.values():
            assert share == sorted(share)  # in queue order


@given(members=member_lists, queues=queue_lists)
def test_allocation_is_deterministic(members: list[str], queues: list[MessageQueue]) -> None:
    """Same inputs, same answer, from a fresh strategy object (another process)."""
    for factory in FACTORIES:
        assert allocation(factory(), members, queues) == allocation(factory(), members, queues)


@given(members=member_lists, queues=queue_lists)
def test_averaging_is_balanced_within_one(members: list[str], queues: list[MessageQueue]) -> None:
    for strategy in (AllocateAveragely(), AllocateAveragelyByCircle()):
        sizes = [len(share) for share in allocation(strategy, members, queues).values()]
        assert max(sizes) - min(sizes) <= 1


@given(members=member_lists, queues=queue_lists)
def test_an_unknown_member_gets_nothing(members: list[str], queues: list[MessageQueue]) -> None:
    for strategy in PARTITIONING:
        assert strategy.allocate("cg", "not-a-member!", members, queues) == []


def test_averagely_takes_contiguous_blocks_as_rocketmq() -> None:
    queues = [MessageQueue("t", "g1", i) for i in range(8)]
    shares = allocation(AllocateAveragely(), ["a", "b", "c"], queues)
    assert [[q.queue_id for q in s] for s in shares.values()] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    circle = allocation(AllocateAveragelyByCircle(), ["a", "b", "c"], queues)
    assert [[q.queue_id for q in s] for s in circle.values()] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    more_members = allocation(AllocateAveragely(), ["a", "b", "c"], queues[:2])
    assert [len(s) for s in more_members.values()] == [1, 1, 0]


def test_consistent_hash_moves_few_queues_when_a_member_joins() -> None:
    queues = [MessageQueue("t", g, i) for g in ("g1", "g2") for i in range(64)]
    strategy = AllocateConsistentHash(virtual_nodes=50)
    before = allocation(strategy, ["a", "b", "c", "d"], queues)
    after = allocation(strategy, ["a", "b", "c", "d", "e"], queues)
    owner_before = {q: m for m, share in before.items() for q in share}
    owner_after = {q: m for m, share in after.items() for q in share}
    moved = [q for q in queues if owner_before[q] != owner_after[q]]
    assert all(owner_after[q] == "e" for q in moved)  # only to the newcomer
    assert len(moved) < len(queues) / 2


def test_by_config_returns_the_configured_queues_that_exist() -> None:
    queues = [MessageQueue("t", "g1", i) for i in range(4)]
    strategy = AllocateByConfig([queues[3], queues[1], MessageQueue("t", "g9", 0)])
    assert strategy.allocate("cg", "x", ["a"], queues) == [queues[1], queues[3]]
