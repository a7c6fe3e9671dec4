"""The storage layer's exceptions, so callers can tell bad input from bad disks.

Validation errors (`InvalidTopicError`, `MessageTooLargeError`, `FrameTooLargeError`)
are also `ValueError`s: the caller handed us something we refuse to store, and
nothing was written. `CorruptRecordError` means bytes that were (or claim to be) a
frame failed a structural or CRC check; it is raised by decoders and by reads, never
by recovery, which truncates at the first corrupt frame instead. `DiskFullError`
comes from the file layer and is re-exported here so callers need one import.
"""

from __future__ import annotations

from storage.files import DiskFullError

__all__ = [
    "CorruptRecordError",
    "DiskFullError",
    "FrameTooLargeError",
    "InvalidTopicError",
    "LogLayoutError",
    "MessageTooLargeError",
    "OffsetOutOfRangeError",
    "StorageError",
    "TooManyWaitersError",
]


class StorageError(Exception):
    """Base of every error the storage layer raises on its own account."""


class CorruptRecordError(StorageError):
    """A frame or record failed a size, magic, layout or CRC check."""


class MessageTooLargeError(StorageError, ValueError):
    """A message body (or one of its length-prefixed fields) exceeds its limit."""


class FrameTooLargeError(StorageError, ValueError):
    """A frame cannot fit in an empty CommitLog segment, so it can never be appended."""


class InvalidTopicError(StorageError, ValueError):
    """A topic name breaks the naming rule (letters, digits, `_ - % |`; 1..127 chars)."""


class OffsetOutOfRangeError(StorageError, IndexError):
    """A physical offset or range lies outside what the log currently holds."""


class LogLayoutError(StorageError):
    """The segment files on disk do not form one contiguous log of the configured size.

    Not repairable by truncation (a missing middle segment would silently drop
    acknowledged data), so it is raised at open for an operator to look at.
    """


class TooManyWaitersError(StorageError):
    """Group commit refuses a new waiter: its bounded queue is full (back-pressure)."""
