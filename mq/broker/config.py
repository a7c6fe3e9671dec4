"""BrokerConfig: one node's settings, from a TOML file with command-line overrides.

Every key of the TOML file is a field of `BrokerConfig` (dashes or underscores);
`python -m mq.broker --help` lists the flags, which override the file. Times are in
milliseconds, sizes in bytes, and the field names say so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mq.broker.consumer_groups import MEMBERS_MAX_DEFAULT
from mq.route import QUEUES_MAX, REGISTER_INTERVAL_MS_DEFAULT
from mq.rpc.address import parse_address
from raft.config import Config as RaftConfig
from storage.commit_log import SEGMENT_BYTES_DEFAULT
from storage.entry_index import CHUNK_ENTRIES_DEFAULT
from storage.flush import FlushMode
from storage.message_store import StoreConfig
from storage.record import MESSAGE_BYTES_MAX

LISTEN_DEFAULT = "127.0.0.1:10911"
TICK_MS_DEFAULT = 50
_STORE_DEFAULTS = StoreConfig()


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    cluster: str = "DefaultCluster"
    group: str = "broker-a"
    node_id: int = 1
    listen: str = LISTEN_DEFAULT
    """host:port this node serves clients and peers on (port 0: pick a free one)."""
    peers: Mapping[int, str] = field(default_factory=dict)
    """Every voter of the group, node id -> host:port, this node included (it is added
    with `listen` when absent). Empty: a single-node group."""
    data_dir: str = "./data"
    namesrv: tuple[str, ...] = ()
    flush: FlushMode = FlushMode.SYNC
    """sync: a node fsyncs the log before it acknowledges entries (acknowledged sends
    survive power loss of a minority). async: acknowledged once in the page cache of a
    majority (survives kill -9, not power loss); fsync every flush_interval_ms."""
    segment_bytes: int = SEGMENT_BYTES_DEFAULT
    message_bytes_max: int = MESSAGE_BYTES_MAX
    cq_units_per_segment: int = _STORE_DEFAULTS.cq_units_per_segment
    index_slots: int = _STORE_DEFAULTS.index_slots
    index_entries_max: int = _STORE_DEFAULTS.index_entries_max
    """ConsumeQueue segment and IndexFile sizes (RocketMQ's defaults; tests shrink them)."""
    tick_ms: int = TICK_MS_DEFAULT
    """The Raft tick, and how often timeouts (long polls, sends, consumers) are checked.
    Each tick wakes an idle node: on the 2-core VM of docs/benchmarks.md a trio loop that
    wakes every 10 ms costs 3.3 % of a core, every 50 ms 0.65 %. etcd's default is 100.
    Left at the default, it is lowered to `heartbeat_ms` when that is shorter."""
    election_ms: int = 1000
    heartbeat_ms: int = 100
    register_interval_ms: int = REGISTER_INTERVAL_MS_DEFAULT
    send_timeout_ms: int = 2000
    """A send not committed and applied within this long fails with REPLICATION_TIMEOUT
    (kept below the client's 3 s request timeout so the client learns why)."""
    pending_requests_max: int = 10_000
    """Sends and topic creations awaiting commit; past this, SYSTEM_BUSY."""
    auto_create_topics: bool = True
    default_queues: int = 8
    producers_max: int = 10_000
    flush_interval_ms: int = 500
    """async flush: how often the CommitLog is fsynced."""
    checkpoint_interval_ms: int = 1000
    """How often ConsumeQueues and the index are synced and the checkpoint written
    (bounds the work of recovery after a crash)."""
    state_snapshot_interval_ms: int = 10_000
    """How often the topic and producer tables are snapshotted (at a checkpoint)."""
    pull_suspend_ms_max: int = 30_000
    held_pulls_max: int = 10_000
    consumer_expire_ms: int = 120_000
    """A consumer not heard from (HEARTBEAT) for this long leaves its group."""
    consumers_max: int = MEMBERS_MAX_DEFAULT
    """Consumer instances (summed over groups) one node tracks; more are refused."""
    disk_refuse_ratio: float = 0.95
    """A leader refuses sends (SERVICE_NOT_AVAILABLE) while the disk of `data_dir` is
    fuller than this, as RocketMQ does: what is left stays for replication, offsets,
    checkpoints and the rest of the machine. 1.0: only a disk that is really full."""
    retention_ms: int = _STORE_DEFAULTS.retention_ms
    """CommitLog segments whose newest message is older than this are deleted (72 h, as
    RocketMQ's fileReservedTime), with their ConsumeQueue and IndexFile entries."""
    disk_retention_ratio: float = _STORE_DEFAULTS.disk_ratio_max
    """While the disk of `data_dir` is fuller than this, the oldest segments are deleted
    whatever their age (RocketMQ's diskMaxUsedSpaceRatio, 0.75)."""
    retention_check_interval_ms: int = 10_000
    """How often a node looks for segments to delete."""
    raft_index_chunk_entries: int = CHUNK_ENTRIES_DEFAULT
    """Committed Raft entries per sealed chunk of the on-disk entry index (written at
    checkpoints under `raft-index/`): memory holds only the entries not sealed yet, and
    a start walks only the entries after the last chunk (storage/entry_index.py)."""
    join: bool = False
    """This node joins a group that exists already: its disk was replaced. Starting
    empty, it neither votes nor campaigns until a leader has caught it up, so its vote
    cannot elect a node that lacks entries it acknowledged on its old disk. Never on
    every node of a new group (none of them could be elected); no effect on a node
    whose data directory holds a term."""
    log_level: str = "info"

    def __post_init__(self) -> None:
        # Accept the forms a TOML file or a caller naturally gives, stored normalised.
        if not isinstance(self.flush, FlushMode):
            try:
                object.__setattr__(self, "flush", FlushMode(str(self.flush).lower()))
            except ValueError:
                raise ConfigError("flush must be 'sync' or 'async'") from None
        if self.tick_ms == TICK_MS_DEFAULT and 0 < self.heartbeat_ms < TICK_MS_DEFAULT:
            # A heartbeat is a whole number of ticks: a short one (tests, simulations)
            # brings the default tick down with it rather than failing the check below.
            object.__setattr__(self, "tick_ms", self.heartbeat_ms)
        if not isinstance(self.peers, Mapping):
            object.__setattr__(self, "peers", parse_peers(self.peers))
        if isinstance(self.namesrv, str | list):
            object.__setattr__(self, "namesrv", _parse_namesrv(self.namesrv))
        if self.node_id < 0:
            raise ConfigError("node_id must be non-negative")
        parse_or_fail("listen", self.listen, allow_port_zero=True)
        for node_id, address in self.peers.items():
            parse_or_fail(f"peers.{node_id}", address, allow_port_zero=False)
        for address in self.namesrv:
            parse_or_fail("namesrv", address, allow_port_zero=False)
        for name in (
            "tick_ms",
            "election_ms",
            "heartbeat_ms",
            "register_interval_ms",
            "send_timeout_ms",
            "pending_requests_max",
            "producers_max",
            "flush_interval_ms",
            "checkpoint_interval_ms",
            "state_snapshot_interval_ms",
            "retention_ms",
            "retention_check_interval_ms",
            "held_pulls_max",
            "consumer_expire_ms",
            "consumers_max",
            "message_bytes_max",
            "cq_units_per_segment",
            "index_slots",
            "index_entries_max",
            "raft_index_chunk_entries",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not 0 < self.default_queues <= QUEUES_MAX:
            raise ConfigError(f"default_queues must be within [1, {QUEUES_MAX}]")
        if not 0.0 < self.disk_refuse_ratio <= 1.0:
            raise ConfigError("disk_refuse_ratio must be within (0, 1]")
        if not 0.0 < self.disk_retention_ratio <= 1.0:
            raise ConfigError("disk_retention_ratio must be within (0, 1]")
        if self.heartbeat_ms >= self.election_ms:
            raise ConfigError("heartbeat_ms must be smaller than election_ms")
        if self.tick_ms > self.heartbeat_ms:
            raise ConfigError("tick_ms must not exceed heartbeat_ms")

    @property
    def voters(self) -> dict[int, str]:
        """Every voter with its address, this node included."""
        voters = dict(self.peers)
        voters.setdefault(self.node_id, self.listen)
        return voters

    def raft_config(self) -> RaftConfig:
        election_ticks = max(2, self.election_ms // self.tick_ms)
        return RaftConfig(
            election_ticks=election_ticks,
            heartbeat_ticks=max(1, self.heartbeat_ms // self.tick_ms),
            # Followers learn a commit with the next append or heartbeat: a lone send
            # costs the group half the messages. Clients read from the leader; a
            # follower serves reads (no leader) up to heartbeat_ms behind.
            eager_commit_notice=False,
            # A node on an empty data_dir (new, or its disk replaced) waits out any
            # election it may have voted in before it votes again (docs/broker.md).
            fresh_vote_hold_ticks=2 * election_ticks,
            join_existing=self.join,
        )


def parse_or_fail(key: str, address: str, *, allow_port_zero: bool) -> None:
    if allow_port_zero and address.endswith(":0"):
        address = address[:-2] + ":1"
    try:
        parse_address(address)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def parse_peers(value: str | Mapping[Any, Any]) -> dict[int, str]:
    """`"1=host:port,2=host:port"` or a TOML table {"1" = "host:port"}."""
    items: list[tuple[Any, Any]]
    if isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            node_id, sep, address = part.partition("=")
            if not sep:
                raise ConfigError(f"peers: expected id=host:port, got {part!r}")
            items.append((node_id, address))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ConfigError("peers must be a string or a table")
    peers: dict[int, str] = {}
    for node_id, address in items:
        try:
            peers[int(node_id)] = str(address).strip()
        except ValueError:
            raise ConfigError(f"peers: node id {node_id!r} is not an integer") from None
    return peers


def _parse_namesrv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(filter(None, (a.strip() for a in value.split(","))))
    if isinstance(value, list | tuple):
        return tuple(str(a) for a in value)
    raise ConfigError("namesrv must be a string or a list")


_FIELDS = {f.name: f for f in fields(BrokerConfig)}


def config_from_mapping(
    values: Mapping[str, Any], base: BrokerConfig | None = None
) -> BrokerConfig:
    """`base` (default: defaults) with `values` applied; keys may use dashes."""
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key == "data":
            key = "data_dir"
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {raw_key!r}")
        if key == "peers":
            value = parse_peers(value)
        elif key == "namesrv":
            value = _parse_namesrv(value)
        elif key == "flush":
            pass  # normalised by BrokerConfig itself
        else:
            default = getattr(base or BrokerConfig(), key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false")
            elif isinstance(default, int):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError(f"{key} must be an integer")
            elif isinstance(default, float):
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ConfigError(f"{key} must be a number")
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise ConfigError(f"{key} must be a string")
        changes[key] = value
    try:
        return replace(base or BrokerConfig(), **changes)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> BrokerConfig:
    """The TOML file at `path` (if any), then `overrides` (flags that were given)."""
    config = BrokerConfig()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        config = config_from_mapping(data, config)
    if overrides:
        config = config_from_mapping(overrides, config)
    return config
