"""ProcessQueue (what may be committed, flow control) and the local offsets file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from mq.client import MessageExt, MessageQueue, MQClientError
from mq.client.errors import OffsetsFileInUseError
from mq.client.offset_store import CommitEntry, LocalOffsetStore
from mq.client.process_queue import ProcessQueue

Q = MessageQueue("orders", "g1", 0)


def message(offset: int, size: int = 10) -> MessageExt:
    return MessageExt("orders", b"x" * size, msg_id=f"{offset:032d}", group="g1", queue_id=0,
                      queue_offset=offset)  # fmt: skip


async def test_the_commit_offset_is_the_lowest_in_flight_else_past_the_last_pull() -> None:
    pq = ProcessQueue(Q, messages_max=100, bytes_max=10_000)
    assert pq.commit_offset() is None
    pq.start_at(3, generation=2, committed=3)
    assert pq.commit_offset() == 3 and pq.generation == 2
    added = pq.put([message(3), message(5), message(6)], next_offset=7)  # 4 filtered out
    assert [m.queue_offset for m in added] == [3, 5, 6]
    assert pq.put([message(5)], next_offset=7) == []  # held already: not delivered twice
    pq.remove(5)
    assert pq.commit_offset() == 3
    pq.remove(3)
    assert pq.commit_offset() == 6
    pq.remove(6)
    assert pq.commit_offset() == 7
    pq.put([], next_offset=9)  # tags filtered everything
    assert pq.commit_offset() == 9
    pq.put([message(12)], next_offset=13)
    pq.move_to(10)  # the broker moved the pull offset back
    pq.put([message(10)], next_offset=11)
    assert pq.commit_offset() == 10  # the lowest held, not the first held


async def test_a_full_queue_waits_for_room() -> None:
    pq = ProcessQueue(Q, messages_max=2, bytes_max=25)
    pq.start_at(0, generation=0, committed=None)
    pq.put([message(0), message(1)], next_offset=2)
    assert pq.full
    resumed = []

    async def puller() -> None:
        await pq.wait_for_room()
        resumed.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(puller)
        await trio.testing.wait_all_tasks_blocked()
        assert not resumed
        pq.remove(0)
    assert resumed and not pq.full
    pq.put([message(2, size=30)], next_offset=3)
    assert pq.full and pq.cached_bytes == 40  # bytes count too
    pq.drop()
    assert pq.dropped and len(pq) == 0
    await pq.wait_for_room()


async def test_local_offsets_round_trip_through_an_atomic_file(tmp_path: Path) -> None:
    path = tmp_path / "cg" / "me.json"
    store = LocalOffsetStore(path, "cg")
    assert (await store.read(Q)).offset is None
    other = MessageQueue("orders", "g2", 3)
    result = await store.commit([CommitEntry(Q, 5, 0), CommitEntry(other, 9, 0)])
    assert len(result.committed) == 2 and result.stale == []
    assert not list(path.parent.glob("*.tmp"))
    again = LocalOffsetStore(path, "cg")
    assert (await again.read(Q)).offset == 5 and (await again.read(other)).offset == 9
    assert json.loads(path.read_text())["group"] == "cg"
    path.write_text("{not json")
    with pytest.raises(MQClientError):
        await LocalOffsetStore(path, "cg").read(Q)


async def test_a_negative_offset_in_the_file_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "me.json"
    entry = {"topic": Q.topic, "group": Q.group, "queue_id": Q.queue_id, "offset": -1}
    path.write_text(json.dumps({"group": "cg", "offsets": [entry]}))
    with pytest.raises(MQClientError, match="unreadable: negative offset"):
        await LocalOffsetStore(path, "cg").read(Q)


def test_one_offsets_file_is_taken_by_one_live_member_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "cg" / "default.json"
    first, second = LocalOffsetStore(path, "cg"), LocalOffsetStore(path, "cg")
    first.lock()
    with pytest.raises(OffsetsFileInUseError, match="--instance-name"):
        second.lock()
    first.unlock()
    second.lock()  # free once the first member is gone
    second.unlock()
