"""ConsumerGroups, the per-node membership table: who is in a group, on which connection,
and which changes alter a group's member set (those are what members get notified of)."""

from __future__ import annotations

import pytest

from mq.broker.consumer_groups import ConsumerGroups, GroupsFullError


def beat(
    groups: ConsumerGroups,
    group: str,
    client_id: str,
    connection: int | None,
    now_ms: int,
    topics: tuple[str, ...] = ("t",),
) -> bool:
    return groups.heartbeat(
        group,
        client_id,
        model="clustering",
        topics=topics,
        consume_from="last",
        connection=connection,
        now_ms=now_ms,
    )


def test_only_a_new_member_changes_the_set_and_refreshes_keep_it_alive() -> None:
    groups = ConsumerGroups(expire_ms=1000)
    assert beat(groups, "g", "a", 1, 0) is True
    assert beat(groups, "g", "a", 1, 600, topics=("t", "u")) is False, "a refresh"
    assert beat(groups, "g", "b", 2, 700) is True
    assert groups.expire(1599) == set(), "a was refreshed at 600"
    assert groups.expire(1600) == {"g"}
    assert [m.client_id for m in groups.members("g")] == ["b"]
    assert groups.expire(1700) == {"g"}
    assert groups.members("g") == [] and groups.group_names() == [] and len(groups) == 0


def test_a_closed_connection_drops_only_the_members_that_heartbeat_on_it() -> None:
    groups = ConsumerGroups(expire_ms=10_000)
    beat(groups, "g1", "a", 1, 0)
    beat(groups, "g2", "a", 1, 0)  # one client in two groups, one connection
    beat(groups, "g1", "b", 2, 0)
    beat(groups, "g1", "c", 3, 0)
    beat(groups, "g1", "c", 4, 10)  # c reconnected: connection 3 is no longer its own
    assert groups.connections("g1") == [1, 2, 4]
    assert groups.connection_closed(3) == set()
    assert groups.connection_closed(1) == {"g1", "g2"}
    assert [m.client_id for m in groups.members("g1")] == ["b", "c"]
    assert groups.group_names() == ["g1"]
    assert groups.connection_closed(1) == set(), "closing twice is harmless"


def test_unregister_drops_one_member_of_one_group() -> None:
    groups = ConsumerGroups(expire_ms=10_000)
    beat(groups, "g1", "a", 1, 0)
    beat(groups, "g2", "a", 1, 0)
    assert groups.unregister("g1", "a") is True
    assert groups.unregister("g1", "a") is False
    assert groups.group_names() == ["g2"]
    assert groups.connection_closed(1) == {"g2"}


def test_the_model_is_the_latest_heartbeats_and_members_are_bounded() -> None:
    groups = ConsumerGroups(expire_ms=10_000, members_max=2)
    beat(groups, "g", "a", None, 0)
    groups.heartbeat(
        "g",
        "b",
        model="broadcasting",
        topics=["t"],
        consume_from="",
        connection=None,
        now_ms=1,
    )
    assert groups.model("g") == "broadcasting"
    assert groups.connections("g") == [], "members without a connection get no notifications"
    with pytest.raises(GroupsFullError):
        beat(groups, "g", "c", None, 2)
    assert beat(groups, "g", "a", None, 3) is False, "a known member still refreshes"
