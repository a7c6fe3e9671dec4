"""The checkpoint: how far the store is known to be durable, so recovery can start there.

Written atomically (temp file + fsync + rename) after each flush round. It is
conservative by construction: `commitlog_flushed` is only ever raised after the
CommitLog fsync covering it returned, and `dispatched` only after the
ConsumeQueue and IndexFile writes covering it were synced too. A crash can lose
progress made after the last checkpoint, never make the checkpoint lie.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_LAYOUT = struct.Struct("<IQQQI")  # version, commitlog_flushed, dispatched, written_ms, crc
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    commitlog_flushed: int = 0
    dispatched: int = 0
    written_ms: int = 0

    def encode(self) -> bytes:
        body = _LAYOUT.pack(_VERSION, self.commitlog_flushed, self.dispatched, self.written_ms, 0)
        crc = zlib.crc32(body[: _LAYOUT.size - 4])
        return body[: _LAYOUT.size - 4] + struct.pack("<I", crc)

    @classmethod
    def decode(cls, data: bytes | None) -> Checkpoint | None:
        """None when absent or corrupt: recovery then scans from the oldest segment."""
        if data is None or len(data) != _LAYOUT.size:
            return None
        version, flushed, dispatched, written_ms, crc = _LAYOUT.unpack(data)
        if version != _VERSION or crc != zlib.crc32(data[: _LAYOUT.size - 4]):
            return None
        return cls(flushed, dispatched, written_ms)
