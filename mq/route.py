"""Routes: which broker groups serve a topic, who their nodes are, which one leads.

The NameServer keeps this data, brokers send it (REGISTER_BROKER) and clients read it
(GET_ROUTE, GET_CLUSTER_INFO). It lives outside `mq.nameserver` so that the broker and the
client can build and parse it without importing the NameServer. Every type converts to and
from the plain `fields` maps of `mq.protocol`; `from_fields` validates untrusted input and
raises `FieldError`.

Vocabulary, as in RocketMQ with DLedger: a *cluster* is a set of broker *groups* (a
RocketMQ "broker name"); a group is a Raft group of *nodes* (broker id), one of which is
the *leader* that takes writes; any node can serve committed reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Any

from mq.fields import FieldError, get_int, get_list, get_map, get_name, get_str

REGISTER_INTERVAL_MS_DEFAULT = 30_000
"""How often a broker re-registers with every NameServer; the registration is the heartbeat."""

BROKER_EXPIRE_MS_DEFAULT = 120_000
"""A NameServer forgets a broker node it has not heard from for this long (4 missed
registrations: one lost packet or a GC pause must not drop a healthy broker)."""

QUEUES_MAX = 1024
"""Most read or write queues one topic may have in one group."""


class Role(StrEnum):
    LEADER = "leader"
    FOLLOWER = "follower"


class Perm(IntFlag):
    """Topic permissions, with RocketMQ's bit values."""

    INHERIT = 1
    WRITE = 2
    READ = 4
    PRIORITY = 8


PERM_READ_WRITE = Perm.READ | Perm.WRITE


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic as one broker group hosts it."""

    read_queues: int
    write_queues: int
    perm: int = PERM_READ_WRITE

    def to_fields(self) -> dict[str, Any]:
        return {
            "read_queues": self.read_queues,
            "write_queues": self.write_queues,
            "perm": self.perm,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> TopicConfig:
        return cls(
            read_queues=get_int(fields, "read_queues", high=QUEUES_MAX),
            write_queues=get_int(fields, "write_queues", high=QUEUES_MAX),
            perm=get_int(fields, "perm", default=int(PERM_READ_WRITE), high=0xFF),
        )


@dataclass(frozen=True, slots=True)
class BrokerRegistration:
    """What a broker node tells every NameServer, every REGISTER_INTERVAL_MS.

    The topic table is the node's whole current table, not a delta: a registration that
    omits a topic means the node no longer hosts it, and a lost registration costs
    nothing because the next one carries everything again.
    """

    cluster: str
    group: str
    node_id: int
    address: str
    role: Role
    term: int
    topics: Mapping[str, TopicConfig] = field(default_factory=dict)

    def to_fields(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "group": self.group,
            "node_id": self.node_id,
            "address": self.address,
            "role": self.role.value,
            "term": self.term,
            "topics": {name: config.to_fields() for name, config in self.topics.items()},
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> BrokerRegistration:
        topics: dict[str, TopicConfig] = {}
        for name, config in get_map(fields, "topics", default={}).items():
            if not isinstance(name, str) or not name:
                raise FieldError("topic names must be non-empty strings")
            if not isinstance(config, Mapping):
                raise FieldError(f"config of topic {name!r} must be a map")
            topics[name] = TopicConfig.from_fields(config)
        return cls(
            cluster=get_name(fields, "cluster"),
            group=get_name(fields, "group"),
            node_id=get_int(fields, "node_id"),
            address=get_name(fields, "address"),
            role=_get_role(fields),
            term=get_int(fields, "term"),
            topics=topics,
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of a group as the NameServer last heard from it."""

    node_id: int
    address: str
    role: Role
    term: int

    def to_fields(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "role": self.role.value,
            "term": self.term,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> NodeInfo:
        return cls(
            node_id=get_int(fields, "node_id"),
            address=get_name(fields, "address"),
            role=_get_role(fields),
            term=get_int(fields, "term"),
        )


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A broker group: its nodes and the address of its current leader (None while the
    NameServer knows of no leader, e.g. during an election: reads still work then)."""

    cluster: str
    group: str
    leader_address: str | None
    nodes: tuple[NodeInfo, ...]

    def to_fields(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "group": self.group,
            "leader_address": self.leader_address,
            "nodes": [node.to_fields() for node in self.nodes],
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> GroupInfo:
        return cls(
            cluster=get_name(fields, "cluster"),
            group=get_name(fields, "group"),
            leader_address=_get_optional_address(fields),
            nodes=tuple(NodeInfo.from_fields(_as_map(n)) for n in get_list(fields, "nodes")),
        )


@dataclass(frozen=True, slots=True)
class GroupRoute:
    """One group that serves a topic, with the topic's queues in that group."""

    info: GroupInfo
    topic: TopicConfig

    @property
    def group(self) -> str:
        return self.info.group

    @property
    def leader_address(self) -> str | None:
        return self.info.leader_address

    def to_fields(self) -> dict[str, Any]:
        return self.info.to_fields() | self.topic.to_fields()

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> GroupRoute:
        return cls(info=GroupInfo.from_fields(fields), topic=TopicConfig.from_fields(fields))


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """The answer to GET_ROUTE: every group hosting `topic`, ordered by group name."""

    topic: str
    groups: tuple[GroupRoute, ...]

    def to_fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "groups": [g.to_fields() for g in self.groups]}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> TopicRoute:
        return cls(
            topic=get_name(fields, "topic"),
            groups=tuple(GroupRoute.from_fields(_as_map(g)) for g in get_list(fields, "groups")),
        )


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """The answer to GET_CLUSTER_INFO: every group the NameServer knows, by name."""

    groups: tuple[GroupInfo, ...]

    def clusters(self) -> dict[str, list[str]]:
        """Cluster name -> names of its groups."""
        result: dict[str, list[str]] = {}
        for group in self.groups:
            result.setdefault(group.cluster, []).append(group.group)
        return result

    def to_fields(self) -> dict[str, Any]:
        return {"groups": [g.to_fields() for g in self.groups]}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> ClusterInfo:
        return cls(
            groups=tuple(GroupInfo.from_fields(_as_map(g)) for g in get_list(fields, "groups"))
        )


def _get_role(fields: Mapping[Any, Any]) -> Role:
    value = get_str(fields, "role")
    try:
        return Role(value)
    except ValueError:
        raise FieldError(f"field 'role' must be 'leader' or 'follower', got {value!r}") from None


def _get_optional_address(fields: Mapping[Any, Any]) -> str | None:
    if fields.get("leader_address") is None:
        return None
    return get_name(fields, "leader_address")


def _as_map(value: object) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise FieldError("expected a map")
    return value
