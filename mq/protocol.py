"""The wire protocol: length-prefixed frames with a small CBOR header and a raw body.

Sans-IO in the manner of h11: `FrameDecoder` is fed whatever bytes the socket produced
(`receive_data`) and hands back complete frames (`next_frame`); `encode_frame` turns a
frame into bytes. Nothing here touches a socket, a clock or an event loop, so servers
(trio), clients (anyio on trio or asyncio) and the simulator all share it, and its tests
need no network.

Frame layout (all integers big-endian)::

    u32 total_bytes      length of everything after this field (4 + header_bytes + body)
    u32 header_bytes     length of the CBOR header that follows
    header               CBOR map with small-int keys, see `HeaderKey`
    body                 raw bytes, total_bytes - 4 - header_bytes of them

The header carries everything structured; the body is opaque (message payloads, record
batches straight from the CommitLog) and is never re-encoded, so a broker can forward
stored bytes without parsing them. `total_bytes` may not exceed `frame_bytes_max`
(default `FRAME_BYTES_MAX`, 16 MiB): a reader must know how much memory a peer can make it
hold before it reads a single header.

Header map (keys are ints to keep the per-frame overhead to a few bytes; a key whose
value is the default is omitted on the wire):

    0 code        int   RequestCode of the request; a response echoes its request's code
    1 request_id  int   chosen by the requester (0 <= id < 2**64), echoed by the response
    2 flags       int   bit 0 RESPONSE, bit 1 ONEWAY (no response is sent); default 0
    3 fields      map   request or response parameters (str or int keys, plain values)
    4 error       int   ErrorCode of a response; default 0 (SUCCESS)
    5 remark      str   human-readable detail of an error; default ""

Unknown header keys and unknown flag bits are ignored, so later versions can add them.
Field values are restricted to plain data (None, bool, int, float, str, bytes, lists and
maps of those, nested at most `FIELDS_DEPTH_MAX` deep): CBOR tags (dates, regexes, shared
references, ...) are refused, so a peer cannot make us build arbitrary Python objects.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, TypeAlias, TypeGuard

import cbor2

FRAME_BYTES_MAX = 16 * 1024 * 1024
"""Default bound on `total_bytes`: a frame's header plus body plus 4."""

HEADER_PEEK_BYTES_MAX = 64 * 1024
"""An oversized frame's header is still read (to learn which request to fail) when it is
at most this long; longer ones fail the connection without naming the request."""

FIELDS_DEPTH_MAX = 16
"""How deeply lists and maps may nest in `fields`; bounds decoder recursion."""

REQUEST_ID_MAX = 2**64 - 1
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

_PREFIX = struct.Struct(">II")
PREFIX_BYTES = _PREFIX.size

Body: TypeAlias = bytes | bytearray | memoryview
Fields: TypeAlias = Mapping[Any, Any]
"""A frame's fields: str or int keys, plain values (checked by the codec, not the type)."""


class RequestCode(IntEnum):
    """What a request asks for. Numbers are grouped by the component that serves them and
    are part of the wire format: never renumber, only add."""

    PING = 1

    # Producer and consumer data path (broker).
    SEND_MESSAGE = 10
    SEND_BATCH = 11
    PULL_MESSAGE = 12
    QUERY_MESSAGE = 13
    VIEW_MESSAGE_BY_ID = 14
    CONSUMER_SEND_MSG_BACK = 15
    END_TRANSACTION = 16
    CHECK_TRANSACTION_STATE = 17

    # Offsets (broker).
    UPDATE_CONSUMER_OFFSET = 20
    QUERY_CONSUMER_OFFSET = 21
    SEARCH_OFFSET_BY_TIMESTAMP = 22
    GET_MIN_OFFSET = 23
    GET_MAX_OFFSET = 24
    RESET_CONSUMER_OFFSET = 25

    # Consumer groups (broker).
    HEARTBEAT = 30
    UNREGISTER_CLIENT = 31
    GET_CONSUMER_LIST = 32
    NOTIFY_CONSUMER_IDS_CHANGED = 33
    GET_CONSUMER_GROUPS = 34

    # Administration (broker, and the NameServer for the cluster-wide views).
    CREATE_TOPIC = 40
    DELETE_TOPIC = 41
    GET_ALL_TOPICS = 42
    GET_CLUSTER_INFO = 43
    GET_BROKER_STATUS = 44

    # NameServer.
    REGISTER_BROKER = 50
    UNREGISTER_BROKER = 51
    GET_ROUTE = 52

    # Between the replicas of one broker group.
    RAFT_MESSAGE = 60


class ErrorCode(IntEnum):
    """The outcome of a request, carried by its response. Part of the wire format."""

    SUCCESS = 0

    # Generic failures.
    SYSTEM_ERROR = 1
    SYSTEM_BUSY = 2
    REQUEST_CODE_NOT_SUPPORTED = 3
    MALFORMED_FRAME = 4
    FRAME_TOO_LARGE = 5
    INVALID_REQUEST = 6
    SERVICE_NOT_AVAILABLE = 7
    NO_PERMISSION = 8

    # Topics and routes.
    TOPIC_NOT_EXIST = 10
    INVALID_TOPIC = 11
    NO_ROUTE = 12

    # Writes.
    MESSAGE_TOO_LARGE = 20
    NOT_LEADER = 21
    FLUSH_TIMEOUT = 22
    REPLICATION_TIMEOUT = 23

    # Reads.
    PULL_NOT_FOUND = 30
    PULL_OFFSET_MOVED = 31
    PULL_RETRY_IMMEDIATELY = 32
    QUERY_NOT_FOUND = 33

    # Consumer groups.
    SUBSCRIPTION_NOT_EXIST = 40
    CONSUMER_NOT_ONLINE = 41


class Flag(IntFlag):
    RESPONSE = 1
    ONEWAY = 2


# Flag's bits as plain ints, for per-frame flag arithmetic: an operation with a Flag
# operand goes through IntFlag and builds an enum member, about 2 µs each, several
# times per frame in every process.
FLAG_RESPONSE = int(Flag.RESPONSE)
FLAG_ONEWAY = int(Flag.ONEWAY)


class HeaderKey(IntEnum):
    CODE = 0
    REQUEST_ID = 1
    FLAGS = 2
    FIELDS = 3
    ERROR = 4
    REMARK = 5


# Plain-int copies for the hot path: cbor2 and dict lookups are faster with exact ints.
_CODE, _REQUEST_ID, _FLAGS, _FIELDS, _ERROR, _REMARK = (int(key) for key in HeaderKey)


def code_name(code: int) -> str:
    """A request code's name for logs and remarks, tolerating codes we do not know."""
    try:
        return RequestCode(code).name
    except ValueError:
        return str(code)


def error_name(error: int) -> str:
    try:
        return ErrorCode(error).name
    except ValueError:
        return str(error)


class ProtocolError(Exception):
    """The byte stream broke the framing rules; the connection cannot continue.

    `request_id` is set when the offending frame's header was readable and it was a
    request expecting an answer: the receiver can then reply with an error frame before
    closing, so the requester learns why instead of seeing a bare disconnect.
    """

    def __init__(
        self,
        error: ErrorCode,
        message: str,
        *,
        request_id: int | None = None,
        request_code: int = 0,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.request_id = request_id
        self.request_code = request_code

    def error_response(self) -> Frame | None:
        """The error frame to send back before closing, if the request can be named."""
        if self.request_id is None:
            return None
        return Frame(
            code=self.request_code,
            request_id=self.request_id,
            flags=Flag.RESPONSE,
            error=self.error,
            remark=str(self),
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One request or response. `code` is a `RequestCode` value (kept as a plain int so a
    peer speaking a newer version gets REQUEST_CODE_NOT_SUPPORTED, not a decode failure)."""

    code: int
    request_id: int = 0
    flags: int = 0
    fields: Fields = field(default_factory=dict)
    body: Body = b""
    error: int = ErrorCode.SUCCESS
    remark: str = ""

    @property
    def is_response(self) -> bool:
        return bool(int(self.flags) & FLAG_RESPONSE)

    @property
    def is_oneway(self) -> bool:
        return bool(int(self.flags) & FLAG_ONEWAY)

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.SUCCESS

    def make_response(
        self,
        fields: Fields | None = None,
        body: Body = b"",
        *,
        error: int = ErrorCode.SUCCESS,
        remark: str = "",
    ) -> Frame:
        """The response to this request: same code and request id, RESPONSE flag set."""
        return Frame(
            code=self.code,
            request_id=self.request_id,
            flags=Flag.RESPONSE,
            fields=fields if fields is not None else {},
            body=body,
            error=error,
            remark=remark,
        )

    def make_error(self, error: int, remark: str = "") -> Frame:
        return self.make_response(error=error, remark=remark)


def request(
    code: int, fields: Fields | None = None, body: Body = b"", *, oneway: bool = False
) -> Frame:
    """A request frame; the connection that sends it assigns the request id."""
    return Frame(
        code=code,
        flags=Flag.ONEWAY if oneway else 0,
        fields=fields if fields is not None else {},
        body=body,
    )


# --- encoding -------------------------------------------------------------------------


def encode_frame_head(frame: Frame, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Length prefix and header of `frame`; the caller sends `frame.body` right after.

    Lets a large body (a pull result read from the CommitLog) go to the socket without
    being copied into one buffer with the header.
    """
    _check_frame(frame)
    header: dict[int, Any] = {_CODE: int(frame.code), _REQUEST_ID: frame.request_id}
    if frame.flags:
        header[_FLAGS] = int(frame.flags)
    if frame.fields:
        header[_FIELDS] = frame.fields
    if frame.error:
        header[_ERROR] = int(frame.error)
    if frame.remark:
        header[_REMARK] = frame.remark
    encoded = cbor2.dumps(header)
    total_bytes = 4 + len(encoded) + len(frame.body)
    if total_bytes > frame_bytes_max:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {total_bytes} bytes exceeds the limit of {frame_bytes_max}",
            request_id=None if frame.is_response or frame.is_oneway else frame.request_id,
            request_code=frame.code,
        )
    return _PREFIX.pack(total_bytes, len(encoded)) + encoded


def encode_frame(frame: Frame, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """The whole frame as one buffer."""
    head = encode_frame_head(frame, frame_bytes_max=frame_bytes_max)
    return head + frame.body if frame.body else head


def _check_frame(frame: Frame) -> None:
    """Refuse to send what a peer's decoder would refuse to read: errors surface at the
    sender, where the bug is, instead of killing the receiver's connection."""
    if not (isinstance(frame.code, int) and INT_MIN <= frame.code <= INT_MAX):
        raise ValueError(f"code must be an int, got {frame.code!r}")
    if not (isinstance(frame.request_id, int) and 0 <= frame.request_id <= REQUEST_ID_MAX):
        raise ValueError(f"request_id out of range: {frame.request_id!r}")
    if not (isinstance(frame.flags, int) and 0 <= frame.flags <= INT_MAX):
        raise ValueError(f"flags out of range: {frame.flags!r}")
    if frame.is_response and frame.is_oneway:
        raise ValueError("a frame cannot be both a response and one-way")
    if not (isinstance(frame.error, int) and INT_MIN <= frame.error <= INT_MAX):
        raise ValueError(f"error must be an int, got {frame.error!r}")
    if not isinstance(frame.remark, str):
        raise ValueError(f"remark must be a str, got {type(frame.remark).__name__}")
    problem = _fields_problem(frame.fields, 0)
    if problem is not None:
        raise ValueError(f"fields: {problem}")


_SCALAR_TYPES = frozenset({type(None), bool, float, str, bytes})


def _fields_problem(value: Any, depth: int) -> str | None:
    """Why `value` is not plain data we put on the wire, or None if it is.

    On every frame in both directions, so exact-type checks come first; subclasses
    (IntEnum, StrEnum, OrderedDict...) take the slower isinstance path.
    """
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return None
    if kind is int:
        return None if INT_MIN <= value <= INT_MAX else f"int out of range: {value}"
    if depth >= FIELDS_DEPTH_MAX:
        return f"nested deeper than {FIELDS_DEPTH_MAX}"
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        for key, item in value.items():
            if type(key) is not str and _key_problem(key) is not None:
                return _key_problem(key)
            if type(item) not in _SCALAR_TYPES:
                problem = _fields_problem(item, depth + 1)
                if problem is not None:
                    return problem
        return None
    if kind is list or isinstance(value, list | tuple):
        for item in value:
            if type(item) not in _SCALAR_TYPES:
                problem = _fields_problem(item, depth + 1)
                if problem is not None:
                    return problem
        return None
    if isinstance(value, bool | float | str | bytes):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= INT_MAX else f"int out of range: {value}"
    return f"value of type {kind.__name__}"


def _key_problem(key: object) -> str | None:
    if isinstance(key, str) or (
        isinstance(key, int) and not isinstance(key, bool) and INT_MIN <= key <= INT_MAX
    ):
        return None
    return f"map key of type {type(key).__name__}"


# --- decoding -------------------------------------------------------------------------


class FrameDecoder:
    """Turns a byte stream into frames; feed it with `receive_data`, drain `next_frame`.

    After it raises `ProtocolError` the stream is unusable (we no longer know where the
    next frame starts): every later call raises the same error.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        if frame_bytes_max < PREFIX_BYTES:
            raise ValueError(f"frame_bytes_max must be at least {PREFIX_BYTES}")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames: non-zero at EOF means the peer
        hung up in the middle of a frame."""
        return len(self._buffer)

    def receive_data(self, data: Body) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except ProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            raise

    def _next_frame(self) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < PREFIX_BYTES:
            return None
        total_bytes, header_bytes = _PREFIX.unpack_from(buffer)
        if header_bytes < 1 or header_bytes > total_bytes - 4:
            raise ProtocolError(
                ErrorCode.MALFORMED_FRAME,
                f"header length {header_bytes} does not fit a frame of {total_bytes} bytes",
            )
        if total_bytes > self.frame_bytes_max:
            self._refuse_oversized(total_bytes, header_bytes)
            return None  # its header has not fully arrived yet
        end = 4 + total_bytes
        if len(buffer) < end:
            return None
        header_end = PREFIX_BYTES + header_bytes
        with memoryview(buffer) as view:
            header = _decode_header(view[PREFIX_BYTES:header_end])
            body = bytes(view[header_end:end])
        del buffer[:end]
        return _frame_from_header(header, body)

    def _refuse_oversized(self, total_bytes: int, header_bytes: int) -> None:
        """Fail an oversized frame, naming its request when its header is small enough
        to read (so a producer sending a too-large message gets FRAME_TOO_LARGE back).
        Returns only while that header is still arriving."""
        message = f"frame of {total_bytes} bytes exceeds the limit of {self.frame_bytes_max}"
        if header_bytes > HEADER_PEEK_BYTES_MAX:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, message)
        header_end = PREFIX_BYTES + header_bytes
        if len(self._buffer) < header_end:
            return None
        try:
            with memoryview(self._buffer) as view:
                frame = _frame_from_header(_decode_header(view[PREFIX_BYTES:header_end]), b"")
        except ProtocolError:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, message) from None
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            message,
            request_id=_answerable_id(frame),
            request_code=frame.code,
        )


def decode_frame(data: Body, *, frame_bytes_max: int = FRAME_BYTES_MAX) -> Frame:
    """Decode exactly one frame from `data` (tests, the simulator, datagram-like uses)."""
    decoder = FrameDecoder(frame_bytes_max)
    decoder.receive_data(data)
    frame = decoder.next_frame()
    if frame is None or decoder.buffered_bytes:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "data is not exactly one frame")
    return frame


def _answerable_id(frame: Frame) -> int | None:
    return None if frame.is_response or frame.is_oneway else frame.request_id


def _decode_header(data: memoryview) -> dict[Any, Any]:
    try:
        header = cbor2.loads(data)
    except Exception as exc:
        # cbor2 signals bad input with several exception types (CBORDecodeError,
        # ValueError from semantic tags, RecursionError, MemoryError...): all of them
        # mean the same thing to us.
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME, f"header is not valid CBOR: {type(exc).__name__}"
        ) from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "header is not a CBOR map")
    return header


def _frame_from_header(header: dict[Any, Any], body: bytes) -> Frame:
    code = header.get(_CODE)
    request_id = header.get(_REQUEST_ID)
    if not _is_int(code, INT_MIN, INT_MAX):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "header has no integer code")
    if not _is_int(request_id, 0, REQUEST_ID_MAX):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "header has no valid request id")
    flags = header.get(_FLAGS, 0)
    if not _is_int(flags, 0, INT_MAX):
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "flags is not a non-negative int")
    if flags & FLAG_RESPONSE and flags & FLAG_ONEWAY:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "frame is both a response and one-way")

    def malformed(message: str) -> ProtocolError:
        # From here on the request is identified, so the error can be answered (unless
        # it is a response or one-way: nobody waits for an answer to those).
        answerable = not flags & (FLAG_RESPONSE | FLAG_ONEWAY)
        return ProtocolError(
            ErrorCode.MALFORMED_FRAME,
            message,
            request_id=request_id if answerable else None,
            request_code=code,
        )

    fields = header.get(_FIELDS, {})
    if not isinstance(fields, dict):
        raise malformed("fields is not a map")
    problem = _fields_problem(fields, 0)
    if problem is not None:
        raise malformed(f"fields: {problem}")
    error = header.get(_ERROR, 0)
    if not _is_int(error, INT_MIN, INT_MAX):
        raise malformed("error is not an int")
    remark = header.get(_REMARK, "")
    if not isinstance(remark, str):
        raise malformed("remark is not a string")
    return Frame(
        code=code,
        request_id=request_id,
        flags=flags,
        fields=fields,
        body=body,
        error=error,
        remark=remark,
    )


def _is_int(value: object, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
