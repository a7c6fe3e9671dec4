"""The broker's small formats: RAFT_MESSAGE frames, command records, the hard state
file and the replicated state's snapshot; each round-trips and refuses damage."""

from __future__ import annotations

import pytest

from mq.broker.commands import (
    CommandError,
    CreateTopicCommand,
    SendCommand,
    decode_command,
    encode_command,
)
from mq.broker.hard_state import HardStateError, decode_hard_state, encode_hard_state
from mq.broker.raft_codec import RaftCodecError, decode_envelope, encode_envelope
from mq.broker.state import BrokerState
from mq.protocol import decode_frame, encode_frame
from mq.route import TopicConfig
from raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Envelope,
    HardState,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

MESSAGES: list[Message] = [
    VoteRequest(3, 10, 2, pre_vote=True, transfer=False),
    VoteResponse(3, True, pre_vote=True),
    AppendRequest(
        4,
        9,
        3,
        (Entry(4, 10, b"", EntryKind.NOOP), Entry(4, 11, b"data" * 100)),
        8,
    ),
    AppendRequest(4, 9, 3, (), 8),
    AppendResponse(4, False, 0, conflict_index=5, conflict_term=2, reject_index=9),
    SnapshotRequest(5, 100, 4, 0, b"chunk", False),
    SnapshotResponse(5, 100, 5, True),
    TimeoutNow(6),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_raft_messages_round_trip_through_frames(msg: Message) -> None:
    env = Envelope(1, 2, msg)
    frame = decode_frame(encode_frame(encode_envelope("g1", env)))
    assert frame.is_oneway
    assert decode_envelope(frame) == ("g1", env)


def test_a_damaged_raft_frame_is_refused() -> None:
    frame = encode_envelope("g", Envelope(1, 2, MESSAGES[2]))
    with pytest.raises(RaftCodecError):
        decode_envelope(type(frame)(frame.code, fields=frame.fields, body=bytes(frame.body)[:-3]))
    with pytest.raises(RaftCodecError):
        decode_envelope(type(frame)(frame.code, fields={**frame.fields, "term": "4"}))
    with pytest.raises(RaftCodecError):
        decode_envelope(type(frame)(frame.code, fields={**frame.fields, "type": "Evil"}))


@pytest.mark.parametrize(
    "command",
    [
        SendCommand("t", 3, 10),
        SendCommand("t", 0, 1, producer_id="p", seq=7, create_queues=8),
        CreateTopicCommand("t", 4, 2, 6),
    ],
)
def test_commands_round_trip(command: SendCommand | CreateTopicCommand) -> None:
    assert decode_command(memoryview(encode_command(command))) == command


def test_a_damaged_command_is_refused() -> None:
    data = bytearray(encode_command(SendCommand("t", 0, 1)))
    data[-1] ^= 1
    with pytest.raises(CommandError):
        decode_command(bytes(data))


def test_hard_state_round_trips_and_damage_is_an_error() -> None:
    assert decode_hard_state(None) == HardState()
    for hs in (HardState(5, 2, 100), HardState(7, None, 0)):
        assert decode_hard_state(encode_hard_state(hs)) == hs
    data = bytearray(encode_hard_state(HardState(5, 2, 100)))
    data[9] ^= 1
    with pytest.raises(HardStateError):
        decode_hard_state(bytes(data))


def test_duplicates_are_decided_by_seq_per_producer() -> None:
    state = BrokerState(producers_max=2)
    assert not state.apply_send(SendCommand("t", 0, 1, "p", 1, create_queues=4), 100).duplicate
    assert state.topics == {"t": TopicConfig(4, 4)}
    same = state.apply_send(SendCommand("t", 0, 1, "p", 1), 200)
    assert same.duplicate and same.original is not None and same.original.commit_offset == 100
    assert not state.apply_send(SendCommand("t", 0, 1, "p", 2), 300).duplicate
    older = state.apply_send(SendCommand("t", 0, 1, "p", 1), 400)
    assert older.duplicate and older.original is None
    assert not state.apply_send(SendCommand("t", 0, 1), 500).duplicate, "no producer id"


def test_the_producer_table_forgets_the_least_recently_applied_producer() -> None:
    state = BrokerState(producers_max=2)
    for offset, pid in enumerate(["a", "b", "a", "c"]):
        state.apply_send(SendCommand("t", 0, 1, pid, offset), offset)
    assert list(state.producers) == ["a", "c"]


def test_the_state_snapshot_round_trips_in_lru_order_and_refuses_damage() -> None:
    state = BrokerState()
    state.apply_create_topic(CreateTopicCommand("x", 2, 3, 4))
    for seq, pid in enumerate(["b", "a", "c"]):
        state.apply_send(SendCommand("x", 1, 2, pid, seq), seq * 10)
    data = state.encode(1234)
    decoded = BrokerState.decode(data, 10)
    assert decoded is not None
    copy, offset = decoded
    assert offset == 1234
    assert copy.topics == state.topics
    assert list(copy.producers.items()) == list(state.producers.items())
    assert BrokerState.decode(data[:-1] + bytes([data[-1] ^ 1]), 10) is None
    assert BrokerState.decode(None, 10) is None


def test_a_config_built_in_code_is_normalised() -> None:
    from mq.broker.config import BrokerConfig, ConfigError
    from storage.flush import FlushMode

    config = BrokerConfig(flush="ASYNC", peers="1=h:1,2=h:2", namesrv="a:1,b:2")  # type: ignore[arg-type]
    assert config.flush is FlushMode.ASYNC
    assert config.peers == {1: "h:1", 2: "h:2"}
    assert config.namesrv == ("a:1", "b:2")
    with pytest.raises(ConfigError):
        BrokerConfig(flush="sometimes")  # type: ignore[arg-type]
