"""stamp_batch, the leader's lean check of a producer batch, against the full decoder:
it must accept exactly the frames decode_message_header (plus the properties, topic,
queue and size rules) accepts, and stamp them as re-encoding would."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import CorruptRecordError, MessageTooLargeError
from storage.record import (
    FRAME_HEADER_BYTES,
    MessageRecord,
    decode_message_header,
    decode_properties,
    encode_messages,
    stamp_batch,
)

TOPIC = "orders"
QUEUE = 3
STORE_MS = 1_700_000_000_123
BODY_MAX = 4096

_text = st.text(st.characters(codec="utf-8", exclude_characters="\x01\x02 "), max_size=12)
_records = st.builds(
    MessageRecord,
    topic=st.just(TOPIC),
    body=st.binary(max_size=64),
    queue_id=st.just(QUEUE),
    tags=_text,
    keys=_text,
    msg_id=st.text("0123456789ABCDEF", max_size=32),
    born_host=_text,
    born_timestamp_ms=st.integers(0, 2**40),
    properties=st.dictionaries(
        st.text(
            st.characters(codec="utf-8", exclude_characters="\x01\x02"), min_size=1, max_size=5
        ),
        st.text(st.characters(codec="utf-8", exclude_characters="\x01\x02"), max_size=5),
        max_size=2,
    ),
)


def _reference(body: bytes, topic: str, queue_id: int, body_max: int) -> str | None:
    """Why the full decoder refuses the batch (None: it accepts it)."""
    view = memoryview(body)
    pos = 0
    while pos < len(body):
        try:
            head = decode_message_header(view[pos:], verify_crc=True)
            start, end = head.properties_span
            if end > start:
                decode_properties(view[pos + start : pos + end])
        except CorruptRecordError as exc:
            return f"corrupt: {exc}"
        if head.topic != topic or head.queue_id != queue_id:
            return "other topic or queue"
        if head.body_span[1] - head.body_span[0] > body_max:
            return "too large"
        pos += head.size
    return None


def _restamped(records: list[MessageRecord]) -> bytes:
    for r in records:
        r.store_timestamp_ms = STORE_MS
    return bytes(encode_messages(records)[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(_records, min_size=1, max_size=5))
def test_a_valid_batch_is_stamped_as_re_encoding_would(records: list[MessageRecord]) -> None:
    body = bytearray(encode_messages(records)[0])
    assert stamp_batch(body, TOPIC, QUEUE, STORE_MS, BODY_MAX) == len(records)
    assert bytes(body) == _restamped(records)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_records, min_size=1, max_size=3),
    st.data(),
)
def test_a_damaged_frame_with_a_valid_crc_is_refused_exactly_when_the_decoder_refuses_it(
    records: list[MessageRecord], data: st.DataObject
) -> None:
    """Damage past the header, then fix the CRC, so only the structural checks can
    catch it: stamp_batch and the full decoder must agree on every such batch."""
    raw, sizes = encode_messages(records)
    body = bytearray(raw)
    which = data.draw(st.integers(0, len(sizes) - 1))
    start = sum(sizes[:which])
    size = sizes[which]
    at = data.draw(st.integers(start + FRAME_HEADER_BYTES, start + size - 1))
    body[at] = data.draw(st.integers(0, 255))
    struct.pack_into(
        "<I",
        body,
        start + 8,
        zlib.crc32(memoryview(body)[start + FRAME_HEADER_BYTES : start + size]),
    )
    body_max = data.draw(st.sampled_from([BODY_MAX, 8]))
    expected = _reference(bytes(body), TOPIC, QUEUE, body_max)
    if expected is None:
        assert stamp_batch(body, TOPIC, QUEUE, STORE_MS, body_max) == len(records)
    elif expected == "too large":
        with pytest.raises(MessageTooLargeError):
            stamp_batch(body, TOPIC, QUEUE, STORE_MS, body_max)
    else:
        with pytest.raises(CorruptRecordError):
            stamp_batch(body, TOPIC, QUEUE, STORE_MS, body_max)


def test_refusals_name_the_frame() -> None:
    records = [MessageRecord(topic=TOPIC, body=b"a", queue_id=QUEUE) for _ in range(3)]
    raw, sizes = encode_messages(records)
    body = bytearray(raw)
    body[sizes[0] + sizes[1] + FRAME_HEADER_BYTES + 30] ^= 0xFF  # frame 2, CRC now wrong
    with pytest.raises(CorruptRecordError, match="frame 2: crc"):
        stamp_batch(body, TOPIC, QUEUE, STORE_MS, BODY_MAX)
    other = bytearray(encode_messages([MessageRecord(topic="other", body=b"a", queue_id=QUEUE)])[0])
    with pytest.raises(CorruptRecordError, match="frame 0 is for topic 'other'"):
        stamp_batch(other, TOPIC, QUEUE, STORE_MS, BODY_MAX)
    with pytest.raises(CorruptRecordError, match="is for queue 3, not 4"):
        stamp_batch(bytearray(raw), TOPIC, 4, STORE_MS, BODY_MAX)
    with pytest.raises(CorruptRecordError, match="frame 1: truncated"):
        stamp_batch(bytearray(raw[: sizes[0] + 10]), TOPIC, QUEUE, STORE_MS, BODY_MAX)
    with pytest.raises(MessageTooLargeError, match="frame 0: body of 1 bytes"):
        stamp_batch(bytearray(raw), TOPIC, QUEUE, STORE_MS, 0)
