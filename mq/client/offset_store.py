"""Where a push consumer keeps its committed offsets: on the brokers, or in a local file.

A committed offset is the next queue offset to consume: everything below it was
handled (docs/broker-api.md). The two message models keep it in different places, as
in RocketMQ:

- **Clustering** (`BrokerOffsetStore`, RocketMQ's RemoteBrokerOffsetStore): the group
  shares one offset per queue, so it lives on the broker group that hosts the queue,
  replicated through its Raft log (UPDATE_CONSUMER_OFFSET to the leader). It survives a
  failover, and the member that takes a queue over after a rebalance continues where
  the previous one committed. Each (consumer group, topic) has a `generation` that an
  admin reset increments: a commit carrying an older generation is refused as `stale`,
  so a consumer that had not yet seen the reset cannot overwrite it.
- **Broadcasting** (`LocalOffsetStore`, RocketMQ's LocalFileOffsetStore): every member
  consumes every message, so each keeps its own offsets, in a JSON file written
  atomically (a temporary file, fsync, rename: a crash leaves the old file or the new
  one, never half of one).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from mq.client.broker_requests import group_info, request_any_node, request_leader
from mq.client.errors import MQClientError, OffsetsFileInUseError
from mq.client.instance import ClientInstance
from mq.client.queues import MessageQueue
from mq.fields import FieldError, get_int, get_list
from mq.protocol import RequestCode, request
from mq.route import GroupInfo
from storage.files import RealFileSystem

_log = structlog.get_logger("mq.client.offsets")

COMMIT_ENTRIES_MAX = 4096
"""Offsets one UPDATE_CONSUMER_OFFSET may carry (docs/broker-api.md); more are split."""
OFFSETS_FILE_BYTES_MAX = 64 * 1024 * 1024
"""A local offsets file larger than this is refused rather than read (a bounded read)."""


@dataclass(frozen=True, slots=True)
class StoredOffset:
    offset: int | None
    """The committed offset, None when the queue has none."""
    generation: int
    """The (consumer group, topic) generation it was read under (0 for local files)."""


@dataclass(frozen=True, slots=True)
class CommitEntry:
    mq: MessageQueue
    offset: int
    generation: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    committed: list[CommitEntry]
    """Entries the store accepted."""
    stale: list[MessageQueue]
    """Queues whose commit was refused because an admin reset happened since their
    offset was read: the consumer must drop what it cached and read the offset again."""


class OffsetStore(Protocol):
    async def open(self) -> None:
        """Take the store for this member before it consumes (raises MQClientError when
        another member holds it)."""
        ...

    def close(self) -> None:
        """Let go of what `open` took; idempotent."""
        ...

    async def read(self, mq: MessageQueue) -> StoredOffset:
        """The committed offset of `mq` (raises MQClientError when it cannot be read:
        the caller retries later rather than guessing a start offset)."""
        ...

    async def commit(self, entries: Sequence[CommitEntry]) -> CommitResult:
        """Store these offsets. Entries that could not be stored (a broker group
        unreachable) are absent from the result and are retried by the next commit."""
        ...


class BrokerOffsetStore:
    """Offsets of a clustering consumer group, on the broker groups (see module doc)."""

    def __init__(self, client: ClientInstance, group: str) -> None:
        self._client = client
        self.group = group

    async def open(self) -> None:
        """Nothing to take: the brokers keep one offset table for every member."""

    def close(self) -> None:
        pass

    async def read(self, mq: MessageQueue) -> StoredOffset:
        info = await group_info(self._client, mq.topic, mq.group)
        frame = request(
            RequestCode.QUERY_CONSUMER_OFFSET,
            {"group": self.group, "topic": mq.topic, "queue_id": mq.queue_id},
        )
        response, address = await request_any_node(self._client, info, frame, topic=mq.topic)
        try:
            generation = get_int(response.fields, "generation", default=0)
            for queue_id, offset in offset_pairs(response.fields):
                if queue_id == mq.queue_id:
                    return StoredOffset(offset, generation)
        except FieldError as exc:
            raise MQClientError(f"malformed offsets from {address}: {exc}") from exc
        return StoredOffset(None, generation)

    async def commit(self, entries: Sequence[CommitEntry]) -> CommitResult:
        by_group: dict[tuple[str, str], list[CommitEntry]] = {}
        for entry in entries:
            by_group.setdefault((entry.mq.group, entry.mq.topic), []).append(entry)
        # One request per broker group: a topic's route names the group's nodes.
        groups: dict[str, tuple[GroupInfo, list[CommitEntry]]] = {}
        for (group_name, topic), group_entries in sorted(by_group.items()):
            try:
                info = await group_info(self._client, topic, group_name)
            except MQClientError as exc:
                _log.info("offset_commit_no_route", group=group_name, error=str(exc))
                continue
            groups.setdefault(group_name, (info, []))[1].extend(group_entries)
        committed: list[CommitEntry] = []
        stale: list[MessageQueue] = []
        for group_name, (info, all_entries) in groups.items():
            for start in range(0, len(all_entries), COMMIT_ENTRIES_MAX):
                group_entries = all_entries[start : start + COMMIT_ENTRIES_MAX]
                frame = request(
                    RequestCode.UPDATE_CONSUMER_OFFSET,
                    {
                        "group": self.group,
                        "offsets": [
                            [e.mq.topic, e.mq.queue_id, e.offset, e.generation]
                            for e in group_entries
                        ],
                    },
                )
                try:
                    response = await request_leader(self._client, info, frame)
                    refused = {
                        _topic_queue(item)
                        for item in get_list(response.fields, "stale", default=[])
                    }
                except (MQClientError, FieldError) as exc:
                    _log.info("offset_commit_failed", group=group_name, error=str(exc))
                    break
                for entry in group_entries:
                    if (entry.mq.topic, entry.mq.queue_id) in refused:
                        stale.append(entry.mq)
                    else:
                        committed.append(entry)
        return CommitResult(committed, stale)


class LocalOffsetStore:
    """Offsets of one broadcasting consumer, in `path` (a JSON file). Read once at
    start; every commit rewrites the whole file atomically (it is small: one entry per
    queue)."""

    def __init__(self, path: Path, group: str) -> None:
        self.path = path
        self.group = group
        self._lock_fd: int | None = None
        self._offsets: dict[MessageQueue, int] = {}
        self._loaded = False
        self._load_lock = anyio.Lock()
        """The file is read once, by the first of the queues that start together; a
        second load finishing later would drop commits made meanwhile."""
        self._write_lock = anyio.Lock()
        """One writer at a time: they share the temporary file."""

    def lock(self) -> None:
        """Take the file for this member (an exclusive `flock` on `<path>.lock`, held
        until `unlock`). Two live members writing one file would each start, after a
        restart, from where the other got: raises OffsetsFileInUseError instead."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OffsetsFileInUseError(
                f"offsets file {self.path} is in use by another consumer of group "
                f"{self.group!r} with the same instance_name on this host: give each "
                "broadcasting member its own instance_name (mq consume --instance-name)"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self.lock)

    def close(self) -> None:
        self.unlock()

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:
            if not self._loaded:
                self._offsets = await anyio.to_thread.run_sync(self._load)
                self._loaded = True

    async def read(self, mq: MessageQueue) -> StoredOffset:
        await self._ensure_loaded()
        return StoredOffset(self._offsets.get(mq), 0)

    async def commit(self, entries: Sequence[CommitEntry]) -> CommitResult:
        await self._ensure_loaded()
        for entry in entries:
            self._offsets[entry.mq] = entry.offset
        document = self._document()
        try:
            async with self._write_lock:
                await anyio.to_thread.run_sync(self._write, document)
        except OSError as exc:
            _log.warning("offsets_file_write_failed", path=str(self.path), error=str(exc))
            return CommitResult([], [])
        return CommitResult(list(entries), [])

    def _document(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "offsets": [
                {"topic": mq.topic, "group": mq.group, "queue_id": mq.queue_id, "offset": offset}
                for mq, offset in sorted(self._offsets.items())
            ],
        }

    def _load(self) -> dict[MessageQueue, int]:
        try:
            with self.path.open("rb") as file:
                data = file.read(OFFSETS_FILE_BYTES_MAX + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:  # a queue's offset read fails and is retried, not the consumer
            raise MQClientError(f"offsets file {self.path} is unreadable: {exc}") from exc
        if len(data) > OFFSETS_FILE_BYTES_MAX:
            raise MQClientError(f"offsets file {self.path} is larger than expected")
        try:
            document = json.loads(data)
            offsets = {}
            for item in document["offsets"]:
                mq = MessageQueue(str(item["topic"]), str(item["group"]), int(item["queue_id"]))
                offset = int(item["offset"])
                if offset < 0 or mq.queue_id < 0:
                    raise ValueError(f"negative offset or queue id in {item}")
                offsets[mq] = offset
        except (ValueError, KeyError, TypeError) as exc:
            # A corrupt file cannot come from our atomic writes; refuse to guess where
            # to start rather than silently consuming everything again (or nothing).
            raise MQClientError(f"offsets file {self.path} is unreadable: {exc}") from exc
        return offsets

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        RealFileSystem().write_atomic(str(self.path), json.dumps(document, indent=1).encode())


def offset_pairs(fields: Mapping[Any, Any]) -> list[tuple[int, int]]:
    """The `offsets` field of QUERY/RESET_CONSUMER_OFFSET answers: [queue_id, offset]."""
    pairs = []
    for item in get_list(fields, "offsets", default=[]):
        if not (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise FieldError("offsets must be [queue_id, offset] pairs")
        pairs.append((int(item[0]), int(item[1])))
    return pairs


def _topic_queue(value: object) -> tuple[str, int]:
    if (
        isinstance(value, list | tuple)
        and len(value) >= 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        return value[0], value[1]
    raise FieldError("stale entries must be [topic, queue_id]")
