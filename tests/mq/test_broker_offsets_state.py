"""Replicated consumer offsets in BrokerState: commits, generations, resets, and the
snapshot that carries them across restarts. Applying is a pure function of the log, so
replicas that apply the same commands (from a snapshot or not) hold the same state."""

from __future__ import annotations

import struct
import zlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mq.broker.commands import (
    COMMAND_BYTES_MAX,
    MAGIC_COMMAND,
    OFFSET_ENTRIES_MAX,
    CommandError,
    CreateTopicCommand,
    OffsetCommand,
    OffsetEntry,
    ResetCommand,
    SendCommand,
    decode_command,
    encode_command,
)
from mq.broker.state import BrokerState
from mq.route import TopicConfig

GROUPS = st.sampled_from(["g1", "g2", "g3"])
TOPICS = st.sampled_from(["a", "b", "c"])
QUEUES = st.integers(0, 3)
OFFSETS = st.integers(0, 2**63 - 1)

offset_commands = st.builds(
    OffsetCommand,
    GROUPS,
    st.lists(st.builds(OffsetEntry, TOPICS, QUEUES, OFFSETS, st.integers(0, 3)), max_size=8).map(
        tuple
    ),
)
reset_commands = st.builds(
    ResetCommand,
    GROUPS,
    TOPICS,
    st.lists(st.tuples(QUEUES, OFFSETS), max_size=4).map(tuple),
)
commands = st.lists(
    st.one_of(
        offset_commands,
        reset_commands,
        st.builds(CreateTopicCommand, TOPICS, st.integers(1, 8), st.integers(1, 8), st.just(6)),
        st.builds(
            SendCommand,
            TOPICS,
            QUEUES,
            st.integers(1, 4),
            st.sampled_from(["p", "q", None]),
            st.integers(0, 20),
        ).map(lambda c: c if c.producer_id is not None else SendCommand(c.topic, 0, 1)),
    ),
    max_size=40,
)


def apply_all(state: BrokerState, log: list[object], start: int = 0) -> None:
    """Apply commands as the core does, each through its encoded record."""
    for position, command in enumerate(log, start):
        decoded = decode_command(encode_command(command))  # type: ignore[arg-type]
        if isinstance(decoded, SendCommand):
            state.apply_send(decoded, position * 100)
        elif isinstance(decoded, CreateTopicCommand):
            state.apply_create_topic(decoded)
        elif isinstance(decoded, OffsetCommand):
            state.apply_offsets(decoded)
        else:
            state.apply_reset(decoded)


def view(state: BrokerState) -> tuple[object, ...]:
    return (
        state.topics,
        list(state.producers.items()),
        state.offsets,
        state.generations,
    )


@settings(max_examples=200, deadline=None)
@given(commands, st.integers(0, 40), st.integers(0, 2**40))
def test_a_snapshot_at_any_point_plus_replay_equals_applying_everything(
    log: list[object], cut: int, offset: int
) -> None:
    whole = BrokerState()
    apply_all(whole, log)

    first = BrokerState()
    cut = min(cut, len(log))
    apply_all(first, log[:cut])
    decoded = BrokerState.decode(first.encode(offset), whole.producers_max)
    assert decoded is not None
    restored, restored_offset = decoded
    assert restored_offset == offset
    assert view(restored) == view(first), "encode -> decode is the identity"
    apply_all(restored, log[cut:], cut)
    assert view(restored) == view(whole), "replaying the rest reaches the same state"
    assert restored.encode(0) == whole.encode(0), "down to the order of every table"


@settings(max_examples=100, deadline=None)
@given(st.one_of(offset_commands, reset_commands))
def test_offset_and_reset_commands_round_trip(command: OffsetCommand | ResetCommand) -> None:
    assert decode_command(memoryview(encode_command(command))) == command


def test_a_commit_applies_only_at_the_current_generation() -> None:
    state = BrokerState()
    assert state.apply_offsets(OffsetCommand("g", (OffsetEntry("t", 0, 10, 0),))) == []
    assert state.committed_offsets("g", "t") == {0: 10}
    assert state.apply_reset(ResetCommand("g", "t", ((0, 3), (1, 4)))) == 1
    assert state.committed_offsets("g", "t") == {0: 3, 1: 4}
    stale = state.apply_offsets(
        OffsetCommand(
            "g",
            (
                OffsetEntry("t", 0, 11, 0),  # read before the reset: refused
                OffsetEntry("t", 1, 9, 1),  # after it: applied
                OffsetEntry("t", 2, 9, 2),  # a generation nobody has seen: refused
                OffsetEntry("u", 0, 5, 0),  # another topic, never reset
            ),
        )
    )
    assert stale == [("t", 0), ("t", 2)]
    assert state.committed_offsets("g", "t") == {0: 3, 1: 9}
    assert state.committed_offsets("g", "u") == {0: 5}
    assert state.generation("g", "t") == 1 and state.generation("g", "u") == 0
    assert state.generation("other", "t") == 0, "generations are per group"


def test_two_resets_proposed_together_end_in_distinct_generations() -> None:
    state = BrokerState()
    reset = ResetCommand("g", "t", ((0, 0),))
    assert [state.apply_reset(reset), state.apply_reset(reset)] == [1, 2]


def test_a_version_1_snapshot_still_loads_with_no_offsets() -> None:
    body = cbor2.dumps(
        {
            "v": 1,
            "offset": 77,
            "topics": {"t": [2, 2, 6]},
            "producers": [["p", 3, "t", 0, 40, 1]],
        }
    )
    decoded = BrokerState.decode(zlib.crc32(body).to_bytes(4, "little") + body, 10)
    assert decoded is not None
    state, offset = decoded
    assert offset == 77 and state.topics == {"t": TopicConfig(2, 2, 6)}
    assert state.offsets == {} and state.generations == {}


def test_the_largest_allowed_commit_fits_a_command_record() -> None:
    entries = tuple(
        OffsetEntry("t" * 127, i % 1024, 2**63 - 1, 2**63 - 1) for i in range(OFFSET_ENTRIES_MAX)
    )
    data = encode_command(OffsetCommand("g" * 255, entries))
    assert len(data) <= COMMAND_BYTES_MAX
    assert decode_command(data) == OffsetCommand("g" * 255, entries)


def test_a_malformed_offset_command_is_refused() -> None:
    body = cbor2.dumps({"k": "offset", "g": "g", "o": [["t", "zero", 1, 0]]})
    frame = struct.pack("<III", 12 + len(body), MAGIC_COMMAND, zlib.crc32(body)) + body
    with pytest.raises(CommandError, match="expected an int"):
        decode_command(frame)
