"""Frames and the message record codec."""

from __future__ import annotations

import string
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.errors import CorruptRecordError, InvalidTopicError, MessageTooLargeError
from storage.record import (
    BLANK_HEADER_BYTES,
    FRAME_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    MESSAGE_BYTES_MAX,
    MESSAGE_OVERHEAD_BYTES,
    MessageRecord,
    blank_header,
    check_frame,
    decode_message_header,
    decode_properties,
    encode_frame,
    encode_message,
    encode_messages,
    encode_properties,
    frame_header,
    frame_size_and_magic,
    split_keys,
    tag_hash,
    validate_topic,
)


def full_record(i: int = 7) -> MessageRecord:
    return MessageRecord(
        topic="Orders_eu-1",
        body=b"payload-" + bytes(range(256)) * 3,
        queue_id=3,
        tags="TagA||Ü",
        keys="order-1 order-2",
        properties={"UNIQ_KEY": f"id{i}", "DELAY": "3", "emoji": "☃", "empty": ""},
        msg_id=f"C0A8000100002A9F{i:016X}",
        flag=0xFFFFFFFF,
        born_timestamp_ms=1_700_000_000_123,
        store_timestamp_ms=1_700_000_000_456,
        born_host="10.0.0.1:50123",
        reconsume_times=2,
    )


# --------------------------------------------------------------------------- frames


def test_message_record_round_trips_every_field():
    record = full_record()
    frame = encode_message(record)
    assert MessageRecord.decode(frame) == record
    assert record.encode() == frame


def test_frame_header_helpers_read_size_magic_and_crc():
    frame = encode_message(full_record())
    size, magic, crc = frame_header(frame)
    assert (size, magic) == (len(frame), MAGIC_MESSAGE)
    assert crc == zlib.crc32(frame[FRAME_HEADER_BYTES:])
    assert frame_size_and_magic(frame) == (size, magic)
    assert check_frame(frame) == (MAGIC_MESSAGE, len(frame))


def test_check_frame_accepts_a_longer_view_and_checks_only_the_frame():
    frame = encode_frame(MAGIC_ENTRY, b"raft entry")
    assert check_frame(memoryview(frame + b"trailing garbage")) == (MAGIC_ENTRY, len(frame))


def test_every_single_corrupted_byte_of_a_frame_is_detected():
    frame = encode_message(full_record())
    for pos in range(len(frame)):
        bad = bytearray(frame)
        bad[pos] ^= 0xFF
        with pytest.raises(CorruptRecordError):
            check_frame(bad)


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"\x01\x02\x03", "truncated"),
        (struct.pack("<III", 12, 0x12345678, 0), "magic"),
        (struct.pack("<III", 11, MAGIC_ENTRY, 0), "size"),
        (struct.pack("<III", 40, MAGIC_ENTRY, 0) + b"short", "size"),
        (struct.pack("<III", 14, MAGIC_ENTRY, 0) + b"ab", "crc"),
        (struct.pack("<II", 4, MAGIC_BLANK), "blank"),
        (struct.pack("<II", 64, MAGIC_BLANK), "blank"),
    ],
)
def test_check_frame_rejects_bad_frames(frame: bytes, complaint: str):
    with pytest.raises(CorruptRecordError, match=complaint):
        check_frame(frame)


def test_blank_filler_needs_only_size_and_magic():
    blank = blank_header(100)
    assert len(blank) == BLANK_HEADER_BYTES
    assert check_frame(blank + bytes(92)) == (MAGIC_BLANK, 100)


def test_magics_differ_in_every_byte_so_one_bad_byte_cannot_swap_them():
    magics = [MAGIC_MESSAGE, MAGIC_ENTRY, MAGIC_BLANK]
    for a in magics:
        for b in magics:
            if a != b:
                assert all(
                    x != y
                    for x, y in zip(a.to_bytes(4, "little"), b.to_bytes(4, "little"), strict=True)
                )


def test_encode_frame_refuses_blank_magic():
    with pytest.raises(ValueError):
        encode_frame(MAGIC_BLANK, b"")


# --------------------------------------------------------------------------- batches


def test_batch_encoder_matches_single_encoder_and_reports_sizes():
    records = [full_record(i) for i in range(5)] + [MessageRecord(topic="t", body=b"")]
    buf, sizes = encode_messages(records)
    assert isinstance(buf, bytearray)
    assert sum(sizes) == len(buf)
    pos = 0
    for record, size in zip(records, sizes, strict=True):
        assert bytes(buf[pos : pos + size]) == encode_message(record)
        assert MessageRecord.decode(memoryview(buf)[pos:]) == record
        pos += size


def test_empty_record_has_only_the_fixed_overhead():
    frame = encode_message(MessageRecord(topic="t", body=b""))
    assert len(frame) == MESSAGE_OVERHEAD_BYTES + 1


def test_batch_with_one_bad_record_encodes_nothing():
    records = [full_record(1), MessageRecord(topic="bad topic", body=b"x")]
    with pytest.raises(InvalidTopicError):
        encode_messages(records)


def test_header_decoder_reads_dispatch_fields_and_spans_without_the_body():
    record = full_record()
    frame = encode_message(record)
    h = decode_message_header(memoryview(frame))
    assert (h.topic, h.queue_id, h.tags, h.keys, h.msg_id) == (
        record.topic,
        record.queue_id,
        record.tags,
        record.keys,
        record.msg_id,
    )
    assert h.store_timestamp_ms == record.store_timestamp_ms
    assert h.size == len(frame)
    start, end = h.body_span
    assert frame[start:end] == record.body and end == len(frame)
    assert (
        decode_properties(frame[h.properties_span[0] : h.properties_span[1]]) == record.properties
    )


def test_header_decoder_rejects_lengths_that_overrun_the_frame_even_with_a_good_crc():
    good = encode_message(MessageRecord(topic="t", body=b"abc"))
    payload = bytearray(good[FRAME_HEADER_BYTES:])
    payload[-7] = 200  # body length now claims 200 bytes
    with pytest.raises(CorruptRecordError, match=r"end at|run past"):
        decode_message_header(encode_frame(MAGIC_MESSAGE, payload))


def test_header_decoder_rejects_non_message_frames():
    with pytest.raises(CorruptRecordError, match="not a message"):
        decode_message_header(encode_frame(MAGIC_ENTRY, bytes(80)))


def test_header_decoder_without_crc_check_trusts_the_caller():
    frame = bytearray(encode_message(full_record()))
    frame[-1] ^= 0xFF  # inside the body
    decode_message_header(frame, verify_crc=False)
    with pytest.raises(CorruptRecordError):
        decode_message_header(frame)


# --------------------------------------------------------------------------- limits


def test_body_limit_defaults_to_4_mib_and_is_configurable():
    assert MESSAGE_BYTES_MAX == 4 * 1024 * 1024
    encode_message(MessageRecord(topic="t", body=bytes(100)), message_bytes_max=100)
    with pytest.raises(MessageTooLargeError, match="body is 101 bytes, limit 100"):
        encode_message(MessageRecord(topic="t", body=bytes(101)), message_bytes_max=100)


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [
        ("msg_id", "x" * 256, "msg_id"),
        ("born_host", "h" * 256, "born_host"),
        ("tags", "t" * 65536, "tags"),
        ("keys", "k" * 65536, "keys"),
        ("properties", {"p": "v" * 65536}, "properties"),
    ],
)
def test_length_prefixed_fields_have_limits(field: str, value: object, name: str):
    record = MessageRecord(topic="t", body=b"")
    setattr(record, field, value)
    with pytest.raises(MessageTooLargeError, match=name):
        encode_message(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [("queue_id", -1), ("queue_id", 1 << 32), ("born_timestamp_ms", 1 << 64), ("flag", -5)],
)
def test_out_of_range_integers_are_rejected(field: str, value: int):
    record = MessageRecord(topic="t", body=b"")
    setattr(record, field, value)
    with pytest.raises(ValueError, match="out of range"):
        encode_message(record)


@pytest.mark.parametrize("field", ["tags", "keys", "born_host"])
def test_strings_that_are_not_encodable_as_utf8_are_rejected(field: str):
    record = MessageRecord(topic="t", body=b"")
    setattr(record, field, "lone \ud800 surrogate")
    with pytest.raises(ValueError):
        encode_message(record)


def test_msg_id_must_be_ascii():
    with pytest.raises(ValueError, match="ASCII"):
        encode_message(MessageRecord(topic="t", body=b"", msg_id="idé"))


@pytest.mark.parametrize(
    "topic", ["", "a" * 128, "has space", "dot.ted", "slash/y", "tópico", "a\n"]
)
def test_invalid_topics_are_rejected(topic: str):
    with pytest.raises(InvalidTopicError):
        validate_topic(topic)
    with pytest.raises(InvalidTopicError):
        encode_message(MessageRecord(topic=topic, body=b""))


@pytest.mark.parametrize("topic", ["a", "a" * 127, "%RETRY%group-1", "A|B", "Z_9-x"])
def test_valid_topics_are_accepted(topic: str):
    validate_topic(topic)


# --------------------------------------------------------------------------- fields


def test_properties_reject_separators_and_empty_keys():
    for bad in ({"a\x01": "v"}, {"a": "v\x02"}, {"": "v"}, {"a": "\x01"}):
        with pytest.raises(ValueError):
            encode_properties(bad)


def test_properties_encoding_is_compact_pairs():
    assert encode_properties({"a": "1", "b": ""}) == b"a\x011\x02b\x01\x02"
    assert encode_properties({}) == b""
    assert decode_properties(b"a\x011\x02b\x01\x02") == {"a": "1", "b": ""}


@pytest.mark.parametrize(
    "raw", [b"a\x011", b"a\x02", b"\x01v\x02", b"a\x01b\x01c\x02", b"\xff\x01\x02"]
)
def test_malformed_properties_are_corrupt(raw: bytes):
    with pytest.raises(CorruptRecordError):
        decode_properties(raw)


def test_tag_hash_is_stable_u64_and_zero_for_no_tag():
    assert tag_hash("") == 0
    # Pinned: ConsumeQueue units on disk hold this value; it must never change.
    assert tag_hash("TagA") == 0x61A2C4B095F5FB45
    assert tag_hash("TagA") != tag_hash("TagB")
    assert 0 <= tag_hash("x" * 1000) < 1 << 64


def test_split_keys_ignores_empty_pieces():
    assert split_keys("a b  c ") == ["a", "b", "c"]
    assert split_keys("") == []


# --------------------------------------------------------------------------- property


chars = st.characters(blacklist_categories=("Cs",))  # lone surrogates cannot be UTF-8
texts = st.text(chars, max_size=20)
records = st.builds(
    MessageRecord,
    topic=st.text(string.ascii_letters + string.digits + "_-%|", min_size=1, max_size=127),
    body=st.binary(max_size=300),
    queue_id=st.integers(0, 2**32 - 1),
    tags=texts,
    keys=texts,
    properties=st.dictionaries(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\x01\x02"),
            min_size=1,
            max_size=8,
        ),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\x01\x02"),
            max_size=8,
        ),
        max_size=4,
    ),
    msg_id=st.text(st.characters(max_codepoint=127), max_size=40),
    flag=st.integers(0, 2**32 - 1),
    born_timestamp_ms=st.integers(0, 2**64 - 1),
    store_timestamp_ms=st.integers(0, 2**64 - 1),
    born_host=texts,
    reconsume_times=st.integers(0, 2**32 - 1),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(records, min_size=1, max_size=4))
def test_any_valid_records_round_trip_through_the_batch_encoder(batch: list[MessageRecord]):
    buf, sizes = encode_messages(batch)
    pos = 0
    for record, size in zip(batch, sizes, strict=True):
        assert check_frame(memoryview(buf)[pos:]) == (MAGIC_MESSAGE, size)
        assert MessageRecord.decode(memoryview(buf)[pos : pos + size]) == record
        pos += size
