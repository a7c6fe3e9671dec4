"""The trio driver of sync flush (group commit) for a standalone MessageStore.

storage/ keeps the books (GroupCommit); this module awaits. (A broker node flushes as its
Raft driver says, once per Ready; this driver serves the store on its own.) The fdatasync
runs in a worker thread so the trio thread keeps appending while the disk works:
everything appended while one fsync is in flight is covered by the next one, and
that is what makes group commit pay — N waiters, one fsync.
"""

from __future__ import annotations

import trio

from storage.commit_log import CommitLog
from storage.flush import GroupCommit


class Flusher:
    def __init__(self, commit_log: CommitLog) -> None:
        self._log = commit_log
        self._group = GroupCommit()
        self._events: dict[int, trio.Event] = {}
        self._wakeup = trio.Event()
        self.fsyncs = 0

    async def wait_durable(self, offset: int) -> None:
        """Return once every byte below `offset` is on stable storage."""
        if self._log.flushed_offset >= offset:
            return
        ticket = self._group.request(offset)
        event = self._events[ticket] = trio.Event()
        self._wakeup.set()
        await event.wait()

    async def _flush_once(self) -> None:
        plan = self._log.prepare_flush()
        if plan.segments:
            await trio.to_thread.run_sync(plan.sync)
            self.fsyncs += 1
        flushed = self._log.complete_flush(plan)
        for ticket in self._group.complete(flushed):
            self._events.pop(ticket).set()

    async def run_sync_mode(self) -> None:
        """Group commit: flush whenever someone waits; waiters arriving meanwhile share the next."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self._group.target() is not None:
                await self._flush_once()

    async def flush_now(self) -> None:
        await self._flush_once()
