"""The file layer: fixed-size segments and small atomic files, real or simulated.

Everything durable in the store goes through a `FileSystem`. Two implementations
share one contract so the same CommitLog, ConsumeQueue and IndexFile code runs on
real disks and inside the deterministic simulator:

* `RealFileSystem` maps preallocated segments with mmap; reads are zero-copy
  memoryviews and `Segment.sync` is one fdatasync.
* `SimFileSystem` keeps bytes in memory and remembers which writes are not yet
  synced, so `crash()` can drop them and tear the last one at a byte chosen by an
  injected `random.Random`.

Contract shared by both (the tests in tests/storage/test_files.py hold each to it):

* A segment has a fixed capacity chosen at creation and reads as zeros where
  nothing was written. Space is reserved when the segment is created, so a full
  disk surfaces as `DiskFullError` from `open_segment`, never as a fault in the
  middle of a write (a write into an mmap'd hole on a full disk would be SIGBUS).
* Except a *sparse* segment (`open_segment(..., sparse=True)`, for the many small
  per-queue files): no space is reserved, every write goes through `pwrite`, and a
  write the disk has no room for raises `DiskFullError` (part of it may have landed,
  as with a torn write). A thousand queues then hold a few KiB each, not 6 MB each,
  and a new file's first write costs a syscall: a store into a freshly mapped file
  took 2-24 ms here (its first write fault), one such stall per new queue.
* Bytes written are visible to reads at once; they survive a crash only after a
  `sync()` of that segment returned.
* Metadata operations (create, remove, `write_atomic`, `makedirs`) are durable when
  they return: the real implementation fsyncs the directory. Except where the caller
  asks otherwise (`makedirs(..., durable=False)`, `open_segment(..., durable=False)`):
  then the new name may vanish in a crash until `sync_dir` of its directory returned.
  A ConsumeQueue creates its files so, and syncs the names with its units at the next
  checkpoint, off the event loop. (With a trash directory,
  a removed file's name is gone when `remove` returns; its space comes back when a
  background thread has unlinked it, storage/trash.py.)
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from storage.trash import Trash

Buffer: TypeAlias = bytes | bytearray | memoryview


class DiskFullError(OSError):
    """No space left for a new segment or file; the store stays readable."""

    def __init__(self, path: str, needed_bytes: int) -> None:
        super().__init__(errno.ENOSPC, f"disk full: cannot reserve {needed_bytes} bytes", path)
        self.needed_bytes = needed_bytes


class OutOfFilesError(DiskFullError):
    """The process (or the system) has no file descriptor left to open a file.

    Handled as a full disk is, and for the same reason: it passes (connections close,
    an operator raises the limit), so whatever needed the file waits and tries again
    instead of the node stopping, and nothing half-written is left behind."""

    def __init__(self, path: str, code: int) -> None:
        OSError.__init__(self, code, "too many open files", path)
        self.needed_bytes = 0


_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def _open(path: str, flags: int, mode: int = 0o777) -> int:
    """os.open, with running out of file descriptors as OutOfFilesError."""
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno in _OUT_OF_FILES:
            raise OutOfFilesError(path, exc.errno) from exc
        raise


class ClosedSegmentError(RuntimeError):
    """A segment handle was used after close or after a simulated crash."""


class RandomSource(Protocol):
    """The part of `random.Random` the simulated file system needs."""

    def random(self) -> float: ...

    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...


class Segment(Protocol):
    """A fixed-capacity file addressed by position, reserved up front."""

    @property
    def path(self) -> str: ...

    @property
    def capacity(self) -> int: ...

    def write(self, pos: int, data: Buffer) -> None: ...

    def pack_into(self, layout: struct.Struct, pos: int, *values: int) -> None:
        """`write(pos, layout.pack(*values))` without the intermediate bytes: the
        ConsumeQueue and IndexFile write a few fixed-size fields per message."""
        ...

    def read(self, pos: int, size: int) -> memoryview: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """Where segments and small files live; see the module docstring for the contract."""

    def open_segment(
        self, path: str, capacity: int, *, sparse: bool = False, durable: bool = True
    ) -> Segment: ...

    def listdir(self, path: str) -> list[str]: ...

    def makedirs(self, path: str, *, durable: bool = True) -> list[str]:
        """Create `path` and its missing parents. Returns the directories that got a
        new entry: already synced when `durable`, for the caller to `sync_dir` if not."""
        ...

    def sync_dir(self, path: str) -> None: ...

    def exists(self, path: str) -> bool: ...

    def file_size(self, path: str) -> int: ...

    def remove(self, path: str) -> None: ...

    def read_bytes(self, path: str) -> bytes | None: ...

    def write_atomic(self, path: str, data: bytes) -> None: ...

    def usage_ratio(self, path: str) -> float: ...


_PWRITE_BYTES_MIN = 4096
"""Writes this large go through pwrite; smaller ones are stores into the mapping."""


def _check_range(pos: int, size: int, capacity: int, path: str) -> None:
    if pos < 0 or size < 0 or pos + size > capacity:
        raise ValueError(f"{path}: range [{pos}, {pos + size}) outside segment of {capacity} bytes")


# --------------------------------------------------------------------------- real files


class RealSegment:
    """A preallocated (or, `sparse`, a holed and pwrite-only) file mapped with mmap;
    reads are views into the page cache."""

    def __init__(
        self, path: str, capacity: int, *, sparse: bool = False, durable: bool = True
    ) -> None:
        self._path = path
        self._capacity = capacity
        self._sparse = sparse
        created = not os.path.exists(path)
        fd = _open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < capacity and sparse:
                os.ftruncate(fd, capacity)  # a hole: blocks are allocated as written
            elif size < capacity:
                try:
                    os.posix_fallocate(fd, 0, capacity)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        os.ftruncate(fd, size)
                        if created:
                            os.unlink(path)
                        raise DiskFullError(path, capacity) from exc
                    raise
            elif size > capacity:
                raise ValueError(f"{path}: file has {size} bytes, segment capacity is {capacity}")
            self._mm = mmap.mmap(fd, capacity)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._view: memoryview | None = memoryview(self._mm)
        if created and durable:
            _fsync_dir(os.path.dirname(path) or ".")

    @property
    def path(self) -> str:
        return self._path

    @property
    def capacity(self) -> int:
        return self._capacity

    def _live_view(self) -> memoryview:
        if self._view is None:
            raise ClosedSegmentError(self._path)
        return self._view

    def write(self, pos: int, data: Buffer) -> None:
        # Hot path: CQ and index writes are tiny and frequent, batches are large.
        if self._view is None:
            raise ClosedSegmentError(self._path)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if pos < 0 or pos + size > self._capacity:
            _check_range(pos, size, self._capacity, self._path)
        if size < _PWRITE_BYTES_MIN and not self._sparse:
            self._mm[pos : pos + size] = data
            return
        # pwrite, not a store into the mapping: the first store into each page of a
        # preallocated (unwritten-extent) file takes a write fault + page_mkwrite per
        # 4 KiB, measured 2-3x slower than pwrite on ext4. Both go through the one page
        # cache, so mmap readers (and views already handed out) see the bytes at once,
        # and an I/O error surfaces as OSError instead of SIGBUS (a sparse segment's
        # full disk as DiskFullError).
        self._pwrite(pos, data)

    def _pwrite(self, pos: int, data: Buffer) -> None:
        src = memoryview(data).cast("B")
        try:
            while src.nbytes:
                n = os.pwrite(self._fd, src, pos)
                if n <= 0:
                    raise OSError(errno.EIO, f"pwrite wrote {n} bytes", self._path)
                src = src[n:]
                pos += n
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(self._path, src.nbytes) from exc
            raise

    def pack_into(self, layout: struct.Struct, pos: int, *values: int) -> None:
        if self._view is None:
            raise ClosedSegmentError(self._path)
        if pos < 0 or pos + layout.size > self._capacity:
            _check_range(pos, layout.size, self._capacity, self._path)
        if self._sparse:
            self._pwrite(pos, layout.pack(*values))
            return
        layout.pack_into(self._mm, pos, *values)

    def read(self, pos: int, size: int) -> memoryview:
        view = self._live_view()
        _check_range(pos, size, self._capacity, self._path)
        return view[pos : pos + size]

    def sync(self) -> None:
        self._live_view()
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._view is None:
            return
        self._view.release()
        self._view = None
        try:
            self._mm.close()
        except BufferError:
            # A reader still holds a zero-copy view; the mapping is released when it drops it.
            pass
        os.close(self._fd)


def _fsync_dir(path: str) -> None:
    fd = _open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RealFileSystem:
    """The production file layer on a POSIX file system.

    With a `trash_dir` (on the same file system as the data), `remove` renames files
    there and a background thread unlinks them (storage/trash.py): unlinking a big
    segment takes long enough to stall an event loop. `usage_ratio` counts the space
    on its way back as free.
    """

    def __init__(self, trash_dir: str | None = None) -> None:
        self.trash = None if trash_dir is None else Trash(trash_dir)

    def open_segment(
        self, path: str, capacity: int, *, sparse: bool = False, durable: bool = True
    ) -> Segment:
        return RealSegment(path, capacity, sparse=sparse, durable=durable)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def makedirs(self, path: str, *, durable: bool = True) -> list[str]:
        # Each directory created is synced into its parent: files synced inside a new
        # directory (a new topic's ConsumeQueue) are lost with it if its entry is not.
        if os.path.isdir(path):
            return []
        parent = os.path.dirname(path.rstrip("/")) or "."
        grown = self.makedirs(parent, durable=durable)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return grown  # made meanwhile by someone else, who syncs it
        if durable:
            _fsync_dir(parent)
        return [*grown, parent]

    def sync_dir(self, path: str) -> None:
        _fsync_dir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def file_size(self, path: str) -> int:
        return os.path.getsize(path)

    def remove(self, path: str) -> None:
        try:
            if self.trash is None or not self.trash.discard(path):
                os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(os.path.dirname(path) or ".")

    def read_bytes(self, path: str) -> bytes | None:
        try:
            fd = _open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            return f.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = path + ".tmp"
        try:
            fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise DiskFullError(path, len(data)) from exc
            raise
        _fsync_dir(os.path.dirname(path) or ".")

    def usage_ratio(self, path: str) -> float:
        st = os.statvfs(path)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        if self.trash is not None:
            free = min(total, free + self.trash.pending_bytes)
        return 0.0 if total == 0 else 1.0 - free / total


# --------------------------------------------------------------------------- simulated files

SIM_PAGE_BYTES = 4096
"""A sparse simulated file takes room in pages of this size, as a file system's blocks."""


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


@dataclass
class _SimFile:
    """One simulated file: what a reader sees now, and what would survive a crash."""

    data: bytearray
    durable: bytearray
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    generation: int = 0
    # A sparse file's allocated bytes (whole pages up to the furthest write), charged
    # as written; None: the whole capacity, charged at creation.
    allocated: int | None = None

    def used(self) -> int:
        return len(self.data) if self.allocated is None else self.allocated


class SimSegment:
    """A handle on a simulated segment; dead after close or after its file system crashed."""

    def __init__(self, fs: SimFileSystem, path: str, file: _SimFile) -> None:
        self._fs = fs
        self._path = path
        self._file = file
        self._generation = file.generation
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def capacity(self) -> int:
        return len(self._file.data)

    def _live(self) -> _SimFile:
        if self._closed or self._generation != self._file.generation:
            raise ClosedSegmentError(self._path)
        return self._file

    def write(self, pos: int, data: Buffer) -> None:
        f = self._live()
        chunk = bytes(memoryview(data).cast("B"))
        _check_range(pos, len(chunk), len(f.data), self._path)
        self._allocate(f, pos + len(chunk))
        f.data[pos : pos + len(chunk)] = chunk
        f.pending.append((pos, chunk))

    def pack_into(self, layout: struct.Struct, pos: int, *values: int) -> None:
        self.write(pos, layout.pack(*values))

    def _allocate(self, f: _SimFile, end: int) -> None:
        """A sparse file takes room as it is written: DiskFullError (nothing written)
        if the disk has none for the pages up to `end`."""
        if f.allocated is None or end <= f.allocated:
            return
        pages = min(len(f.data), -(-end // SIM_PAGE_BYTES) * SIM_PAGE_BYTES)
        self._fs._reserve(self._path, pages - f.allocated)
        f.allocated = pages

    def read(self, pos: int, size: int) -> memoryview:
        f = self._live()
        _check_range(pos, size, len(f.data), self._path)
        # A copy, not a view: a later write must not change bytes a reader already holds,
        # and a bytearray with live exports could not be resized by a crash.
        return memoryview(bytes(f.data[pos : pos + size]))

    def sync(self) -> None:
        f = self._live()
        self._fs.fault_check("sync", self._path)
        for pos, chunk in f.pending:
            f.durable[pos : pos + len(chunk)] = chunk
        f.pending.clear()
        self._fs.syncs += 1

    def close(self) -> None:
        self._closed = True


class SimFileSystem:
    """An in-memory disk for tests and the simulator, with crash and full-disk faults.

    `crash()` is what a power cut does: every byte written since the last sync of
    its segment is lost, except that the first unsynced write may land partially
    (a torn write, cut at a byte chosen by `rng`), and with `rng` some further
    whole unsynced writes may land before it, as a disk that reorders nothing but
    loses its cache would do. Handles opened before the crash are dead; the owner
    reopens the files, as a restarted process would.
    """

    def __init__(self, rng: RandomSource, capacity_bytes: int | None = None) -> None:
        self._rng = rng
        self._files: dict[str, _SimFile] = {}
        self._small: dict[str, bytes] = {}
        self._dirs: set[str] = {"", "/", "."}
        self.capacity_bytes = capacity_bytes
        self.syncs = 0
        self.sync_error: OSError | None = None
        # Files and directories created with durable=False whose name no `sync_dir`
        # has made durable yet: a crash loses them, and whatever is under them.
        self._volatile: set[str] = set()

    # -- faults

    def fault_check(self, op: str, path: str) -> None:
        """Raise the injected error, if any, for a sync; lets tests model EIO."""
        if self.sync_error is not None and op == "sync":
            raise self.sync_error

    def used_bytes(self) -> int:
        return sum(f.used() for f in self._files.values()) + sum(
            len(b) for b in self._small.values()
        )

    def _reserve(self, path: str, nbytes: int) -> None:
        if self.capacity_bytes is not None and self.used_bytes() + nbytes > self.capacity_bytes:
            raise DiskFullError(path, nbytes)

    def crash(self, tear: bool = True) -> None:
        """Lose unsynced writes (maybe landing some, tearing one) and names not synced
        into their directory, and kill every open handle."""
        if self._volatile:
            lost = tuple(self._volatile)

            def gone(p: str) -> bool:
                return any(p == q or p.startswith(q + "/") for q in lost)

            for path in [p for p in self._files if gone(p)]:
                self._files.pop(path).generation += 1
            for path in [p for p in self._small if gone(p)]:
                del self._small[path]
            self._dirs = {d for d in self._dirs if not gone(d)}
            self._volatile.clear()
        for f in self._files.values():
            survivor = bytearray(f.durable)
            if tear and f.pending:
                landed = self._rng.randrange(0, len(f.pending) + 1)
                for pos, chunk in f.pending[:landed]:
                    survivor[pos : pos + len(chunk)] = chunk
                if landed < len(f.pending):
                    pos, chunk = f.pending[landed]
                    cut = self._rng.randrange(0, len(chunk) + 1)
                    survivor[pos : pos + cut] = chunk[:cut]
            f.data = survivor
            f.durable = bytearray(survivor)
            f.pending = []
            f.generation += 1

    def flip_byte(self, path: str, pos: int) -> None:
        """Corrupt one durable byte, as bit rot would (tests of corruption handling)."""
        if path in self._files:
            f = self._files[path]
            f.data[pos] ^= 0xFF
            f.durable[pos] ^= 0xFF
        else:
            b = bytearray(self._small[path])
            b[pos] ^= 0xFF
            self._small[path] = bytes(b)

    # -- FileSystem

    def open_segment(
        self, path: str, capacity: int, *, sparse: bool = False, durable: bool = True
    ) -> Segment:
        f = self._files.get(path)
        if f is None:
            if not sparse:
                self._reserve(path, capacity)
            f = _SimFile(
                data=bytearray(capacity),
                durable=bytearray(capacity),
                allocated=0 if sparse else None,
            )
            self._files[path] = f
            if not durable:
                self._volatile.add(path)
        elif f.allocated is not None:
            if len(f.data) != capacity:
                raise ValueError(
                    f"{path}: sparse file has {len(f.data)} bytes, capacity is {capacity}"
                )
        elif len(f.data) != capacity:
            if len(f.data) > capacity:
                raise ValueError(
                    f"{path}: file has {len(f.data)} bytes, segment capacity is {capacity}"
                )
            self._reserve(path, capacity - len(f.data))
            f.data.extend(bytes(capacity - len(f.data)))
            f.durable.extend(bytes(capacity - len(f.durable)))
        return SimSegment(self, path, f)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {
            p[len(prefix) :].split("/", 1)[0]
            for p in [*self._files, *self._small, *self._dirs]
            if p.startswith(prefix)
        }
        names.discard("")
        return sorted(names)

    def makedirs(self, path: str, *, durable: bool = True) -> list[str]:
        parts = path.rstrip("/").split("/")
        grown = []
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                grown.append(_parent(d))
                if not durable:
                    self._volatile.add(d)
        return grown

    def sync_dir(self, path: str) -> None:
        """The names in `path` are durable from now on."""
        path = path.rstrip("/")
        self._volatile = {p for p in self._volatile if _parent(p) != path}

    def exists(self, path: str) -> bool:
        return path in self._files or path in self._small or path.rstrip("/") in self._dirs

    def file_size(self, path: str) -> int:
        if path in self._files:
            return len(self._files[path].data)
        if path in self._small:
            return len(self._small[path])
        raise FileNotFoundError(path)

    def remove(self, path: str) -> None:
        f = self._files.pop(path, None)
        if f is not None:
            f.generation += 1
        self._small.pop(path, None)

    def read_bytes(self, path: str) -> bytes | None:
        return self._small.get(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        # A new file (the real one writes a temporary file, then renames it over the
        # old one), so it needs room for all of `data` while the old one still exists.
        self._reserve(path, len(data))
        self._small[path] = bytes(data)

    def usage_ratio(self, path: str) -> float:
        if not self.capacity_bytes:
            return 0.0
        return self.used_bytes() / self.capacity_bytes
