"""Client library: producers, consumers, admin, and their blocking facade.

Async first (anyio: runs under trio and asyncio); `mq.client.blocking` wraps the same
objects for threaded code.
"""

from mq.client.admin import Admin, BrokerStatus
from mq.client.errors import (
    BrokerError,
    ClientClosedError,
    MQClientError,
    MQConnectionError,
    MQTimeoutError,
    NoRouteError,
    NotLeaderError,
    SendError,
    SendTimeoutError,
)
from mq.client.fault import LatencyFaultTolerance
from mq.client.producer import Producer, SendCallback, SendFuture, SendResult, SendStatus
from mq.client.pull_consumer import PullConsumer, PullResult, PullStatus, TagFilter
from mq.client.queues import MessageQueue, MessageQueueSelector, SelectByHash
from mq.message import Message, MessageExt

__all__ = [
    "Admin",
    "BrokerError",
    "BrokerStatus",
    "ClientClosedError",
    "LatencyFaultTolerance",
    "MQClientError",
    "MQConnectionError",
    "MQTimeoutError",
    "Message",
    "MessageExt",
    "MessageQueue",
    "MessageQueueSelector",
    "NoRouteError",
    "NotLeaderError",
    "Producer",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "SelectByHash",
    "SendCallback",
    "SendError",
    "SendFuture",
    "SendResult",
    "SendStatus",
    "SendTimeoutError",
    "TagFilter",
]
