"""Message, MessageExt, message ids and the record conversion (no network)."""

from __future__ import annotations

import pytest

from mq.message import (
    PROPERTY_DELAY_MS,
    Message,
    MessageExt,
    MessageIdGenerator,
    parse_msg_id,
)
from storage.errors import InvalidTopicError
from storage.record import MessageRecord, encode_messages


def test_keys_accept_a_list_or_a_space_separated_string() -> None:
    assert Message("t", b"", keys="a b  c").keys == ["a", "b", "c"]
    assert Message("t", b"", keys=["a", "b"]).keys == ["a", "b"]
    assert Message("t", "text").body == b"text"
    with pytest.raises(ValueError):
        Message("t", b"", keys=["has space"])


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Message("bad topic", b""), InvalidTopicError),
        (Message("t", b"x" * 11), ValueError),
        (Message("t", b"", tags="a||b"), ValueError),
        (Message("t", b"", tags="*"), ValueError),
        (Message("t", b"", properties={"__SYS": "x"}), ValueError),
        (Message("t", b"", delay_ms=-1), ValueError),
    ],
)
def test_invalid_messages_are_refused_before_sending(message: Message, error: type) -> None:
    with pytest.raises(error):
        message.validate(body_bytes_max=10)


def test_record_round_trip_keeps_every_field() -> None:
    message = Message(
        "orders", b"body", tags="paid", keys=["o-1", "u-9"], properties={"a": "1"}, delay_ms=500
    )
    record = message.to_record(
        msg_id="AB" * 16, queue_id=3, born_timestamp_ms=1234, born_host="10.0.0.1"
    )
    assert record.properties == {"a": "1", PROPERTY_DELAY_MS: "500"}
    buf, (size,) = encode_messages([record])
    decoded = MessageRecord.decode(buf[:size])
    decoded.store_timestamp_ms = 5678
    ext = MessageExt.from_record(decoded, group="g1", queue_offset=42)
    assert (ext.topic, ext.body, ext.tags, ext.keys) == ("orders", b"body", "paid", ["o-1", "u-9"])
    assert ext.properties == {"a": "1"} and ext.delay_ms == 500
    assert (ext.msg_id, ext.group, ext.queue_id, ext.queue_offset) == ("AB" * 16, "g1", 3, 42)
    assert (ext.born_timestamp_ms, ext.store_timestamp_ms, ext.born_host) == (
        1234,
        5678,
        "10.0.0.1",
    )
    assert isinstance(ext, Message)


def test_ids_are_32_hex_chars_and_carry_host_and_pid() -> None:
    generator = MessageIdGenerator(ip="10.1.2.3", pid=4242, nonce=7, clock_ms=lambda: 1000)
    msg_id = generator.next_id()
    assert len(msg_id) == 32 and int(msg_id, 16) >= 0
    parts = parse_msg_id(msg_id)
    assert (parts.ip, parts.pid, parts.nonce, parts.time_ms_low32, parts.counter) == (
        "10.1.2.3",
        4242,
        7,
        1000,
        0,
    )


def test_ids_stay_unique_when_the_counter_wraps_within_one_millisecond() -> None:
    generator = MessageIdGenerator(ip="10.1.2.3", pid=1, nonce=1, clock_ms=lambda: 5)
    ids = [generator.next_id() for _ in range(70_000)]
    assert len(set(ids)) == len(ids)
    assert parse_msg_id(ids[-1]).time_ms_low32 == 6  # borrowed the next millisecond


def test_ids_stay_unique_when_the_wall_clock_steps_back() -> None:
    times = iter([100, 100, 50, 50, 101])
    generator = MessageIdGenerator(pid=1, nonce=1, clock_ms=lambda: next(times))
    ids = [generator.next_id() for _ in range(5)]
    assert len(set(ids)) == 5
    assert ids == sorted(ids)


def test_two_generators_in_one_process_differ() -> None:
    a, b = MessageIdGenerator(clock_ms=lambda: 1), MessageIdGenerator(clock_ms=lambda: 1)
    assert a.next_id() != b.next_id()


def test_a_retry_on_another_queue_patches_only_the_queue_id_and_crc() -> None:
    from mq.client.producer import _Batch
    from mq.protocol import RequestCode

    records = [
        Message("t", f"body{i}".encode(), tags="x").to_record(
            msg_id=f"{i:032X}", queue_id=0, born_timestamp_ms=7, born_host="h"
        )
        for i in range(3)
    ]
    frames, sizes = encode_messages(records)
    batch = _Batch("t", Message("t", b""), 3, ("a", "b", "c"), 1, RequestCode.SEND_BATCH,
                   bytes(frames), sizes)  # fmt: skip
    assert batch.body(0) == bytes(frames)
    patched = batch.body(5)
    expected, _ = encode_messages([_with_queue(r, 5) for r in records])
    assert patched == bytes(expected)  # byte for byte what encoding for queue 5 gives


def _with_queue(record: MessageRecord, queue_id: int) -> MessageRecord:
    import dataclasses

    return dataclasses.replace(record, queue_id=queue_id)
