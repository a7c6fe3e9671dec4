"""Consumer group membership on one broker node: who heartbeats, and on which connection.

As in RocketMQ's ConsumerManager, membership is per node and in memory, not
replicated: a consumer heartbeats every node of the broker group, so each node learns
the members first hand, and a follower already knows them when the leader dies.
Replicating it would cost a log entry per heartbeat for state the next heartbeat
rebuilds anyway (docs/broker-api.md, "Consumer groups").

Sans-IO like the core that owns it: a connection is an opaque int token chosen by the
driver, and time is the `now_ms` the caller passes (it must not go backwards, as the
driver's monotonic clock does not). Every change of a group's member set returns the
groups it changed; the core then notifies the members that remain.

Bounded: at most `members_max` members, `TOPICS_PER_MEMBER_MAX` topics each. Expiry is
O(expired members): members are kept least recently heard first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

MEMBERS_MAX_DEFAULT = 65_536
"""Consumer instances (over all groups) one node tracks; a new one past it is refused."""
TOPICS_PER_MEMBER_MAX = 1024
"""Subscribed topics one heartbeat may list."""
MODELS = ("clustering", "broadcasting")


class GroupsFullError(Exception):
    """A new member would exceed `members_max`."""


@dataclass(slots=True)
class Member:
    """One consumer instance of one group, as its latest heartbeat described it."""

    group: str
    client_id: str
    model: str
    topics: tuple[str, ...]
    consume_from: str
    connection: int | None
    """The driver's token for the connection of its latest heartbeat; None when the
    driver does not track connections (the member is then never notified and leaves
    only by expiry or UNREGISTER_CLIENT)."""
    last_seen_ms: int


class ConsumerGroups:
    def __init__(self, expire_ms: int, members_max: int = MEMBERS_MAX_DEFAULT) -> None:
        assert expire_ms > 0 and members_max > 0
        self.expire_ms = expire_ms
        self.members_max = members_max
        self._by_age: OrderedDict[tuple[str, str], Member] = OrderedDict()
        """(group, client_id) -> member, least recently heard first."""
        self._groups: dict[str, dict[str, Member]] = {}
        self._models: dict[str, str] = {}
        """group -> model of its latest heartbeat (what GET_CONSUMER_GROUPS reports)."""
        self._by_connection: dict[int, set[tuple[str, str]]] = {}

    def __len__(self) -> int:
        return len(self._by_age)

    # ------------------------------------------------------------------ changes

    def heartbeat(
        self,
        group: str,
        client_id: str,
        *,
        model: str,
        topics: Iterable[str],
        consume_from: str,
        connection: int | None,
        now_ms: int,
    ) -> bool:
        """Record a heartbeat; True if it added a member (the group's set changed).

        A member that heartbeats on a new connection moves to it: the old connection
        closing later no longer drops it.
        """
        key = (group, client_id)
        member = self._by_age.get(key)
        added = member is None
        if member is None:
            if len(self._by_age) >= self.members_max:
                raise GroupsFullError(f"this node already tracks {self.members_max} consumers")
            member = Member(group, client_id, model, (), consume_from, None, now_ms)
            self._by_age[key] = member
            self._groups.setdefault(group, {})[client_id] = member
        else:
            self._by_age.move_to_end(key)
        if member.connection != connection:
            self._forget_connection(member, key)
            if connection is not None:
                self._by_connection.setdefault(connection, set()).add(key)
            member.connection = connection
        member.model = model
        member.topics = tuple(sorted(set(topics)))
        member.consume_from = consume_from
        member.last_seen_ms = max(member.last_seen_ms, now_ms)
        self._models[group] = model
        return added

    def unregister(self, group: str, client_id: str) -> bool:
        """Drop a member; True if it was there."""
        member = self._by_age.get((group, client_id))
        if member is None:
            return False
        self._drop(member)
        return True

    def expire(self, now_ms: int) -> set[str]:
        """Drop members not heard from for `expire_ms`; returns the groups that changed."""
        changed: set[str] = set()
        by_age = self._by_age
        while by_age:
            member = next(iter(by_age.values()))
            if now_ms - member.last_seen_ms < self.expire_ms:
                break
            self._drop(member)
            changed.add(member.group)
        return changed

    def connection_closed(self, connection: int) -> set[str]:
        """Drop the members whose latest heartbeat came on `connection`; returns the
        groups that changed."""
        keys = self._by_connection.pop(connection, set())
        changed: set[str] = set()
        for key in sorted(keys):
            member = self._by_age[key]
            member.connection = None  # already forgotten with the pop above
            self._drop(member)
            changed.add(member.group)
        return changed

    def _drop(self, member: Member) -> None:
        key = (member.group, member.client_id)
        del self._by_age[key]
        self._forget_connection(member, key)
        group = self._groups[member.group]
        del group[member.client_id]
        if not group:
            del self._groups[member.group]
            del self._models[member.group]

    def _forget_connection(self, member: Member, key: tuple[str, str]) -> None:
        if member.connection is None:
            return
        keys = self._by_connection.get(member.connection)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_connection[member.connection]

    # ------------------------------------------------------------------ views

    def members(self, group: str) -> list[Member]:
        """The group's members, by client id."""
        return sorted(self._groups.get(group, {}).values(), key=lambda m: m.client_id)

    def connections(self, group: str) -> list[int]:
        """The distinct connections of the group's members, in order (each gets one
        notification per change even if several members share it)."""
        return sorted(
            {m.connection for m in self._groups.get(group, {}).values() if m.connection is not None}
        )

    def model(self, group: str) -> str | None:
        return self._models.get(group)

    def group_names(self) -> list[str]:
        return sorted(self._groups)
