"""RAFT_MESSAGE frames: raft Envelopes on the wire between the nodes of one group.

docs/broker-api.md fixes the shape: fields `group`, `src`, `dst`, `type` (the message
class name) and the message's scalar fields; an AppendRequest's entries go in the body
(per entry: term u64, index u64, kind u8, data length u32, data, big-endian), a
SnapshotRequest's chunk is the body. Entry data (message batches) is never re-encoded,
only length-prefixed.

Decoding checks every field's type and the body's framing and raises RaftCodecError:
a peer is trusted to be one of ours, not to be bug-free.
"""

from __future__ import annotations

import struct
from dataclasses import fields as dataclass_fields
from typing import Any

from mq.protocol import Frame, RequestCode, request
from raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Envelope,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

_ENTRY_HEAD = struct.Struct(">QQBI")
_KINDS = tuple(EntryKind)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        VoteRequest,
        VoteResponse,
        AppendRequest,
        AppendResponse,
        SnapshotRequest,
        SnapshotResponse,
        TimeoutNow,
    )
}
# Scalar fields of each message type, in declaration order (body-carried ones excluded).
_SCALARS: dict[type[Any], tuple[tuple[str, type[Any]], ...]] = {
    cls: tuple(
        (f.name, bool if f.type in ("bool", bool) else int)
        for f in dataclass_fields(cls)
        if f.name not in ("entries", "data")
    )
    for cls in _TYPES.values()
}


class RaftCodecError(ValueError):
    """A RAFT_MESSAGE frame does not decode to an Envelope."""


def encode_envelope(group: str, env: Envelope) -> Frame:
    """The one-way RAFT_MESSAGE frame carrying `env`."""
    msg = env.msg
    cls = type(msg)
    out: dict[str, Any] = {"group": group, "src": env.src, "dst": env.dst, "type": cls.__name__}
    for name, _kind in _SCALARS[cls]:
        out[name] = getattr(msg, name)
    body: bytes = b""
    if cls is AppendRequest:
        body = encode_entries(msg.entries)  # type: ignore[union-attr]
    elif cls is SnapshotRequest:
        body = msg.data  # type: ignore[union-attr]
    return request(RequestCode.RAFT_MESSAGE, out, body, oneway=True)


def decode_envelope(frame: Frame) -> tuple[str, Envelope]:
    """(group, envelope) of a RAFT_MESSAGE frame; raises RaftCodecError."""
    f = frame.fields
    cls = _TYPES.get(f.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise RaftCodecError(f"unknown raft message type {f.get('type')!r}")
    group = f.get("group")
    src = f.get("src")
    dst = f.get("dst")
    if not (isinstance(group, str) and isinstance(src, int) and isinstance(dst, int)) or (
        isinstance(src, bool) or isinstance(dst, bool)
    ):
        raise RaftCodecError("raft message needs group, src and dst")
    kwargs: dict[str, Any] = {}
    for name, kind in _SCALARS[cls]:
        value = f.get(name)
        if kind is bool:
            if not isinstance(value, bool):
                raise RaftCodecError(f"{cls.__name__}.{name} must be a bool")
        elif not _is_int(value):
            raise RaftCodecError(f"{cls.__name__}.{name} must be an int")
        kwargs[name] = value
    if cls is AppendRequest:
        kwargs["entries"] = decode_entries(frame.body)
    elif cls is SnapshotRequest:
        kwargs["data"] = bytes(frame.body)
    msg: Message = cls(**kwargs)
    return group, Envelope(src, dst, msg)


def encode_entries(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    pack = _ENTRY_HEAD.pack
    parts: list[bytes] = []
    append = parts.append
    for e in entries:
        append(pack(e.term, e.index, e.kind, len(e.data)))
        append(e.data)
    return b"".join(parts)


def decode_entries(body: bytes | bytearray | memoryview) -> tuple[Entry, ...]:
    view = memoryview(body)
    end = view.nbytes
    pos = 0
    out: list[Entry] = []
    unpack = _ENTRY_HEAD.unpack_from
    head = _ENTRY_HEAD.size
    kinds = _KINDS
    previous = -1
    while pos < end:
        if end - pos < head:
            raise RaftCodecError("truncated entry header")
        term, index, kind, size = unpack(view, pos)
        pos += head
        if size > end - pos or kind >= len(kinds):
            raise RaftCodecError(f"entry {index}: bad length {size} or kind {kind}")
        if previous >= 0 and index != previous + 1:
            raise RaftCodecError(f"entries not contiguous: {index} after {previous}")
        previous = index
        out.append(Entry(term, index, bytes(view[pos : pos + size]), kinds[kind]))
        pos += size
    return tuple(out)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
