"""CoalescingWriter: frames written while a write is under way share the next write, in
call order, and a failed write fails every frame that waited for it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mq.rpc.writer import CoalescingWriter


class SlowStream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.fail = False

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0.01)
        if self.fail:
            raise trio.BrokenResourceError("gone")
        self.writes.append(bytes(data))


async def test_concurrent_frames_share_writes_in_call_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = SlowStream()
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError)
    queued: list[int] = []
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(writer.write, b"h%02d" % i, b"b", lambda i=i: queued.append(i))
            await trio.testing.wait_all_tasks_blocked()
    data = b"".join(stream.writes)
    assert data == b"".join(b"h%02db" % i for i in range(20))
    assert queued == list(range(20))
    assert len(stream.writes) < 20 and writer.writes == len(stream.writes)
    assert writer.frames == 20


async def test_large_bodies_are_sent_on_their_own(autojump_clock: trio.testing.MockClock) -> None:
    stream = SlowStream()
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError, inline_bytes_max=8)
    big = b"x" * 100
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, b"a", b"1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer.write, b"b", big)
        await trio.testing.wait_all_tasks_blocked()  # trio may run new tasks in any order
        nursery.start_soon(writer.write, b"c", b"2")
    assert b"".join(stream.writes) == b"a1b" + big + b"c2"
    assert big in stream.writes


async def test_a_failed_write_fails_its_waiters_and_later_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = SlowStream()
    stream.fail = True
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError)
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await writer.write(b"%d" % i)
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
    assert len(errors) == 5 and writer.failed
    with pytest.raises(trio.BrokenResourceError):
        await writer.write(b"later")


async def test_a_caller_writes_only_the_batch_with_its_frame_then_hands_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While others keep queueing, the first caller returns once its own batch is
    written: it is not kept writing everybody's frames (its request's timeout would then
    cancel it part-way through someone else's frame, failing the whole connection)."""
    stream = SlowStream()
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError)
    returned: dict[str, int] = {}

    async def one(name: bytes) -> None:
        await writer.write(name)
        returned[name.decode()] = len(stream.writes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, b"first")
        for i in range(30):  # a busy producer: a new frame every 5 ms, each write 10 ms
            await trio.sleep(0.005)
            nursery.start_soon(one, b"n%02d" % i)
    assert returned["first"] == 1, "the first caller wrote its own batch only"
    assert b"".join(stream.writes) == b"first" + b"".join(b"n%02d" % i for i in range(30))
    assert all(0 < n <= len(stream.writes) for n in returned.values())


async def test_frames_of_callers_that_gave_up_go_out_with_the_next_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = SlowStream()
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.write, b"a")
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.001):  # queued behind "a", then gives up
            await writer.write(b"b")
    # The nursery waited for "a"'s write; nobody was left to write "b".
    assert stream.writes == [b"a"] and not writer.failed
    await writer.write(b"c")
    assert b"".join(stream.writes) == b"abc", "frames keep their order"


@pytest.mark.parametrize("shield", [False, True])
async def test_a_writer_cancelled_mid_write_breaks_the_stream_unless_shielded(
    autojump_clock: trio.testing.MockClock, shield: bool
) -> None:
    """A consumer that drops a queue cancels the pull it was sending: unshielded, a
    cancel during the write breaks the connection for every other request on it."""
    stream = SlowStream()
    writer = CoalescingWriter(stream.send, trio.BrokenResourceError, shield=shield)
    cancelled = False

    async def doomed() -> None:
        nonlocal cancelled
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.005  # in the middle of its write
            await writer.write(b"pull")
            await trio.lowlevel.checkpoint()  # as a request waits for its response
        cancelled = scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
    assert cancelled
    assert writer.failed is not shield
    if shield:
        await writer.write(b"next")
        assert stream.writes == [b"pull", b"next"]
