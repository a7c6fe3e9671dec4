"""The client side of a connection, on anyio: one TCP stream, many concurrent requests.

Requests are multiplexed by request id: each `request` registers a slot, writes its frame,
and waits; one reader task (`Connection.run`) routes every response to its slot. That lets
a producer keep many sends in flight on one connection, and it is why this runs the same
under trio and asyncio: anyio supplies the stream, the lock, the events and the timeouts.

Failure is explicit: a closed or broken connection fails every waiting request with
ConnectionClosedError, a missing response raises RequestTimeoutError, an error response
raises RemoteError. A connection that failed stays failed; callers reconnect.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import anyio
import anyio.abc
import structlog

from mq.protocol import (
    FLAG_ONEWAY,
    FLAG_RESPONSE,
    FRAME_BYTES_MAX,
    ErrorCode,
    Frame,
    FrameDecoder,
    ProtocolError,
    code_name,
    encode_frame_head,
)
from mq.rpc.address import parse_address
from mq.rpc.errors import ConnectError, ConnectionClosedError, RemoteError, RequestTimeoutError
from mq.rpc.writer import CoalescingWriter

CONNECT_TIMEOUT_S_DEFAULT = 3.0
REQUEST_TIMEOUT_S_DEFAULT = 3.0
IN_FLIGHT_MAX_DEFAULT = 1024
"""Requests one connection keeps outstanding; more wait for a slot (bounded memory for
pending slots, and a server's in-flight bound is not defeated by a runaway caller)."""

RECEIVE_BYTES = 64 * 1024
BODY_INLINE_BYTES_MAX = 64 * 1024

RequestHandler = Callable[[Frame], Awaitable[Frame | None]]
"""Answers a request the server sends us (e.g. NOTIFY_CONSUMER_IDS_CHANGED). It runs on
the reader task, so it must be quick; its return value is sent unless the request was
one-way."""

_log = structlog.get_logger("mq.rpc")


@dataclass(slots=True)
class _Pending:
    done: anyio.Event
    response: Frame | None = None


class Connection:
    """A multiplexed request/response connection over a connected byte stream.

    Usually obtained from `connect()`, which also runs the reader. To manage the reader
    yourself (a connection pool with its own task group), construct it and start
    `run` in a task group: `await task_group.start(conn.run)`.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        address: str = "?",
        on_request: RequestHandler | None = None,
        in_flight_max: int = IN_FLIGHT_MAX_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX,
    ) -> None:
        self.address = address
        self.frame_bytes_max = frame_bytes_max
        self._stream = stream
        self._on_request = on_request
        self._decoder = FrameDecoder(frame_bytes_max)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._slots = anyio.Semaphore(in_flight_max)
        self._writer = CoalescingWriter(
            stream.send,  # type: ignore[arg-type]  # any buffer works
            anyio.BrokenResourceError,
            inline_bytes_max=BODY_INLINE_BYTES_MAX,
            shield=True,
        )
        self._reader_scope: anyio.CancelScope | None = None
        self._close_reason: str | None = None
        self._closed_event = anyio.Event()

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    async def wait_closed(self) -> None:
        """Return once the connection is closed, by either side: an idle connection's
        owner learns that the peer went away without having to send anything."""
        await self._closed_event.wait()

    async def request(
        self,
        frame: Frame,
        *,
        timeout: float = REQUEST_TIMEOUT_S_DEFAULT,
        check: bool = True,
        on_queued: Callable[[], None] | None = None,
    ) -> Frame:
        """Send `frame` as a request and wait for its response.

        The connection assigns the request id. With `check` (the default) an error
        response raises RemoteError; without it the error frame is returned.
        `on_queued`, if given, is called (in this task) as soon as the frame's place in
        the connection's write order is fixed, before anything else is awaited: frames
        go out in that order, and a server reads them in that order.
        Raises RequestTimeoutError, ConnectionClosedError, or ProtocolError if the
        frame is too large to send.
        """
        async with self._slots:
            self._raise_if_closed()
            request_id = next(self._ids)
            frame = replace(
                frame,
                request_id=request_id,
                flags=int(frame.flags) & ~(FLAG_ONEWAY | FLAG_RESPONSE),
            )
            head = encode_frame_head(frame, frame_bytes_max=self.frame_bytes_max)
            slot = _Pending(anyio.Event())
            self._pending[request_id] = slot
            try:
                with anyio.fail_after(timeout):
                    await self._send(head, frame.body, on_queued)
                    await slot.done.wait()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"{code_name(frame.code)} to {self.address}: no response in {timeout}s"
                ) from None
            finally:
                del self._pending[request_id]
        response = slot.response
        if response is None:
            raise ConnectionClosedError(self._describe_close())
        if check and response.error != ErrorCode.SUCCESS:
            raise RemoteError(response.error, response.remark, response)
        return response

    async def send_oneway(self, frame: Frame) -> None:
        """Send `frame` without waiting for (or getting) a response. Returns once the
        frame is handed to the OS; delivery is not confirmed."""
        await self.send_oneway_many([frame])

    async def send_oneway_many(self, frames: list[Frame]) -> None:
        """`send_oneway` for several frames, in order, in as few writes as they fit."""
        self._raise_if_closed()
        encoded: list[tuple[bytes, bytes | bytearray | memoryview]] = []
        for frame in frames:
            flags = (int(frame.flags) | FLAG_ONEWAY) & ~FLAG_RESPONSE
            frame = replace(frame, request_id=next(self._ids), flags=flags)
            encoded.append(
                (encode_frame_head(frame, frame_bytes_max=self.frame_bytes_max), frame.body)
            )
        await self._guarded(self._writer.write_many(encoded))

    async def aclose(self) -> None:
        """Close the connection; waiting requests fail with ConnectionClosedError."""
        await self._fail("closed locally")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and dispatch incoming frames until the connection closes. Never raises
        (except cancellation): how the connection ended is what requests then raise."""
        reason = "closed locally"
        with anyio.CancelScope() as scope:
            self._reader_scope = scope
            task_status.started()
            try:
                while True:
                    data = await self._stream.receive(RECEIVE_BYTES)
                    self._decoder.receive_data(data)
                    while (frame := self._decoder.next_frame()) is not None:
                        await self._dispatch(frame)
            except anyio.EndOfStream:
                reason = "closed by peer"
            except ProtocolError as exc:
                reason = f"protocol error from peer: {exc}"
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                reason = f"connection broken: {type(exc).__name__}: {exc}"
            except ConnectionClosedError as exc:  # from answering a server request
                reason = str(exc)
        await self._fail(reason)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------------

    async def _dispatch(self, frame: Frame) -> None:
        if frame.is_response:
            slot = self._pending.get(frame.request_id)
            if slot is not None and not slot.done.is_set():
                slot.response = frame
                slot.done.set()
            # else: the requester timed out and left; a late response is dropped.
            return
        response: Frame | None
        if self._on_request is None:
            response = frame.make_error(
                ErrorCode.REQUEST_CODE_NOT_SUPPORTED,
                f"client does not serve {code_name(frame.code)}",
            )
        else:
            try:
                response = await self._on_request(frame)
            except Exception as exc:
                _log.exception("client_request_handler_failed", code=code_name(frame.code))
                response = frame.make_error(ErrorCode.SYSTEM_ERROR, f"{type(exc).__name__}: {exc}")
        if response is not None and not frame.is_oneway:
            response = replace(response, request_id=frame.request_id, flags=FLAG_RESPONSE)
            await self._send(
                encode_frame_head(response, frame_bytes_max=self.frame_bytes_max), response.body
            )

    async def _send(
        self,
        head: bytes,
        body: bytes | bytearray | memoryview,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        """Write one frame; frames written while another write is under way share the
        next write (mq/rpc/writer.py), so a window of requests costs few syscalls."""
        self._raise_if_closed()
        await self._guarded(self._writer.write(head, body, on_queued))

    async def _guarded(self, write: Awaitable[None]) -> None:
        """Await a write, turning its failures into the connection's: closed on a
        transport error (ConnectionClosedError), or on a cancellation part-way through
        a frame."""
        try:
            await write
        except anyio.get_cancelled_exc_class():
            if self._writer.failed:
                # The write broke: part of a frame may be on the wire, and the peer
                # would read whatever we send next as its continuation. (A caller
                # cancelled while it writes finishes the write first, the writer's
                # shield; one cancelled while its frame waits in the queue is fine:
                # the frame still goes out whole.)
                await self._fail("a send was cancelled part-way through a frame")
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            await self._fail(f"send failed: {type(exc).__name__}: {exc}")
            raise ConnectionClosedError(self._describe_close()) from exc

    async def _fail(self, reason: str) -> None:
        """Mark the connection closed for `reason`, wake every waiter, close the stream."""
        if self._close_reason is None:
            self._close_reason = reason
        self._closed_event.set()
        for slot in self._pending.values():
            slot.done.set()
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        await anyio.aclose_forcefully(self._stream)

    def _raise_if_closed(self) -> None:
        if self._close_reason is not None:
            raise ConnectionClosedError(self._describe_close())

    def _describe_close(self) -> str:
        return f"connection to {self.address} {self._close_reason or 'closed'}"


@asynccontextmanager
async def connect(
    address: str,
    *,
    timeout: float = CONNECT_TIMEOUT_S_DEFAULT,
    on_request: RequestHandler | None = None,
    in_flight_max: int = IN_FLIGHT_MAX_DEFAULT,
    frame_bytes_max: int = FRAME_BYTES_MAX,
) -> AsyncIterator[Connection]:
    """Open a connection to "host:port" and run its reader for the duration of the block.

    Raises ConnectError if the connection cannot be made within `timeout` seconds.
    Exceptions from the block propagate unchanged (not wrapped in an ExceptionGroup).
    """
    host, port = parse_address(address)
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise ConnectError(f"connect to {address} timed out after {timeout}s") from None
    except OSError as exc:
        raise ConnectError(f"connect to {address} failed: {exc}") from exc
    conn = Connection(
        stream,
        address=address,
        on_request=on_request,
        in_flight_max=in_flight_max,
        frame_bytes_max=frame_bytes_max,
    )
    body_error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        await task_group.start(conn.run)
        try:
            yield conn
        except Exception as exc:
            # Re-raised outside the task group, so the caller sees RemoteError itself
            # rather than an ExceptionGroup wrapping it.
            body_error = exc
        finally:
            await conn.aclose()
    if body_error is not None:
        raise body_error
