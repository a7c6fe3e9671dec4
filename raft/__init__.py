"""Raft consensus core, sans-IO: no sockets, no clock, no trio."""

from raft.config import PLANTS, Config, RandomSource
from raft.errors import BacklogFullError, NotLeaderError, RaftError, TransferInProgressError
from raft.log_store import LogStore, MemoryLogStore
from raft.messages import Entry, EntryKind, Envelope, HardState, Message, make_entries
from raft.node import RaftNode, Role
from raft.ready import Ready, ReceivedSnapshot, SnapshotMeta
from raft.snapshot import SnapshotSource

__all__ = [
    "PLANTS",
    "BacklogFullError",
    "Config",
    "Entry",
    "EntryKind",
    "Envelope",
    "HardState",
    "LogStore",
    "MemoryLogStore",
    "Message",
    "NotLeaderError",
    "RaftError",
    "RaftNode",
    "RandomSource",
    "Ready",
    "ReceivedSnapshot",
    "Role",
    "SnapshotMeta",
    "SnapshotSource",
    "TransferInProgressError",
    "make_entries",
]
