"""The server side of a connection, on trio: read frames, run handlers, write responses.

One `serve_connection` per accepted stream. Requests on a connection are handled
concurrently (a slow PULL must not hold up a SEND behind it; responses carry the request
id, so order does not matter), but at most `in_flight_max` at once, with at most
`unsent_bytes_max` of their responses made and not yet written: past either we stop
reading, and TCP pushes back on the client instead of our memory growing.

Whatever a peer sends and whatever a handler raises, the failure stays inside that
connection: a handler exception becomes a SYSTEM_ERROR response, a framing error becomes
an error frame (when the request can be named) and a close, and `serve_tcp` logs and drops
anything that still escapes, so one bad client never takes the server down.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import resource
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog
import trio

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
from mq.rpc.address import format_address
from mq.rpc.writer import CoalescingWriter

IN_FLIGHT_MAX_DEFAULT = 64
"""Requests one connection may have in its handlers at once."""

CONNECTIONS_MAX_DEFAULT = 1024
"""Connections one server accepts at once; more are refused."""

FD_RESERVE_MIN = 64
"""File descriptors kept free for the server's own files (a broker opens one per new
ConsumeQueue file): a connection that would leave fewer than this, or than an eighth of
the limit, is refused, so clients can never take the last descriptor a node needs."""

PROBATION_MAX = 8
"""Connections over the limit read at once for a first frame that may admit them
anyway (a broker's peers: its own group must always be able to talk, however many
clients hold connections). A newcomer past this closes the one read the longest, so
silent connections cannot keep a peer out."""

PROBATION_S = 2.0
"""How long a connection over the limit has to send that first frame (a broker's peers
send within a heartbeat, clients at once)."""

OPEN_FILES_LOW = 4096
"""A soft limit on open files under this is logged as a warning at start."""

REFUSED_LOG_INTERVAL_S = 10.0
"""Refused connections are logged at most this often, with a count."""

UNSENT_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
"""Response bytes one connection may have made and not yet written; past it no more
requests are read from it (TCP pushes back on the client) until they are written."""

RECEIVE_BYTES = 64 * 1024
BODY_INLINE_BYTES_MAX = 64 * 1024
"""Bodies up to this size are joined with the header into one write (one syscall);
larger ones are written separately rather than copied."""

ERROR_SEND_TIMEOUT_S = 5.0
"""How long we try to deliver the error frame of a failed connection before closing."""

_log = structlog.get_logger("mq.rpc")


class Peer:
    """The remote end of one served connection, as seen by a handler.

    Handlers use it to know who is asking (`address`) and to push one-way frames to that
    client later, e.g. NOTIFY_CONSUMER_IDS_CHANGED to a consumer that sent a HEARTBEAT.
    """

    def __init__(
        self, stream: trio.abc.Stream, address: str, frame_bytes_max: int = FRAME_BYTES_MAX
    ) -> None:
        self.address = address
        self.frame_bytes_max = frame_bytes_max
        self.closed = False
        self._closed_event = trio.Event()
        self._input_closed = trio.Event()
        self._stream = stream
        self._writer = CoalescingWriter(
            stream.send_all,
            trio.BrokenResourceError,
            inline_bytes_max=BODY_INLINE_BYTES_MAX,
            gather=True,
        )
        self._oneway_ids = itertools.count(1)

    async def wait_closed(self) -> None:
        """Return once the connection is closed: whoever keeps state per connection
        (the broker's consumer groups) learns that the client went away."""
        await self._closed_event.wait()

    async def wait_input_closed(self) -> None:
        """Return once nothing more will be read from the client (it hung up, or the
        connection broke), which can be well before `wait_closed`: requests already read
        may still be running. Whoever holds a request back for the client (a long poll)
        learns here that it is gone."""
        await self._input_closed.wait()

    def _mark_closed(self) -> None:
        self.closed = True
        self._closed_event.set()

    async def send(self, frame: Frame) -> None:
        """Write one whole frame. Frames never interleave; frames sent while a write is
        under way share the next write (mq/rpc/writer.py).

        Raises ProtocolError (frame too large) before writing anything, and
        trio.BrokenResourceError / trio.ClosedResourceError if the connection is gone.
        """
        head = encode_frame_head(frame, frame_bytes_max=self.frame_bytes_max)
        await self._writer.write(head, frame.body)

    async def send_oneway(self, frame: Frame) -> None:
        """Push a request the client will not answer (server-initiated notifications)."""
        flags = (int(frame.flags) | FLAG_ONEWAY) & ~FLAG_RESPONSE
        await self.send(replace(frame, request_id=next(self._oneway_ids), flags=flags))


Handler = Callable[[Frame, Peer], Awaitable[Frame | None]]
"""Answers one request. Returns the response, or None to send nothing; the return value
of a one-way request is dropped. An exception becomes a SYSTEM_ERROR response."""

InlineHandler = Callable[[Frame, Peer], bool]
"""Takes a one-way request on the reading task itself, in arrival order, if it can be
done without waiting (True: done; False: hand it to `Handler` as usual). Saves a task
per frame where that is most of the cost (a broker's Raft messages)."""


class _Unsent:
    """Response bytes of one connection made but not written yet. A client that stops
    reading (or reads slowly) while it asks for big answers would otherwise have each of
    its in-flight requests hold a whole response in our memory."""

    def __init__(self) -> None:
        self.bytes = 0
        self._drained = trio.Event()

    def sent(self, size: int) -> None:
        self.bytes -= size
        self._drained.set()

    async def wait_below(self, limit: int) -> None:
        while self.bytes > limit:
            self._drained = trio.Event()
            await self._drained.wait()


AdmitOverLimit = Callable[[Frame], bool]
"""Whether a connection over the server's limits is admitted anyway, by its first frame."""


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    address: str = "?",
    in_flight_max: int = IN_FLIGHT_MAX_DEFAULT,
    frame_bytes_max: int = FRAME_BYTES_MAX,
    inline: InlineHandler | None = None,
    decoder: FrameDecoder | None = None,
    unsent_bytes_max: int = UNSENT_BYTES_MAX_DEFAULT,
) -> None:
    """Serve requests arriving on `stream` until the peer hangs up, then close it.

    On a clean EOF the requests already read still run and are answered (a client may send
    one-way frames and leave). On a broken connection or a framing error the in-flight
    handlers are cancelled; for a framing error the peer gets an error frame first when
    the offending request can be named. A `decoder` given may hold bytes already read
    from the stream; their frames are served first.
    """
    assert in_flight_max > 0
    log = _log.bind(peer=address)
    peer = Peer(stream, address, frame_bytes_max)
    if decoder is None:
        decoder = FrameDecoder(frame_bytes_max)
    slots = trio.Semaphore(in_flight_max)
    unsent = _Unsent()
    error_response: Frame | None = None

    async def serve_one(request: Frame) -> None:
        try:
            response = await _call_handler(handler, request, peer, log)
            if response is not None and not request.is_oneway:
                size = len(response.body)
                unsent.bytes += size
                try:
                    await _send_response(peer, request, response, log)
                finally:
                    unsent.sent(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer left; nobody to answer
        finally:
            slots.release()

    try:
        async with trio.open_nursery() as nursery:
            try:
                while True:  # frames first: a given decoder may hold some already
                    while (frame := decoder.next_frame()) is not None:
                        if frame.is_response:
                            log.debug("unexpected_response_dropped", code=code_name(frame.code))
                            continue
                        if (
                            inline is not None
                            and frame.is_oneway
                            and _call_inline(inline, frame, peer, log)
                        ):
                            continue
                        if unsent.bytes > unsent_bytes_max:
                            await unsent.wait_below(unsent_bytes_max)
                        await slots.acquire()
                        nursery.start_soon(serve_one, frame)
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        if decoder.buffered_bytes:
                            log.info("peer_closed_mid_frame", buffered_bytes=decoder.buffered_bytes)
                        break
                    decoder.receive_data(data)
            except ProtocolError as exc:
                log.warning("protocol_error", error=exc.error.name, detail=str(exc))
                error_response = exc.error_response()
                nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("connection_broken", detail=str(exc))
                nursery.cancel_scope.cancel()
            finally:
                peer._input_closed.set()
        if error_response is not None:
            with trio.move_on_after(ERROR_SEND_TIMEOUT_S):
                try:
                    await peer.send(error_response)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
    finally:
        peer._mark_closed()
        await trio.aclose_forcefully(stream)


async def _call_handler(
    handler: Handler, request: Frame, peer: Peer, log: structlog.typing.FilteringBoundLogger
) -> Frame | None:
    try:
        return await handler(request, peer)
    except Exception as exc:
        # A bug in one handler must cost one request, not the connection or the server.
        log.exception("handler_failed", code=code_name(request.code))
        return request.make_error(ErrorCode.SYSTEM_ERROR, f"{type(exc).__name__}: {exc}")


def _call_inline(
    inline: InlineHandler, request: Frame, peer: Peer, log: structlog.typing.FilteringBoundLogger
) -> bool:
    try:
        return inline(request, peer)
    except Exception:
        # As for a handler: a bug costs this (one-way, so unanswered) request only.
        log.exception("handler_failed", code=code_name(request.code))
        return True


async def _send_response(
    peer: Peer, request: Frame, response: Frame, log: structlog.typing.FilteringBoundLogger
) -> None:
    """Send `response`, or an error in its place if it cannot be encoded (too large, or
    fields that are not plain data): the requester must not wait for a timeout."""
    response = replace(
        response,
        request_id=request.request_id,
        flags=(int(response.flags) | FLAG_RESPONSE) & ~FLAG_ONEWAY,
    )
    try:
        await peer.send(response)
    except ProtocolError as exc:
        log.error("response_not_sent", code=code_name(request.code), detail=str(exc))
        await peer.send(request.make_error(exc.error, str(exc)))
    except ValueError as exc:
        log.error("response_not_sent", code=code_name(request.code), detail=str(exc))
        await peer.send(request.make_error(ErrorCode.SYSTEM_ERROR, f"bad response: {exc}"))


async def serve_tcp(
    handler: Handler,
    host: str,
    port: int,
    *,
    connections_max: int = CONNECTIONS_MAX_DEFAULT,
    in_flight_max: int = IN_FLIGHT_MAX_DEFAULT,
    frame_bytes_max: int = FRAME_BYTES_MAX,
    inline: InlineHandler | None = None,
    admit_over_limit: AdmitOverLimit | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (port 0 picks a free one) and serve every connection with
    `handler` until cancelled. `task_status.started` reports the listeners, so a caller
    using `nursery.start` learns the bound port.

    A connection is over the limit when `connections_max` are open or when it would
    leave the process short of file descriptors (see FD_RESERVE_MIN). Up to
    PROBATION_MAX such connections at a time are read until their first frame: one that
    `admit_over_limit` accepts is served (a broker admits its peers' Raft traffic this
    way), a request is answered with SYSTEM_BUSY, and the connection is closed.
    """
    limits = _Limits(connections_max)
    refused = _RefusalLog()

    async def on_connection(stream: trio.SocketStream) -> None:
        address = _peer_address(stream)
        decoder = None
        over = limits.over(stream)
        if over is not None:
            scope = trio.CancelScope(deadline=trio.current_time() + PROBATION_S)
            if len(limits.probation) >= PROBATION_MAX:
                limits.probation.popleft().cancel()
            limits.probation.append(scope)
            try:
                decoder = await _admit(stream, admit_over_limit, frame_bytes_max, over, scope)
            finally:
                with contextlib.suppress(ValueError):
                    limits.probation.remove(scope)
            if decoder is None:
                refused.note(address, over)
                return
        limits.active += 1
        try:
            await serve_connection(
                stream,
                handler,
                address=address,
                in_flight_max=in_flight_max,
                frame_bytes_max=frame_bytes_max,
                inline=inline,
                decoder=decoder,
            )
        except Exception:
            _log.exception("connection_failed", peer=address)
        finally:
            limits.active -= 1

    await trio.serve_tcp(on_connection, port, host=host, task_status=task_status)


class _Limits:
    """What a server holds against its limits: connections served, and over-limit ones
    being read for their first frame."""

    def __init__(self, connections_max: int) -> None:
        self.connections_max = connections_max
        self.active = 0
        self.probation: collections.deque[trio.CancelScope] = collections.deque()

    def over(self, stream: trio.SocketStream) -> str | None:
        """Why this new connection is over the limit, or None."""
        if self.active >= self.connections_max:
            return f"{self.active} connections open, the limit is {self.connections_max}"
        # Read each time (one system call per connection): the limit may be changed
        # while we run (prlimit).
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return None
        reserve = max(FD_RESERVE_MIN, soft // 8)
        # A new descriptor is the lowest free one: every one below it is in use.
        fd = stream.socket.fileno()
        if soft - fd <= reserve:
            return (
                f"file descriptor {fd} of {soft} (ulimit -n), the last {reserve} are kept for files"
            )
        return None


async def _admit(
    stream: trio.SocketStream,
    admit: AdmitOverLimit | None,
    frame_bytes_max: int,
    why: str,
    scope: trio.CancelScope,
) -> FrameDecoder | None:
    """Read an over-limit connection's first frame (until `scope` ends). Admitted: a
    decoder holding every byte read so far, to serve it from. Else None, the stream
    closed and a request answered with SYSTEM_BUSY first."""
    decoder = FrameDecoder(frame_bytes_max)
    received = bytearray()
    first: Frame | None = None
    try:
        with scope:
            while first is None:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                received += data
                decoder.receive_data(data)
                first = decoder.next_frame()
        if first is not None and admit is not None and admit(first):
            admitted = FrameDecoder(frame_bytes_max)
            admitted.receive_data(received)
            return admitted
        if first is not None and not first.is_oneway and not first.is_response:
            busy = first.make_error(ErrorCode.SYSTEM_BUSY, f"too many connections: {why}")
            with trio.move_on_after(ERROR_SEND_TIMEOUT_S):
                await Peer(stream, "?", frame_bytes_max).send(busy)
    except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await trio.aclose_forcefully(stream)
    return None


class _RefusalLog:
    """Logs refused connections without flooding the log: the first at once, then a
    count at most every REFUSED_LOG_INTERVAL_S."""

    def __init__(self) -> None:
        self._unlogged = 0
        self._next_log = float("-inf")

    def note(self, address: str, why: str) -> None:
        self._unlogged += 1
        now = trio.current_time()
        if now >= self._next_log:
            _log.warning("connections_refused", count=self._unlogged, last_peer=address, why=why)
            self._unlogged = 0
            self._next_log = now + REFUSED_LOG_INTERVAL_S


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit, as a server
    needs (one descriptor per connection, and a broker one per ConsumeQueue file); the
    (soft, hard) limits it runs with. Go does the same at start; a soft limit of 1024,
    common by default, is less than a busy broker holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. a hard limit the kernel caps lower: keep what we have
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_LOW:
        _log.warning("open_files_limit_low", soft=soft, hard=hard, advice="raise ulimit -n")
    return soft, hard


def listener_port(listeners: list[trio.SocketListener]) -> int:
    """The port the first listener is bound to (what port 0 turned into)."""
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return format_address(name[0], name[1])
