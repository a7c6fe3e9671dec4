"""Sealed chunks of the Raft entry index: where each committed entry sits, on disk.

Without them a node keeps where every entry of its log sits in memory (12 bytes an
entry: gigabytes for days of small entries) and finds them on start by walking, and
CRC-checking, every entry of the CommitLog: minutes, and every byte read from disk
again after a reboot. A chunk holds that walk's result for a range of committed entries
(each entry's commit offset and frame size, and the runs of equal terms): memory keeps
only the entries after the last chunk (and a few chunks read back), and a start checks
the chunks and walks only what came after the last one.

Only committed, durable entries are sealed, and Raft never removes a committed entry
(only compaction drops them, from the front), so a chunk never goes stale while its
entries are in the log. A start still checks each chunk against the
CommitLog (its first and last entries must sit where it says, with its index and
term), and walks instead from the first chunk that fails; a chunk found damaged later
is rebuilt from the log. The files are derived from the log, never an authority over
it.

A chunk covers the entries (last - count, last], where `last` is a multiple of the
chunk size (only the first chunk after a snapshot point starts part way). Its file is
named by its first index (20 digits) and written with `write_atomic`; the format is
in storage/FORMAT.md.
"""

from __future__ import annotations

import errno
import struct
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass

from storage.errors import DiskFullError
from storage.files import FileSystem

CHUNK_ENTRIES_DEFAULT = 65_536
"""Entries per chunk: 768 KiB of records, written once per 65,536 entries."""
CHUNK_CACHE_DEFAULT = 4
"""Sealed chunks an EntryLog keeps read back in memory (a follower catching up, a
start finding where to re-dispatch from)."""
_MAGIC = 0x58444945  # "EIDX"
_HEAD = struct.Struct("<IQII")  # magic, first index, entry count, term-run count
_RUN = struct.Struct("<QQ")  # first index of the run, its term
_CRC = struct.Struct("<I")
_NAME_DIGITS = 20


@dataclass(slots=True)
class Chunk:
    """Entries first .. first + len(offsets) - 1: where each starts, its frame's size,
    and the term runs (first index, term) that cover them."""

    first: int
    offsets: array[int]
    sizes: array[int]
    run_starts: array[int]
    run_terms: array[int]

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def term_at(self, index: int) -> int:
        return self.run_terms[max(0, bisect_right(self.run_starts, index) - 1)]


def chunk_name(first: int) -> str:
    return f"{first:0{_NAME_DIGITS}d}"


def encode_chunk(chunk: Chunk) -> bytes:
    body = bytearray(_HEAD.pack(_MAGIC, chunk.first, len(chunk.offsets), len(chunk.run_starts)))
    body += chunk.offsets.tobytes()
    body += chunk.sizes.tobytes()
    for start, term in zip(chunk.run_starts, chunk.run_terms, strict=True):
        body += _RUN.pack(start, term)
    body += _CRC.pack(zlib.crc32(body))
    return bytes(body)


def decode_chunk(data: bytes) -> Chunk | None:
    """The chunk, or None if the bytes are not a whole, intact one."""
    if len(data) < _HEAD.size + _CRC.size:
        return None
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: len(data) - _CRC.size]) != crc:
        return None
    magic, first, count, runs = _HEAD.unpack_from(data, 0)
    if magic != _MAGIC or count == 0 or runs == 0:
        return None
    pos = _HEAD.size
    if len(data) != pos + count * 12 + runs * _RUN.size + _CRC.size:
        return None
    offsets = array("Q")
    offsets.frombytes(data[pos : pos + count * 8])
    pos += count * 8
    sizes = array("I")
    sizes.frombytes(data[pos : pos + count * 4])
    pos += count * 4
    run_starts, run_terms = array("Q"), array("Q")
    for i in range(runs):
        start, term = _RUN.unpack_from(data, pos + i * _RUN.size)
        run_starts.append(start)
        run_terms.append(term)
    if run_starts[0] != first or list(run_starts) != sorted(set(run_starts)):
        return None
    if run_starts[-1] > first + count - 1 or list(run_terms) != sorted(run_terms):
        return None
    return Chunk(first, offsets, sizes, run_starts, run_terms)


class ChunkDir:
    """The chunk files of one log: which exist (first, last), writing and deleting them."""

    def __init__(self, fs: FileSystem, path: str, chunk_entries: int) -> None:
        if chunk_entries <= 0:
            raise ValueError("chunk_entries must be positive")
        self.fs = fs
        self.path = path
        self.chunk_entries = chunk_entries
        self.spans: list[tuple[int, int]] = []
        """(first, last) of each chunk file known good or just written, in order."""

    def names(self) -> list[int]:
        """First indexes of the chunk files present (a `.tmp` left by a crash is not one)."""
        return sorted(
            int(name)
            for name in self.fs.listdir(self.path)
            if len(name) == _NAME_DIGITS and name.isdigit()
        )

    def read(self, first: int) -> Chunk | None:
        data = self.fs.read_bytes(f"{self.path}/{chunk_name(first)}")
        chunk = None if data is None else decode_chunk(data)
        return chunk if chunk is not None and chunk.first == first else None

    def write(self, chunk: Chunk) -> None:
        """Write the chunk after the last one. Durable when it returns; DiskFullError
        leaves no chunk behind."""
        self._write_file(chunk)
        self.spans.append((chunk.first, chunk.last))

    def rewrite(self, first: int, chunk: Chunk) -> None:
        """Replace the chunk that began at `first` with `chunk` (same entries, or the
        ones of them the log still holds). On a full disk only the old file is gone."""
        self.fs.remove(f"{self.path}/{chunk_name(first)}")
        self.spans = [(chunk.first, chunk.last) if s[0] == first else s for s in self.spans]
        self._write_file(chunk)

    def _write_file(self, chunk: Chunk) -> None:
        data = encode_chunk(chunk)
        try:
            # Made with the first chunk, not on open: a node whose disk is full must
            # still start.
            self.fs.makedirs(self.path)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(self.path, len(data)) from exc
            raise
        self.fs.write_atomic(f"{self.path}/{chunk_name(chunk.first)}", data)

    def remove(self, first: int) -> None:
        self.fs.remove(f"{self.path}/{chunk_name(first)}")
        self.spans = [span for span in self.spans if span[0] != first]

    def remove_all(self) -> None:
        """Every chunk file present, known or not."""
        self.spans.clear()
        for first in self.names():
            self.fs.remove(f"{self.path}/{chunk_name(first)}")

    def sealed_through(self) -> int:
        """The last index the chunks cover, 0 if none."""
        return self.spans[-1][1] if self.spans else 0
