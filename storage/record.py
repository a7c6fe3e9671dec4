"""CommitLog frames and the message record codec.

Every frame in the CommitLog starts with the same 12-byte little-endian header, so
the log, its recovery scan and the replication layer can walk, validate and skip
frames without knowing what they carry:

    u32 total_size   whole frame, header included
    u32 magic        MAGIC_MESSAGE | MAGIC_ENTRY | MAGIC_BLANK
    u32 crc32        zlib.crc32 of bytes [12, total_size)

A blank filler (MAGIC_BLANK) marks the unused tail of a segment; only its first 8
bytes (size, magic) are written and its CRC is never checked, because the tail it
covers is never written either. The magics differ from one another in every byte,
so no single corrupted byte turns one kind of frame into another.

A message record is a MAGIC_MESSAGE frame whose payload is a fixed part followed by
length-prefixed fields (see FORMAT.md for the byte layout). The queue offset is not
in the record: it is assigned when the committed record is dispatched, so every
replica appends byte-identical records and builds identical ConsumeQueues.

Encoding checks every limit before a byte is produced and computes the CRC over the
finished frame; decoding checks size, magic and CRC before trusting a length, and
checks that the length-prefixed fields tile the frame exactly.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from storage.errors import CorruptRecordError, InvalidTopicError, MessageTooLargeError
from storage.files import Buffer

__all__ = [
    "BLANK_HEADER_BYTES",
    "BORN_HOST_BYTES_MAX",
    "FRAME_HEADER_BYTES",
    "KEYS_BYTES_MAX",
    "MAGIC_BLANK",
    "MAGIC_ENTRY",
    "MAGIC_MESSAGE",
    "MESSAGE_BYTES_MAX",
    "MESSAGE_OVERHEAD_BYTES",
    "MSG_ID_BYTES_MAX",
    "PROPERTIES_BYTES_MAX",
    "TAGS_BYTES_MAX",
    "TOPIC_BYTES_MAX",
    "MessageHeader",
    "MessageRecord",
    "blank_header",
    "check_frame",
    "decode_message_header",
    "decode_properties",
    "dispatch_fields",
    "encode_frame",
    "encode_message",
    "encode_messages",
    "encode_properties",
    "frame_header",
    "frame_size_and_magic",
    "split_keys",
    "stamp_batch",
    "tag_hash",
    "validate_topic",
]

# --------------------------------------------------------------------------- frame layout

MAGIC_MESSAGE = 0xC0DE5A17
MAGIC_ENTRY = 0xE7A13C42
MAGIC_BLANK = 0x9B6FE5D3

FRAME_HEADER_BYTES = 12
"""size + magic + crc; the smallest non-blank frame is exactly this long."""
BLANK_HEADER_BYTES = 8
"""size + magic; what is written for a blank filler."""

_SIZE_MAGIC = struct.Struct("<II")
_HEADER = struct.Struct("<III")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")

assert _HEADER.size == FRAME_HEADER_BYTES and _SIZE_MAGIC.size == BLANK_HEADER_BYTES

# --------------------------------------------------------------------------- record limits

MESSAGE_BYTES_MAX = 4 * 1024 * 1024
"""Default limit on a message body, bytes; callers may pass their own `message_bytes_max`."""
TOPIC_BYTES_MAX = 127
MSG_ID_BYTES_MAX = 255
BORN_HOST_BYTES_MAX = 255
TAGS_BYTES_MAX = 0xFFFF
KEYS_BYTES_MAX = 0xFFFF
PROPERTIES_BYTES_MAX = 0xFFFF
"""Properties are small routing/metadata strings; a bound keeps a record's header cheap."""

# queue_id, flag, born_timestamp_ms, store_timestamp_ms, reconsume_times
_FIXED = struct.Struct("<IIQQI")
_FIXED_OFFSET = FRAME_HEADER_BYTES
_VARIABLE_OFFSET = _FIXED_OFFSET + _FIXED.size  # where msg_id's u8 length sits

MESSAGE_OVERHEAD_BYTES = _VARIABLE_OFFSET + 1 + 1 + 1 + 2 + 2 + 4 + 4
"""Bytes of a message frame that are not field contents: header, fixed part, length prefixes."""

_PROP_KV = "\x01"
_PROP_END = "\x02"


# --------------------------------------------------------------------------- frames


def frame_size_and_magic(view: Buffer) -> tuple[int, int]:
    """(total_size, magic) from the first 8 bytes; no validation. Enough for a blank."""
    size, magic = _SIZE_MAGIC.unpack_from(view, 0)
    return size, magic


def frame_header(view: Buffer) -> tuple[int, int, int]:
    """(total_size, magic, crc) from the first 12 bytes; no validation."""
    size, magic, crc = _HEADER.unpack_from(view, 0)
    return size, magic, crc


def check_frame(view: Buffer) -> tuple[int, int]:
    """Validate the frame that starts at `view[0]` and return (magic, total_size).

    `view` may extend past the frame (e.g. the rest of a segment); the frame must fit
    inside it. Raises CorruptRecordError on a truncated header, unknown magic, a size
    that cannot hold the header or runs past `view`, or a CRC mismatch. A blank filler
    is checked for size only, since its covered tail is never written.
    """
    available = memoryview(view).nbytes
    if available < BLANK_HEADER_BYTES:
        raise CorruptRecordError(f"truncated frame header: {available} bytes")
    size, magic = _SIZE_MAGIC.unpack_from(view, 0)
    if magic == MAGIC_BLANK:
        if size < BLANK_HEADER_BYTES or size > available:
            raise CorruptRecordError(f"blank filler size {size} outside [8, {available}]")
        return magic, size
    if magic != MAGIC_MESSAGE and magic != MAGIC_ENTRY:
        raise CorruptRecordError(f"bad frame magic {magic:#010x} (size field {size})")
    if size < FRAME_HEADER_BYTES or size > available:
        raise CorruptRecordError(f"frame size {size} outside [{FRAME_HEADER_BYTES}, {available}]")
    (crc,) = _U32.unpack_from(view, 8)
    actual = zlib.crc32(memoryview(view)[FRAME_HEADER_BYTES:size])
    if actual != crc:
        raise CorruptRecordError(f"frame crc {actual:#010x} != stored {crc:#010x} (size {size})")
    return magic, size


def encode_frame(magic: int, payload: Buffer) -> bytes:
    """A complete MAGIC_MESSAGE or MAGIC_ENTRY frame around `payload` (header + CRC)."""
    if magic != MAGIC_MESSAGE and magic != MAGIC_ENTRY:
        raise ValueError(f"encode_frame makes message or entry frames, not magic {magic:#010x}")
    body = memoryview(payload).cast("B")
    size = FRAME_HEADER_BYTES + body.nbytes
    if size > 0xFFFFFFFF:
        raise MessageTooLargeError(f"frame of {size} bytes does not fit a u32 size")
    return _HEADER.pack(size, magic, zlib.crc32(body)) + body


def blank_header(size: int) -> bytes:
    """The 8 bytes that mark `size` bytes (the rest of a segment) as unused."""
    assert size >= BLANK_HEADER_BYTES, size
    return _SIZE_MAGIC.pack(size, MAGIC_BLANK)


# --------------------------------------------------------------------------- fields

_TOPIC_RE = re.compile(r"[A-Za-z0-9_\-%|]{1,127}")


def validate_topic(name: str) -> None:
    """Raise InvalidTopicError unless `name` is 1..127 of letters, digits and `_ - % |`."""
    if not isinstance(name, str) or _TOPIC_RE.fullmatch(name) is None:
        raise InvalidTopicError(
            f"invalid topic {name!r}: use 1..{TOPIC_BYTES_MAX} letters, digits, '_', '-', '%', '|'"
        )


@lru_cache(maxsize=4096)
def _topic_bytes(name: str) -> bytes:
    """Validated, encoded topic; cached because a batch usually repeats one topic."""
    validate_topic(name)
    return name.encode("ascii")


def tag_hash(tags: str) -> int:
    """A u64 hash of `tags`, stable across processes and versions; "" hashes to 0.

    Stored in ConsumeQueue units so consumers filter by tag without reading the
    CommitLog. Python's hash() is salted per process, so a keyed-free BLAKE2b digest
    is used instead. A non-empty tag may in principle hash to 0 too; the hash only
    pre-filters, and the consumer re-checks the tag string.
    """
    if not tags:
        return 0
    return int.from_bytes(hashlib.blake2b(tags.encode(), digest_size=8).digest(), "little")


def split_keys(keys: str) -> list[str]:
    """The individual keys of a record's space-separated `keys` field (empties dropped)."""
    return [k for k in keys.split(" ") if k]


def encode_properties(properties: dict[str, str]) -> bytes:
    """`key\\x01value\\x02` pairs, UTF-8. Keys must be non-empty; neither may hold \\x01 or \\x02."""
    if not properties:
        return b""
    text = ""
    for k, v in properties.items():  # += on a fresh str is the fastest join for a few pairs
        text += f"{k}\x01{v}\x02"
    # Each pair contributes exactly one of each separator iff no key or value contains one.
    n = len(properties)
    if text.count(_PROP_KV) != n or text.count(_PROP_END) != n or "" in properties:
        raise ValueError(
            "property keys must be non-empty and keys/values may not contain \\x01 or \\x02"
        )
    return text.encode()


def decode_properties(raw: Buffer) -> dict[str, str]:
    """Inverse of encode_properties; raises CorruptRecordError on a malformed encoding."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptRecordError(f"properties are not UTF-8: {exc}") from None
    if not text:
        return {}
    if not text.endswith(_PROP_END):
        raise CorruptRecordError("properties do not end with a pair separator")
    out: dict[str, str] = {}
    for pair in text[:-1].split(_PROP_END):
        key, sep, value = pair.partition(_PROP_KV)
        if not sep or not key or _PROP_KV in value:
            raise CorruptRecordError(f"malformed property pair {pair!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class MessageRecord:
    """One message as stored in the CommitLog (the queue offset is assigned at dispatch)."""

    topic: str
    body: bytes
    queue_id: int = 0
    tags: str = ""
    keys: str = ""
    """Several keys separated by a single space; see split_keys."""
    properties: dict[str, str] = field(default_factory=dict)
    msg_id: str = ""
    """The producer's unique id for the message (ASCII)."""
    flag: int = 0
    born_timestamp_ms: int = 0
    store_timestamp_ms: int = 0
    born_host: str = ""
    reconsume_times: int = 0

    @classmethod
    def decode(cls, view: Buffer, *, verify_crc: bool = True) -> MessageRecord:
        """Decode the message frame at `view[0]`, copying every field out of `view`.

        Copies so the record stays valid after the CommitLog range it came from is
        truncated or its segment deleted. Raises CorruptRecordError.
        """
        h = decode_message_header(view, verify_crc=verify_crc)
        mv = memoryview(view)
        props_start, props_end = h.properties_span
        body_start, body_end = h.body_span
        return cls(
            topic=h.topic,
            body=bytes(mv[body_start:body_end]),
            queue_id=h.queue_id,
            tags=h.tags,
            keys=h.keys,
            properties=decode_properties(mv[props_start:props_end]),
            msg_id=h.msg_id,
            flag=h.flag,
            born_timestamp_ms=h.born_timestamp_ms,
            store_timestamp_ms=h.store_timestamp_ms,
            born_host=h.born_host,
            reconsume_times=h.reconsume_times,
        )

    def encode(self, *, message_bytes_max: int = MESSAGE_BYTES_MAX) -> bytes:
        return encode_message(self, message_bytes_max=message_bytes_max)


@dataclass(slots=True, frozen=True)
class MessageHeader:
    """What dispatch needs from a message frame, read without copying the body.

    `properties_span` and `body_span` are [start, end) byte positions inside the frame,
    so a caller can slice the same view it decoded from.
    """

    size: int
    msg_id: str
    topic: str
    queue_id: int
    flag: int
    born_timestamp_ms: int
    store_timestamp_ms: int
    reconsume_times: int
    born_host: str
    tags: str
    keys: str
    properties_span: tuple[int, int]
    body_span: tuple[int, int]


def decode_message_header(view: Buffer, *, verify_crc: bool = True) -> MessageHeader:
    """Parse the message frame at `view[0]` without touching the body.

    With verify_crc=False only size and magic are checked: pass it when `view` came
    from CommitLog.frame_at / iter_frames, which verified the CRC already. Either way
    every length prefix is checked against the frame size, and the fields must end
    exactly at the end of the frame. Raises CorruptRecordError.
    """
    mv = memoryview(view)
    if verify_crc:
        magic, size = check_frame(mv)
    else:
        if mv.nbytes < FRAME_HEADER_BYTES:
            raise CorruptRecordError(f"truncated frame header: {mv.nbytes} bytes")
        size, magic = _SIZE_MAGIC.unpack_from(mv, 0)
        if size > mv.nbytes:
            raise CorruptRecordError(f"frame size {size} runs past the {mv.nbytes} bytes given")
    if magic != MAGIC_MESSAGE:
        raise CorruptRecordError(f"not a message frame: magic {magic:#010x}")
    if size < MESSAGE_OVERHEAD_BYTES:
        raise CorruptRecordError(f"message frame of {size} bytes is shorter than its fixed part")
    queue_id, flag, born, store, reconsume = _FIXED.unpack_from(mv, _FIXED_OFFSET)
    try:
        pos = _VARIABLE_OFFSET
        n = mv[pos]
        msg_id = str(mv[pos + 1 : pos + 1 + n], "ascii")
        pos += 1 + n
        n = mv[pos]
        topic = str(mv[pos + 1 : pos + 1 + n], "ascii")
        pos += 1 + n
        n = mv[pos]
        born_host = str(mv[pos + 1 : pos + 1 + n], "utf-8")
        pos += 1 + n
        (n,) = _U16.unpack_from(mv, pos)
        tags = str(mv[pos + 2 : pos + 2 + n], "utf-8")
        pos += 2 + n
        (n,) = _U16.unpack_from(mv, pos)
        keys = str(mv[pos + 2 : pos + 2 + n], "utf-8")
        pos += 2 + n
        (n,) = _U32.unpack_from(mv, pos)
        props_span = (pos + 4, pos + 4 + n)
        pos += 4 + n
        (n,) = _U32.unpack_from(mv, pos)
        body_span = (pos + 4, pos + 4 + n)
        pos += 4 + n
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"message fields run past the frame: {exc}") from None
    if pos != size:
        raise CorruptRecordError(f"message fields end at {pos}, frame size is {size}")
    return MessageHeader(
        size=size,
        msg_id=msg_id,
        topic=topic,
        queue_id=queue_id,
        flag=flag,
        born_timestamp_ms=born,
        store_timestamp_ms=store,
        reconsume_times=reconsume,
        born_host=born_host,
        tags=tags,
        keys=keys,
        properties_span=props_span,
        body_span=body_span,
    )


_QUEUE_AND_STORE = struct.Struct("<I12xQ")  # queue_id, (flag, born), store timestamp


def dispatch_fields(frame: memoryview) -> tuple[int, int, str, memoryview, bytes, bytes, bytes]:
    """(queue_id, store_timestamp_ms, msg_id, its raw bytes, topic, tags, keys as raw
    bytes) of a message frame: what ConsumeQueue and IndexFile need, read without
    decoding what dispatch only hashes or looks up (every replica, every message).

    The frame must already be validated (the CommitLog checked it on append or
    recovery); a malformed one still raises CorruptRecordError, never worse.
    """
    try:
        queue_id, store_ms = _QUEUE_AND_STORE.unpack_from(frame, _FIXED_OFFSET)
        p = _VARIABLE_OFFSET
        n = frame[p]
        msg_id_raw = frame[p + 1 : p + 1 + n]
        msg_id = str(msg_id_raw, "ascii")
        p += 1 + n
        n = frame[p]
        topic = bytes(frame[p + 1 : p + 1 + n])
        p += 1 + n
        p += 1 + frame[p]  # born_host
        n = frame[p] | frame[p + 1] << 8
        tags = bytes(frame[p + 2 : p + 2 + n])
        p += 2 + n
        n = frame[p] | frame[p + 1] << 8
        keys = bytes(frame[p + 2 : p + 2 + n])
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"message fields run past the frame: {exc}") from None
    return queue_id, store_ms, msg_id, msg_id_raw, topic, tags, keys


_STORE_TIMESTAMP_OFFSET = _FIXED_OFFSET + 16  # after queue_id u32, flag u32, born u64
STORE_TIMESTAMP_OFFSET = _STORE_TIMESTAMP_OFFSET
"""Where a message frame holds its store time (u64): read in place by scans that need
nothing else of the header."""
_U64 = struct.Struct("<Q")


def stamp_batch(
    body: bytearray, topic: str, queue_id: int, store_timestamp_ms: int, body_bytes_max: int
) -> int:
    """Check a producer's batch of message frames for `topic`/`queue_id` and stamp each
    with the store time (re-computing its CRC) in place; returns the frame count.

    The leader's hot path, so it reads lengths and compares bytes instead of building a
    MessageHeader per frame, but it refuses what decode_message_header refuses (size,
    magic, CRC, fields that do not tile the frame, text that is not UTF-8) plus frames
    of another topic or queue, properties that do not decode (they would fail every
    consumer's pull for good once stored) and bodies over `body_bytes_max`. Raises
    CorruptRecordError, or MessageTooLargeError for a body over the limit, naming the
    frame by its position in the batch. `topic` must already be a valid topic name.
    """
    mv = memoryview(body)
    end = len(body)
    want_topic = bytes([len(topic)]) + topic.encode("ascii")  # as stored: u8 length, bytes
    unpack_header = _HEADER.unpack_from
    unpack_u32 = _U32.unpack_from
    crc32 = zlib.crc32
    pos = 0
    count = 0
    while pos < end:
        if end - pos < MESSAGE_OVERHEAD_BYTES:
            raise CorruptRecordError(f"frame {count}: truncated, {end - pos} bytes at {pos}")
        size, magic, crc = unpack_header(body, pos)
        if magic != MAGIC_MESSAGE:
            raise CorruptRecordError(f"frame {count}: not a message frame: magic {magic:#010x}")
        if size < MESSAGE_OVERHEAD_BYTES or size > end - pos:
            raise CorruptRecordError(f"frame {count}: bad size {size} at {pos}")
        frame_end = pos + size
        if crc32(mv[pos + FRAME_HEADER_BYTES : frame_end]) != crc:
            raise CorruptRecordError(f"frame {count}: crc mismatch")
        try:
            p = pos + _VARIABLE_OFFSET
            n = body[p]
            str(mv[p + 1 : p + 1 + n], "ascii")  # msg_id
            p += 1 + n
            topic_at = p
            p += 1 + body[p]
            n = body[p]
            str(mv[p + 1 : p + 1 + n], "utf-8")  # born_host
            p += 1 + n
            n = body[p] | body[p + 1] << 8
            str(mv[p + 2 : p + 2 + n], "utf-8")  # tags
            p += 2 + n
            n = body[p] | body[p + 1] << 8
            str(mv[p + 2 : p + 2 + n], "utf-8")  # keys
            p += 2 + n
            (n,) = unpack_u32(body, p)
            props = mv[p + 4 : p + 4 + n]
            p += 4 + n
            (n,) = unpack_u32(body, p)
            p += 4 + n
        except (IndexError, struct.error, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"frame {count}: fields run past the frame: {exc}") from None
        if p != frame_end:
            raise CorruptRecordError(
                f"frame {count}: fields end at {p - pos}, frame size is {size}"
            )
        if mv[topic_at : topic_at + len(want_topic)] != want_topic:
            got = str(mv[topic_at + 1 : topic_at + 1 + body[topic_at]], "utf-8", "replace")
            raise CorruptRecordError(f"frame {count} is for topic {got!r}, not {topic!r}")
        if props:
            try:
                decode_properties(props)
            except CorruptRecordError as exc:
                raise CorruptRecordError(f"frame {count}: {exc}") from None
        (got_queue,) = unpack_u32(body, pos + _FIXED_OFFSET)
        if got_queue != queue_id:
            raise CorruptRecordError(f"frame {count} is for queue {got_queue}, not {queue_id}")
        if n > body_bytes_max:
            raise MessageTooLargeError(f"frame {count}: body of {n} bytes, limit {body_bytes_max}")
        _U64.pack_into(body, pos + _STORE_TIMESTAMP_OFFSET, store_timestamp_ms)
        _U32.pack_into(body, pos + 8, crc32(mv[pos + FRAME_HEADER_BYTES : frame_end]))
        pos = frame_end
        count += 1
    return count


# --------------------------------------------------------------------------- encoding

_LAYOUT_CACHE_MAX = 1024
_layouts: dict[tuple[int, int, int, int, int, int, int], struct.Struct] = {}


def _new_layout(lengths: tuple[int, int, int, int, int, int, int]) -> struct.Struct:
    """One Struct packing a whole frame for these field lengths, so that encoding a
    message is a single pack_into call. Producers repeat a handful of length
    combinations, so a small cache (cleared when full, to stay bounded) hits."""
    lm, lt, lh, lg, lk, lp, lb = lengths
    if len(_layouts) >= _LAYOUT_CACHE_MAX:
        _layouts.clear()
    layout = struct.Struct(f"<IIIIIQQIB{lm}sB{lt}sB{lh}sH{lg}sH{lk}sI{lp}sI{lb}s")
    assert layout.size == MESSAGE_OVERHEAD_BYTES + sum(lengths)
    _layouts[lengths] = layout
    return layout


def _field_too_large(record: MessageRecord, message_bytes_max: int) -> MessageTooLargeError:
    limits = [
        ("msg_id", len(record.msg_id.encode()), MSG_ID_BYTES_MAX),
        ("born_host", len(record.born_host.encode()), BORN_HOST_BYTES_MAX),
        ("tags", len(record.tags.encode()), TAGS_BYTES_MAX),
        ("keys", len(record.keys.encode()), KEYS_BYTES_MAX),
        ("properties", len(encode_properties(record.properties)), PROPERTIES_BYTES_MAX),
        ("body", len(record.body), message_bytes_max),
    ]
    for name, n, limit in limits:
        if n > limit:
            return MessageTooLargeError(f"message {name} is {n} bytes, limit {limit}")
    raise AssertionError("no field over its limit")


def encode_messages(
    records: Iterable[MessageRecord], *, message_bytes_max: int = MESSAGE_BYTES_MAX
) -> tuple[bytearray, list[int]]:
    """Encode `records` as consecutive message frames in one buffer.

    Returns the buffer and each frame's size, the shape CommitLog.append_buffer takes.
    Every record is validated before anything is packed, so a bad record raises
    (InvalidTopicError, MessageTooLargeError, ValueError) and no buffer is returned.
    This is the producer hot path: one pack_into per message into a preallocated
    buffer, then one CRC pass per frame.
    """
    assert message_bytes_max >= 0
    plans: list[tuple[struct.Struct, int, tuple[int | bytes, ...]]] = []
    total = 0
    for r in records:
        topic = _topic_bytes(r.topic)
        try:
            msg_id = r.msg_id.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"msg_id must be ASCII: {r.msg_id!r}") from None
        host = r.born_host.encode()
        tags = r.tags.encode()
        keys = r.keys.encode()
        props = encode_properties(r.properties) if r.properties else b""
        body = r.body
        lengths = (len(msg_id), len(topic), len(host), len(tags), len(keys), len(props), len(body))
        lm, lt, lh, lg, lk, lp, lb = lengths
        if (
            lm > MSG_ID_BYTES_MAX
            or lh > BORN_HOST_BYTES_MAX
            or lg > TAGS_BYTES_MAX
            or lk > KEYS_BYTES_MAX
            or lp > PROPERTIES_BYTES_MAX
            or lb > message_bytes_max
        ):
            raise _field_too_large(r, message_bytes_max)
        layout = _layouts.get(lengths) or _new_layout(lengths)
        size = layout.size
        values: tuple[int | bytes, ...] = (
            size, MAGIC_MESSAGE, 0,
            r.queue_id, r.flag, r.born_timestamp_ms, r.store_timestamp_ms, r.reconsume_times,
            lm, msg_id, lt, topic, lh, host, lg, tags, lk, keys, lp, props, lb, body,
        )  # fmt: skip
        plans.append((layout, size, values))
        total += size
    buf = bytearray(total)
    mv = memoryview(buf)
    sizes: list[int] = []
    pos = 0
    for layout, size, values in plans:
        try:
            layout.pack_into(buf, pos, *values)
        except struct.error as exc:
            # queue_id/flag/reconsume_times are u32 and the timestamps u64.
            raise ValueError(f"message field out of range: {exc}") from None
        _U32.pack_into(buf, pos + 8, zlib.crc32(mv[pos + FRAME_HEADER_BYTES : pos + size]))
        sizes.append(size)
        pos += size
    assert pos == total
    mv.release()
    return buf, sizes


def encode_message(record: MessageRecord, *, message_bytes_max: int = MESSAGE_BYTES_MAX) -> bytes:
    """One complete message frame (header + CRC) for `record`; see encode_messages."""
    buf, _ = encode_messages((record,), message_bytes_max=message_bytes_max)
    return bytes(buf)
