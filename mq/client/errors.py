"""What the client raises, so applications can tell "retry later" from "fix your code".

Everything derives from `MQClientError`. Transport failures (`mq.rpc.errors`) never leak
out of the client unwrapped: a send that failed after its retries raises `SendError`
(its `__cause__` is the last failure), a request that timed out raises `MQTimeoutError`,
and an error answer from a broker that is not about a send raises `BrokerError`.
Invalid input (bad topic, oversized body) raises `ValueError`/`TypeError` before
anything is sent.
"""

from __future__ import annotations

from mq.protocol import ErrorCode, error_name


class MQClientError(Exception):
    """Base of every error the client raises on its own account."""


class ClientClosedError(MQClientError):
    """The client object is not started (use `async with`) or already closed."""


class NoRouteError(MQClientError):
    """No NameServer knows the topic, none could be reached, or no group of the topic
    can take the request right now (no writable queue, no known leader)."""


class BrokerError(MQClientError):
    """A broker answered with an error. `code` is the `ErrorCode` (or the raw int when
    we do not know it), `remark` the broker's explanation, `address` who said it."""

    def __init__(self, code: int, remark: str = "", *, address: str = "") -> None:
        self.code: ErrorCode | int
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = code
        self.remark = remark
        self.address = address
        where = f" from {address}" if address else ""
        super().__init__(f"{error_name(code)}{where}" + (f": {remark}" if remark else ""))


class NotLeaderError(BrokerError):
    """A node that is not its group's leader refused a write. `leader` is the leader it
    named ("host:port") or None during an election. The producer handles this itself
    (it retries at the named leader); it surfaces only inside `SendError.__cause__`."""

    def __init__(
        self, remark: str = "", *, address: str = "", leader: str | None, group: str
    ) -> None:
        super().__init__(ErrorCode.NOT_LEADER, remark, address=address)
        self.leader = leader
        self.group = group


class MQTimeoutError(MQClientError, TimeoutError):
    """A request got no answer in time. The request may still take effect (a send that
    timed out may be stored; its retry carries the same ids and sequence number)."""


class MQConnectionError(MQClientError, ConnectionError):
    """A node could not be reached, or the connection broke mid-request."""


class SendError(MQClientError):
    """A send failed for good: retries exhausted, or an error that no retry can fix.

    `code` is the broker's last `ErrorCode` when a broker answered (None when the last
    failure was a timeout or a connection error: see `__cause__`; a final timeout raises
    the subclass `SendTimeoutError`); `attempts` is how many
    requests were made. The messages were not acknowledged, but may have been stored
    (after a timeout): their `msg_ids` let a consumer recognise them.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | int | None = None,
        attempts: int = 0,
        msg_ids: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.attempts = attempts
        self.msg_ids = msg_ids


class SendTimeoutError(SendError, MQTimeoutError):
    """A send whose last attempt timed out: both a `SendError` and a `TimeoutError`.
    The batch may be stored; a later retry by the application would be a new batch
    (new sequence number), so consumers should be ready to see it twice."""


class OffsetsFileInUseError(MQClientError):
    """Another live broadcasting member of the group on this host has the same
    offsets file (the same `instance_name`): raised by `PushConsumer.start`."""
