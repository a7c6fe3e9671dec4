"""Frame writes that share syscalls: frames handed in while a write is under way go out
together in the next one.

With many requests in flight on one connection (a producer's window, a leader answering
a whole committed batch at once), writing each frame with its own `send` costs a syscall
and, on the other side, a wake-up and a `recv` per frame. Here frames queue into the
current *batch*; one caller writes it, and frames that arrive meanwhile form the next
batch. Every caller still returns only once its frame has been handed to the OS, frames
never interleave, and they go out in the order `write` was called. Bodies over
`inline_bytes_max` are sent on their own (no copy into the joined buffer).

A caller writes at most one batch, the one holding its own frame, and then hands the
next batch to one of that batch's callers. Writing "until the queue is empty" instead
let one caller be the writer for everybody while a busy producer kept queueing: its own
response sat unread until its timeout cancelled it part-way through someone else's
frame, which fails the connection and every request on it (a window of 256 sends lost
its connection every few seconds).

Runs on anyio, so both the trio server and the anyio client use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

Buffer = bytes | bytearray | memoryview
INLINE_BYTES_MAX_DEFAULT = 64 * 1024


class _Batch:
    """Frames queued for one write, and the callers waiting for it."""

    __slots__ = ("parts", "wake", "written")

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        # Set when the batch is written (or the stream failed), or when the writer
        # before it is done and one of this batch's callers should write it.
        self.wake = anyio.Event()
        self.written = False


class CoalescingWriter:
    def __init__(
        self,
        send: Callable[[Buffer], Awaitable[None]],
        broken: Callable[[str], BaseException],
        *,
        inline_bytes_max: int = INLINE_BYTES_MAX_DEFAULT,
        gather: bool = False,
        shield: bool = False,
    ) -> None:
        """`send` writes one buffer to the stream; `broken(reason)` makes the exception
        a waiting caller raises when the write that carried its frame failed. With
        `gather`, a write first yields once, so frames written by other tasks woken in
        the same scheduling round share its syscall (a servers' responses). With
        `shield`, a caller cancelled while it writes a batch finishes that write first
        (a client: its request timed out, or a consumer dropped the queue it pulled
        for); cancelled part-way, the stream would be broken for every other request
        on it. Only where closing the stream unblocks a stuck write (the client's
        reader closes it when the connection fails)."""
        self._send = send
        self._broken = broken
        self._inline_bytes_max = inline_bytes_max
        self._gather = gather
        self._shield = shield
        self._queued: _Batch | None = None  # the batch taking frames, not being written
        self._writing = False
        self._failure: str | None = None
        self.writes = 0
        self.frames = 0

    @property
    def failed(self) -> bool:
        """A write failed or was cancelled part-way: the stream is unusable."""
        return self._failure is not None

    async def write(
        self, head: bytes, body: Buffer = b"", on_queued: Callable[[], None] | None = None
    ) -> None:
        """Write one frame (`head` + `body`); returns once it is handed to the OS.
        `on_queued` is called as soon as the frame's place in the write order is fixed
        (before this waits for anything). Raises what `send` raised (the caller that did
        the write) or `broken(...)`."""
        await self.write_many([(head, body)], on_queued)

    async def write_many(
        self,
        frames: list[tuple[bytes, Buffer]],
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """Write several frames, in order, sharing writes; as `write` otherwise."""
        if self._failure is not None:
            raise self._broken(self._failure)
        batch = self._queued
        if batch is None:
            batch = self._queued = _Batch()
        parts = batch.parts
        for head, body in frames:
            parts.append(head)
            if body:
                parts.append(body)
        self.frames += len(frames)
        if on_queued is not None:
            on_queued()
        await self._flush(batch)

    async def _flush(self, batch: _Batch) -> None:
        while not batch.written:
            if self._failure is not None:
                raise self._broken(self._failure)
            if self._writing:
                await batch.wake.wait()
                continue
            await self._write_batch(batch)
        if self._failure is not None:
            raise self._broken(self._failure)

    async def _write_batch(self, batch: _Batch) -> None:
        """Write `batch` (still the queued one: it is taken only here), then hand the
        next batch, if any, to its callers."""
        self._writing = True
        batch.wake = anyio.Event()  # the other callers of this batch now wait for it
        try:
            if self._gather:
                # Let the other tasks of this scheduling round (a leader answering a
                # whole committed batch) queue their frames for this same write.
                # Shielded: nothing is written yet, so a cancel here must not mark the
                # stream broken (it would fail every frame queued behind this one).
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
            assert self._queued is batch
            self._queued = None
            with anyio.CancelScope(shield=self._shield):
                await self._send_parts(batch.parts)
        except BaseException as exc:
            self._failure = f"write failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._writing = False
            batch.written = True
            batch.wake.set()
            if self._queued is not None:
                self._queued.wake.set()  # one of its callers writes it next

    async def _send_parts(self, parts: list[Buffer]) -> None:
        small: list[Buffer] = []
        for part in parts:
            if len(part) > self._inline_bytes_max:
                if small:
                    await self._send_joined(small)
                    small = []
                self.writes += 1
                await self._send(part)
            else:
                small.append(part)
        if small:
            await self._send_joined(small)

    async def _send_joined(self, parts: list[Buffer]) -> None:
        self.writes += 1
        await self._send(parts[0] if len(parts) == 1 else b"".join(parts))
