"""The wire protocol without a network: round trips, chunking, and hostile input."""

from __future__ import annotations

import datetime
import itertools
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq.protocol import (
    FRAME_BYTES_MAX,
    HEADER_PEEK_BYTES_MAX,
    INT_MAX,
    INT_MIN,
    REQUEST_ID_MAX,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    ProtocolError,
    RequestCode,
    decode_frame,
    encode_frame,
    encode_frame_head,
    request,
)

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
plain_values = st.recursive(
    plain_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=8,
)
frames = st.builds(
    Frame,
    code=st.integers(INT_MIN, INT_MAX),
    request_id=st.integers(0, REQUEST_ID_MAX),
    flags=st.sampled_from([0, Flag.RESPONSE, Flag.ONEWAY, 0x10]),
    fields=st.dictionaries(st.text(max_size=12), plain_values, max_size=5),
    body=st.binary(max_size=3000),
    error=st.integers(INT_MIN, INT_MAX),
    remark=st.text(max_size=40),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode_all(chunks: list[bytes], decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    out = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(frames, min_size=1, max_size=4), st.lists(st.integers(0, 2**32), max_size=12))
def test_frames_survive_a_round_trip_in_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in sent)
    decoder = FrameDecoder()
    received = decode_all(split(stream, cuts), decoder)
    assert received == sent
    assert decoder.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 2**32), max_size=6))
def test_random_bytes_raise_nothing_but_protocol_error(data: bytes, cuts: list[int]) -> None:
    try:
        decode_all(split(data, cuts))
    except ProtocolError as exc:
        assert isinstance(exc.error, ErrorCode)


@settings(max_examples=100, deadline=None)
@given(
    frames, st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_corrupted_frames_raise_nothing_but_protocol_error(
    frame: Frame, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_frame(frame))
    for position, value in flips:
        data[position % len(data)] = value
    try:
        decode_all([bytes(data)])
    except ProtocolError:
        pass


@settings(max_examples=40, deadline=None)
@given(frames, st.integers(1, 10_000))
def test_a_truncated_frame_is_never_returned(frame: Frame, cut: int) -> None:
    data = encode_frame(frame)
    decoder = FrameDecoder()
    decoder.receive_data(data[: max(0, len(data) - cut)])
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == max(0, len(data) - cut)


def test_header_is_a_cbor_map_with_small_int_keys_and_defaults_omitted() -> None:
    frame = Frame(code=RequestCode.GET_ROUTE, request_id=7, fields={"topic": "t"}, body=b"xyz")
    header = cbor2.dumps({0: 52, 1: 7, 3: {"topic": "t"}})
    assert (
        encode_frame(frame)
        == struct.pack(">II", 4 + len(header) + 3, len(header)) + header + b"xyz"
    )
    response = frame.make_error(ErrorCode.TOPIC_NOT_EXIST, "no such topic")
    header = cbor2.dumps({0: 52, 1: 7, 2: 1, 4: 10, 5: "no such topic"})
    assert encode_frame(response) == struct.pack(">II", 4 + len(header), len(header)) + header


def test_response_echoes_code_and_request_id() -> None:
    req = Frame(code=RequestCode.PING, request_id=99)
    response = req.make_response({"a": 1}, b"body")
    assert (response.code, response.request_id, response.is_response, response.ok) == (
        RequestCode.PING,
        99,
        True,
        True,
    )
    assert not response.is_oneway
    assert request(RequestCode.HEARTBEAT, oneway=True).is_oneway


def test_unknown_header_keys_and_flag_bits_are_ignored() -> None:
    header = cbor2.dumps({0: 1, 1: 2, 2: 0x40, 99: "future", "x": [1]})
    frame = decode_frame(struct.pack(">II", 4 + len(header), len(header)) + header)
    assert (frame.code, frame.request_id, frame.flags) == (1, 2, 0x40)
    assert not frame.is_response and not frame.is_oneway


def test_body_may_be_a_memoryview_and_decodes_to_bytes() -> None:
    frame = Frame(code=1, request_id=1, body=memoryview(b"0123456789")[2:5])
    decoded = decode_frame(encode_frame(frame))
    assert decoded.body == b"234"
    assert isinstance(decoded.body, bytes)


def test_oversized_frame_is_refused_naming_its_request() -> None:
    data = encode_frame(Frame(code=RequestCode.SEND_MESSAGE, request_id=5, body=b"x" * 2000))
    decoder = FrameDecoder(frame_bytes_max=1000)
    decoder.receive_data(data[:100])  # the header has arrived, the body has not
    with pytest.raises(ProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.error == ErrorCode.FRAME_TOO_LARGE
    error = caught.value.error_response()
    assert error is not None
    assert (error.code, error.request_id, error.error) == (
        RequestCode.SEND_MESSAGE,
        5,
        ErrorCode.FRAME_TOO_LARGE,
    )


def test_oversized_frame_with_a_huge_header_is_refused_at_once() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">II", FRAME_BYTES_MAX + 10, HEADER_PEEK_BYTES_MAX + 1))
    with pytest.raises(ProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.error == ErrorCode.FRAME_TOO_LARGE
    assert caught.value.error_response() is None


def test_default_limit_is_16_mib() -> None:
    assert FRAME_BYTES_MAX == 16 * 1024 * 1024
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">II", 2**32 - 1, 10))
    assert decoder.next_frame() is None  # waits for the header, to name the request
    decoder.receive_data(b"\xff" * 10)
    with pytest.raises(ProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.error == ErrorCode.FRAME_TOO_LARGE


def test_sender_refuses_a_frame_the_receiver_would_refuse() -> None:
    with pytest.raises(ProtocolError) as caught:
        encode_frame_head(Frame(code=1, request_id=3, body=b"x" * 200), frame_bytes_max=100)
    assert caught.value.error == ErrorCode.FRAME_TOO_LARGE
    assert caught.value.request_id == 3
    with pytest.raises(ValueError):
        encode_frame(Frame(code=1, fields={"when": datetime.datetime.now(datetime.UTC)}))
    with pytest.raises(ValueError):
        encode_frame(Frame(code=1, flags=Flag.RESPONSE | Flag.ONEWAY))
    with pytest.raises(ValueError):
        encode_frame(Frame(code=1, request_id=-1))


def encode_raw(header: object, body: bytes = b"") -> bytes:
    encoded = cbor2.dumps(header)
    return struct.pack(">II", 4 + len(encoded) + len(body), len(encoded)) + encoded + body


@pytest.mark.parametrize(
    ("header", "answerable"),
    [
        ([1, 2, 3], False),  # not a map
        ({1: 2}, False),  # no code
        ({0: 1}, False),  # no request id
        ({0: 1, 1: -1}, False),  # negative request id
        ({0: 1, 1: 2, 2: 3}, False),  # response and one-way at once
        ({0: 1, 1: 2, 3: [1]}, True),  # fields not a map
        (
            {0: 1, 1: 2, 3: {"t": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}},
            True,
        ),  # a CBOR tag
        ({0: 1, 1: 2, 3: {"t": 2**70}}, True),  # bignum
        ({0: 1, 1: 2, 4: "x"}, True),  # error not an int
        ({0: 1, 1: 2, 5: 5}, True),  # remark not a string
        ({0: 1, 1: 2, 2: Flag.ONEWAY, 5: 5}, False),  # one-way: nobody to answer
        ({0: 1, 1: 2, 2: Flag.RESPONSE, 5: 5}, False),  # responses are not answered
    ],
)
def test_malformed_headers_are_refused(header: object, answerable: bool) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(encode_raw(header))
    assert caught.value.error == ErrorCode.MALFORMED_FRAME
    assert (caught.value.error_response() is not None) == answerable


def test_deeply_nested_fields_are_refused() -> None:
    nested: object = "leaf"
    for _ in range(40):
        nested = [nested]
    with pytest.raises(ProtocolError):
        decode_frame(encode_raw({0: 1, 1: 2, 3: {"deep": nested}}))
    with pytest.raises(ProtocolError):
        decode_frame(struct.pack(">II", 4 + 100_000, 100_000) + b"\x81" * 100_000)


def test_header_length_must_fit_the_frame() -> None:
    for total, header in [(4, 0), (10, 7), (10, 0)]:
        decoder = FrameDecoder()
        decoder.receive_data(struct.pack(">II", total, header) + b"\0" * 20)
        with pytest.raises(ProtocolError) as caught:
            decoder.next_frame()
        assert caught.value.error == ErrorCode.MALFORMED_FRAME


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_raw([1]))
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decoder.receive_data(encode_frame(Frame(code=1)))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_frames_after_a_good_one_in_the_same_chunk_are_kept() -> None:
    good = [Frame(code=i, request_id=i, body=bytes([i]) * i) for i in range(1, 6)]
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(encode_frame(f) for f in good) + b"\0\0")
    assert [decoder.next_frame() for _ in good] == good
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == 2
