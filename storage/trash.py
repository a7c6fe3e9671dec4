"""Deleting big files off the caller's thread.

Unlinking a written 1 GiB CommitLog segment took 300 ms on our test VM: ext4 frees the
file's extents before `unlink` returns. A broker that unlinked on its event loop stopped
serving for that long at every retention delete (RocketMQ deletes from a service thread
of its own for the same reason). `Trash.discard` instead renames the file into the trash
directory, which takes microseconds and removes the name as a delete does, and a daemon
thread unlinks it there. Files a crash left in the trash are unlinked by the next
process that opens it. `pending_bytes` is the space not given back yet, so that a disk
usage check does not delete more data to make room that is already on its way.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid

__all__ = ["Trash"]

log = logging.getLogger(__name__)


class Trash:
    """A directory on the same file system as the files it takes, and its reaper."""

    def __init__(self, directory: str) -> None:
        """Nothing is created here (the directory comes with the first discard), so a
        node whose disk is full still starts."""
        self.directory = directory
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._queue: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        try:
            leftovers = sorted(os.listdir(directory))  # left by a crash: garbage by now
        except FileNotFoundError:
            leftovers = []
        for name in leftovers:
            self._enqueue(f"{directory}/{name}")

    @property
    def pending_bytes(self) -> int:
        """Bytes of files discarded but not unlinked yet."""
        with self._lock:
            return self._pending

    def discard(self, path: str) -> bool:
        """Move `path` into the trash, to be unlinked soon. False if the trash cannot
        take it (`path` is on another file system, no room for the trash directory):
        `path` is as it was, for the caller to unlink. FileNotFoundError if `path` does
        not exist. The caller makes the removal durable (fsyncs `path`'s directory).
        """
        target = f"{self.directory}/{uuid.uuid4().hex}-{os.path.basename(path)}"
        size = os.stat(path).st_blocks * 512
        try:
            os.makedirs(self.directory, exist_ok=True)
            os.rename(path, target)
        except FileNotFoundError:
            raise
        except OSError:
            return False
        self._enqueue(target, size)
        return True

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything discarded so far is unlinked (tests and tools)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def _enqueue(self, path: str, size: int | None = None) -> None:
        if size is None:
            try:
                size = os.stat(path).st_blocks * 512
            except FileNotFoundError:
                return
        with self._lock:
            self._pending += size
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._reap, name=f"trash-reaper {self.directory}", daemon=True
                )
                self._thread.start()
        self._queue.put((path, size))

    def _reap(self) -> None:
        while True:
            path, size = self._queue.get()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # the file stays; the next process tries again
                log.warning("trash: cannot unlink %s: %s", path, exc)
            with self._idle:
                self._pending -= size
                if self._pending == 0:
                    self._idle.notify_all()
