"""What can go wrong on a connection, as exceptions a caller can tell apart."""

from __future__ import annotations

from mq.protocol import ErrorCode, Frame, error_name


class TransportError(Exception):
    """Base of every failure raised by `mq.rpc`."""


class ConnectError(TransportError, ConnectionError):
    """The TCP connection could not be opened (refused, unreachable, timed out)."""


class ConnectionClosedError(TransportError, ConnectionError):
    """The connection is gone: closed by either side, reset, or failed by a protocol
    error. A request that was in flight may or may not have been executed."""


class RequestTimeoutError(TransportError, TimeoutError):
    """No response arrived within the timeout. The request may still execute; a late
    response is dropped."""


class RemoteError(TransportError):
    """The peer answered with an error code. `response` is the whole error frame."""

    def __init__(self, error: int, remark: str = "", response: Frame | None = None) -> None:
        super().__init__(f"{error_name(error)}: {remark}" if remark else error_name(error))
        self.error = error
        self.remark = remark
        self.response = response

    @property
    def code(self) -> ErrorCode | int:
        """The error as an `ErrorCode` when we know it, else the raw int."""
        try:
            return ErrorCode(self.error)
        except ValueError:
            return self.error
