"""The message store: CommitLog, ConsumeQueue, IndexFile, flush, recovery, retention."""

from storage.commit_log import CommitLog, RecoveryReport
from storage.errors import (
    CorruptRecordError,
    DiskFullError,
    FrameTooLargeError,
    InvalidTopicError,
    LogLayoutError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    StorageError,
    TooManyWaitersError,
)
from storage.flush import FlushMode, FlushPolicy, GroupCommit
from storage.record import (
    MessageHeader,
    MessageRecord,
    decode_message_header,
    encode_message,
    encode_messages,
    tag_hash,
    validate_topic,
)

__all__ = [
    "CommitLog",
    "CorruptRecordError",
    "DiskFullError",
    "FlushMode",
    "FlushPolicy",
    "FrameTooLargeError",
    "GroupCommit",
    "InvalidTopicError",
    "LogLayoutError",
    "MessageHeader",
    "MessageRecord",
    "MessageTooLargeError",
    "OffsetOutOfRangeError",
    "RecoveryReport",
    "StorageError",
    "TooManyWaitersError",
    "decode_message_header",
    "encode_message",
    "encode_messages",
    "tag_hash",
    "validate_topic",
]
