"""Client library: producers, consumers, admin, and their blocking facade.

Async first (anyio: runs under trio and asyncio); `mq.client.blocking` wraps the same
objects for threaded code.
"""

from mq.client.admin import Admin, BrokerStatus, ConsumerGroupInfo, GroupDescription, QueueLag
from mq.client.errors import (
    BrokerError,
    ClientClosedError,
    MQClientError,
    MQConnectionError,
    MQTimeoutError,
    NoRouteError,
    NotLeaderError,
    OffsetsFileInUseError,
    SendError,
    SendTimeoutError,
)
from mq.client.fault import LatencyFaultTolerance
from mq.client.producer import Producer, SendCallback, SendFuture, SendResult, SendStatus
from mq.client.pull_consumer import PullConsumer, PullResult, PullStatus, TagFilter
from mq.client.push_consumer import (
    AssignmentListener,
    ConsumeFrom,
    ConsumeResult,
    Delivery,
    Handler,
    MessageModel,
    PushConsumer,
)
from mq.client.queues import MessageQueue, MessageQueueSelector, SelectByHash
from mq.client.rebalance import (
    AllocateAveragely,
    AllocateAveragelyByCircle,
    AllocateByConfig,
    AllocateConsistentHash,
    AllocateStrategy,
)
from mq.message import Message, MessageExt

__all__ = [
    "Admin",
    "AllocateAveragely",
    "AllocateAveragelyByCircle",
    "AllocateByConfig",
    "AllocateConsistentHash",
    "AllocateStrategy",
    "AssignmentListener",
    "BrokerError",
    "BrokerStatus",
    "ClientClosedError",
    "ConsumeFrom",
    "ConsumeResult",
    "ConsumerGroupInfo",
    "Delivery",
    "GroupDescription",
    "Handler",
    "LatencyFaultTolerance",
    "MQClientError",
    "MQConnectionError",
    "MQTimeoutError",
    "Message",
    "MessageExt",
    "MessageModel",
    "MessageQueue",
    "MessageQueueSelector",
    "NoRouteError",
    "NotLeaderError",
    "OffsetsFileInUseError",
    "Producer",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "PushConsumer",
    "QueueLag",
    "SelectByHash",
    "SendCallback",
    "SendError",
    "SendFuture",
    "SendResult",
    "SendStatus",
    "SendTimeoutError",
    "TagFilter",
]
