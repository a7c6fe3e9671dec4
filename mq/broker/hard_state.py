"""The Raft HardState file: term, vote and commit in 32 CRC-protected bytes.

Written with `FileSystem.write_atomic` (temp file, fsync, rename), so a crash leaves
the old or the new state, never a torn one. A damaged file is an error, not a reset:
forgetting a vote could let this node vote twice in one term.
"""

from __future__ import annotations

import struct
import zlib

from raft.messages import HardState

_LAYOUT = struct.Struct("<IQqQ")  # version, term, vote (-1 for none), commit
_CRC = struct.Struct("<I")
_VERSION = 1


class HardStateError(RuntimeError):
    """The hard state file exists but is damaged: refuse to start rather than guess."""


def encode_hard_state(hs: HardState) -> bytes:
    body = _LAYOUT.pack(_VERSION, hs.term, -1 if hs.vote is None else hs.vote, hs.commit)
    return body + _CRC.pack(zlib.crc32(body))


def decode_hard_state(data: bytes | None) -> HardState:
    """The persisted HardState; the initial one when the file is absent."""
    if data is None:
        return HardState()
    if len(data) != _LAYOUT.size + _CRC.size:
        raise HardStateError(f"hard state file has {len(data)} bytes")
    body = data[: _LAYOUT.size]
    (crc,) = _CRC.unpack_from(data, _LAYOUT.size)
    if zlib.crc32(body) != crc:
        raise HardStateError("hard state file CRC mismatch")
    version, term, vote, commit = _LAYOUT.unpack(body)
    if version != _VERSION:
        raise HardStateError(f"hard state file version {version}")
    return HardState(term, None if vote < 0 else vote, commit)
