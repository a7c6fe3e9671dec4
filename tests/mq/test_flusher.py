"""The trio driver of sync flush: many waiters, one fsync."""

from __future__ import annotations

import random

import trio

from mq.broker.flusher import Flusher
from storage.commit_log import CommitLog
from storage.files import SimFileSystem
from storage.record import MessageRecord, encode_message


async def test_waiters_that_arrive_together_share_one_fsync() -> None:
    fs = SimFileSystem(random.Random(1))
    log = CommitLog(fs, "/cl", 1 << 16)
    flusher = Flusher(log)
    acked: list[int] = []

    async def writer(i: int) -> None:
        (offset,) = log.append([encode_message(MessageRecord(topic="t", body=b"%d" % i))])
        await flusher.wait_durable(offset + 1)
        assert log.flushed_offset > offset
        acked.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run_sync_mode)
        async with trio.open_nursery() as writers:
            for i in range(20):
                writers.start_soon(writer, i)
        nursery.cancel_scope.cancel()
    assert sorted(acked) == list(range(20))
    assert flusher.fsyncs <= 2, "20 waiters, one group commit (two at most if one raced ahead)"
    fs.crash()
    again = CommitLog(fs, "/cl", 1 << 16)
    again.recover(0)
    assert len(list(again.iter_frames(0, again.max_offset))) == 20, "acknowledged means durable"
