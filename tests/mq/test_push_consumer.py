"""PushConsumer against fake broker groups and a real NameServer over loopback (trio).

Every test runs on trio's MockClock with autojump (each asks for `autojump_clock`:
pytest-trio only uses a clock the test function itself requests): the consumer's intervals (commit
every second, retries after a second, rebalance every 20 s) pass in virtual time as
soon as everything is waiting, so nothing here sleeps on the wall clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mq.client import (
    Admin,
    ConsumeResult,
    Message,
    MessageExt,
    MessageQueue,
    OffsetsFileInUseError,
    Producer,
    PushConsumer,
    SelectByHash,
)
from mq.protocol import RequestCode
from tests.mq.fake_broker import Env, fake_env

GROUP = "billing"
QUEUES = [MessageQueue("orders", g, q) for g in ("g1", "g2") for q in range(4)]


class _Fixed(SelectByHash):
    def __init__(self, queue: MessageQueue) -> None:
        self.queue = queue

    def select(self, queues, message, arg):  # type: ignore[no-untyped-def]
        return self.queue


async def fill(env: Env, queue: MessageQueue, count: int, *, tag: str = "") -> list[str]:
    """Send `count` messages to `queue`; returns their ids."""
    async with Producer(env.namesrv) as producer:
        return [
            (
                await producer.send(
                    Message(queue.topic, f"{queue}-{i}".encode(), tags=tag), selector=_Fixed(queue)
                )
            ).msg_id
            for i in range(count)
        ]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 120) -> None:
    """Poll in virtual time (the clock jumps while everything waits)."""
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


def consumer(env: Env, **options: Any) -> PushConsumer:
    options.setdefault("consume_from", "first")
    push = PushConsumer(env.namesrv, options.pop("group", GROUP), **options)
    push.subscribe("orders")
    return push


def committed(env: Env, queue: MessageQueue, group: str = GROUP) -> int | None:
    return env.group(queue.group).consumer_offsets.get((group, queue.topic, queue.queue_id))


class Recorder:
    """A handler that records what it got; `gate` (when set) holds every call."""

    def __init__(self) -> None:
        self.messages: list[MessageExt] = []
        self.gate: trio.Event | None = None

    async def __call__(self, message: MessageExt) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.messages.append(message)

    def ids(self) -> list[str]:
        return [m.msg_id for m in self.messages]


async def test_messages_are_handled_and_their_offsets_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0, q5 = QUEUES[0], QUEUES[5]
        ids = await fill(env, q0, 5) + await fill(env, q5, 2)
        recorder = Recorder()
        async with consumer(env, handler=recorder) as push:
            assert push.assigned == QUEUES
            await wait_until(lambda: len(recorder.messages) == 7)
            assert sorted(recorder.ids()) == sorted(ids)
            await wait_until(lambda: committed(env, q0) == 5 and committed(env, q5) == 2)
            # Queues without messages commit where they start, so a restart does not
            # depend on consume_from again.
            assert committed(env, QUEUES[1]) == 0
        members = [r for r in env.cluster.requests if r.code == RequestCode.HEARTBEAT]
        assert {(r.group, r.node) for r in members} == {
            (g, n) for g in ("g1", "g2") for n in range(3)
        }
        assert members[0].fields["client_id"] == push.client_id
        assert members[0].fields["model"] == "clustering"
        for group in ("g1", "g2"):
            assert all(not node.member_ids(GROUP) for node in env.group(group).nodes)


async def test_commits_stop_at_the_lowest_offset_still_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 5)
        slow = trio.Event()
        handled: list[int] = []

        async def handler(message: MessageExt) -> None:
            if message.queue_offset == 2:
                await slow.wait()
            handled.append(message.queue_offset)

        async with consumer(env, handler=handler):
            await wait_until(lambda: len(handled) == 4)
            await trio.sleep(5)  # five commit intervals
            assert committed(env, q0) == 2
            slow.set()
            await wait_until(lambda: committed(env, q0) == 5)


async def test_a_failed_message_is_delivered_again_after_the_retry_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 1)
        attempts: list[tuple[int, float]] = []

        async def handler(message: MessageExt) -> ConsumeResult | None:
            attempts.append((message.reconsume_times, trio.current_time()))
            if len(attempts) == 1:
                raise RuntimeError("database down")
            if len(attempts) == 2:
                return ConsumeResult.RETRY
            return None

        async with consumer(env, handler=handler, retry_delay_ms=3_000):
            await wait_until(lambda: len(attempts) == 3)
            assert [times for times, _ in attempts] == [0, 1, 2]
            assert attempts[1][1] - attempts[0][1] >= 3 and attempts[2][1] - attempts[1][1] >= 3
            assert committed(env, q0) in (None, 0)
            await wait_until(lambda: committed(env, q0) == 1)


async def test_a_full_process_queue_pauses_its_pulls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 20)
        recorder = Recorder()
        recorder.gate = trio.Event()
        options = {"handler": recorder, "queue_messages_max": 4, "pull_batch": 2, "handlers_max": 1}
        async with consumer(env, **options):
            await trio.sleep(10)

            def pulls() -> list[int]:
                return [
                    r.fields["offset"]
                    for r in env.group("g1").requests
                    if r.code == RequestCode.PULL_MESSAGE and r.fields["queue_id"] == 0
                ]

            assert pulls() == [0, 2]  # 4 cached: no third pull
            await trio.sleep(30)
            assert pulls() == [0, 2]
            recorder.gate.set()
            await wait_until(lambda: len(recorder.messages) == 20)
            assert [m.queue_offset for m in recorder.messages] == list(range(20))
            await wait_until(lambda: committed(env, q0) == 20)


async def test_members_rebalance_at_once_when_the_broker_notifies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        never = 10**9  # only notifications can trigger a rebalance here
        first = consumer(env, rebalance_interval_ms=never, client_id="a")
        second = consumer(env, rebalance_interval_ms=never, client_id="b")
        async with first:
            assert first.assigned == QUEUES
            async with second:
                await wait_until(lambda: len(first.assigned) == 4)
                assert first.assigned == QUEUES[:4] and second.assigned == QUEUES[4:]
                ids = await fill(env, QUEUES[1], 3) + await fill(env, QUEUES[6], 3)
            # b unregistered on close: a is told and takes everything back.
            await wait_until(lambda: first.assigned == QUEUES)
            assert committed(env, QUEUES[6]) is not None
        assert ids  # consumed by whichever member owned the queue


async def test_each_member_is_told_when_its_queues_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        told: dict[str, list[list[MessageQueue]]] = {"a": [], "b": []}

        def listener(name: str) -> Callable[[str, list[MessageQueue]], object]:
            async def on_assignment(topic: str, queues: list[MessageQueue]) -> None:
                assert topic == "orders"
                told[name].append(queues)

            return on_assignment

        never = 10**9
        first = consumer(
            env, rebalance_interval_ms=never, client_id="a", on_assignment=listener("a")
        )
        second = consumer(
            env, rebalance_interval_ms=never, client_id="b", on_assignment=listener("b")
        )
        async with first:
            assert told["a"] == [QUEUES]
            async with second:
                await wait_until(lambda: len(told["a"]) == 2 and len(told["b"]) == 1)
                assert told["a"][1] == QUEUES[:4] and told["b"] == [QUEUES[4:]]
            await wait_until(lambda: len(told["a"]) == 3)
            assert told["a"][2] == QUEUES
            await first._rebalance()  # nothing moved: nobody is told
            assert len(told["a"]) == 3


async def test_exactly_one_member_handles_each_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        seen: Counter[str] = Counter()

        async def handler(message: MessageExt) -> None:
            seen[message.msg_id] += 1

        members = [consumer(env, handler=handler, client_id=f"m{i}") for i in range(3)]
        async with members[0], members[1], members[2]:
            await wait_until(
                lambda: (
                    sorted(q for m in members for q in m.assigned) == QUEUES
                    and [len(m.assigned) for m in members] == [3, 3, 2]
                )
            )
            ids = []
            for queue in QUEUES:
                ids += await fill(env, queue, 3)
            await wait_until(lambda: sum(seen.values()) == len(ids))
            await trio.sleep(5)
            assert sorted(seen) == sorted(ids) and set(seen.values()) == {1}
        # Closing moves queues between the remaining members: a message handled but
        # not yet committed can be handled again then (at-least-once), never lost.


async def test_broadcasting_delivers_everything_to_every_member_and_keeps_offsets_in_a_file(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with fake_env() as env:
        ids = await fill(env, QUEUES[0], 3) + await fill(env, QUEUES[7], 2)
        recorders = [Recorder(), Recorder()]
        members = [
            consumer(
                env, model="broadcasting", handler=recorders[i], instance_name=f"n{i}",
                offsets_dir=tmp_path, client_id=f"m{i}",
            )
            for i in range(2)
        ]  # fmt: skip
        async with members[0], members[1]:
            assert members[0].assigned == members[1].assigned == QUEUES
            await wait_until(lambda: all(len(r.messages) == 5 for r in recorders))
        for recorder in recorders:
            assert sorted(recorder.ids()) == sorted(ids)
        path = tmp_path / GROUP / "n0.json"
        assert members[0].offsets_path == path
        document = json.loads(path.read_text())
        offsets = {(e["group"], e["queue_id"]): e["offset"] for e in document["offsets"]}
        assert offsets[("g1", 0)] == 3 and offsets[("g2", 3)] == 2 and offsets[("g1", 1)] == 0
        assert not env.group("g1").consumer_offsets  # nothing stored on the brokers
        # A restart continues from the file: only the new message arrives.
        (new_id,) = await fill(env, QUEUES[0], 1)
        again = Recorder()
        restarted = consumer(
            env, model="broadcasting", handler=again, instance_name="n0", offsets_dir=tmp_path
        )
        async with restarted:
            await wait_until(lambda: len(again.messages) == 1)
            await trio.sleep(5)
        assert again.ids() == [new_id]


async def test_a_second_broadcasting_member_on_the_same_offsets_file_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Two live members sharing a file would each restart from the other's offsets
    (and skip what it missed); the second is refused at start, and the file is free
    again once the first closes."""
    async with fake_env() as env:
        first = consumer(env, model="broadcasting", handler=Recorder(), offsets_dir=tmp_path)
        async with first:
            second = consumer(env, model="broadcasting", handler=Recorder(), offsets_dir=tmp_path)
            with pytest.raises(OffsetsFileInUseError):
                await second.start()
        third = consumer(env, model="broadcasting", handler=Recorder(), offsets_dir=tmp_path)
        async with third:
            assert third.assigned == QUEUES


async def test_close_waits_for_handlers_in_flight_then_commits_and_unregisters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 3)
        recorder = Recorder()
        recorder.gate = trio.Event()
        push = consumer(env, handler=recorder, commit_interval_ms=10**9)
        closed = trio.Event()

        async def release_later() -> None:
            await trio.sleep(1)
            assert not closed.is_set()  # close is waiting for the three handlers
            recorder.gate.set()

        async with trio.open_nursery() as nursery:
            await push.start()  # started and closed by the same task, as with `async with`
            await wait_until(lambda: push.in_flight == 3)
            nursery.start_soon(release_later)
            await push.aclose()
            closed.set()
        assert len(recorder.messages) == 3
        assert committed(env, q0) == 3
        unregisters = [r for r in env.cluster.requests if r.code == RequestCode.UNREGISTER_CLIENT]
        assert len(unregisters) == 6  # every node of both groups


async def test_close_gives_up_on_a_stuck_handler_without_committing_past_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 2)

        async def stuck(message: MessageExt) -> None:
            if message.queue_offset == 1:
                await trio.sleep_forever()

        async with consumer(env, handler=stuck, shutdown_timeout_ms=2_000) as push:
            await wait_until(lambda: committed(env, q0) == 1)
            started = trio.current_time()
        assert 2 <= trio.current_time() - started < 10
        assert committed(env, q0) == 1 and push.assigned == QUEUES


async def test_reads_fall_back_to_a_follower_when_the_leader_is_unreachable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        g1 = env.group("g1")
        ids = await fill(env, q0, 3)
        g1.leader.kill()  # the NameServer still names node 0 as the leader
        recorder = Recorder()
        async with consumer(env, handler=recorder):
            await wait_until(lambda: len(recorder.messages) == 3)
            assert sorted(recorder.ids()) == sorted(ids)
            reads = [r for r in g1.requests if r.code == RequestCode.PULL_MESSAGE]
            assert reads and {r.node for r in reads} == {1}  # the next node by id
            members = [r for r in g1.requests if r.code == RequestCode.GET_CONSUMER_LIST]
            assert members and {r.node for r in members} == {1}
            await trio.sleep(5)
            assert committed(env, q0) is None  # no leader to take the commit
            await g1.elect(1)  # a new leader, and the NameServer learns of it
            await wait_until(lambda: committed(env, q0) == 3)
            more = await fill(env, q0, 1)
            await wait_until(lambda: len(recorder.messages) == 4)
            assert recorder.ids()[-1] == more[0]


async def test_a_reset_drops_cached_messages_and_starts_from_the_reset_offsets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        ids = await fill(env, q0, 3)
        recorder = Recorder()
        async with consumer(env, handler=recorder):
            await wait_until(lambda: committed(env, q0) == 3)
            async with Admin(env.namesrv) as admin:
                offsets = await admin.reset_offset(GROUP, "orders", "first")
            assert offsets[q0] == 0
            # Every message again (in any order: handlers run concurrently). The admin
            # resets each broker group in turn and each notifies, so the consumer may
            # reset twice and hand a message out a third time if its handler had already
            # taken it between the two: at least twice, never fewer.
            await wait_until(lambda: all(Counter(recorder.ids())[i] >= 2 for i in ids))
            assert set(recorder.ids()) == set(ids)
            await wait_until(lambda: committed(env, q0) == 3)


async def test_a_stale_commit_makes_the_consumer_read_its_offsets_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        g1 = env.group("g1")
        ids = await fill(env, q0, 2)
        recorder = Recorder()
        async with consumer(env, handler=recorder):
            await wait_until(lambda: committed(env, q0) == 2)
            # A reset whose notification was lost: only the generation tells.
            g1.generations[(GROUP, "orders")] = 1
            g1.consumer_offsets[(GROUP, "orders", 0)] = 1
            (new,) = await fill(env, q0, 1)
            # Its commit (generation 0) is refused as stale: offsets are read again
            # (1, generation 1), and offsets 1 and 2 are delivered again.
            await wait_until(lambda: committed(env, q0) == 3)
            assert Counter(recorder.ids()) == {ids[0]: 1, ids[1]: 2, new: 2}


async def test_an_illegal_offset_moves_to_the_brokers_next_offset_after_waiting_out_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        env.group("g1").consumer_offsets[(GROUP, "orders", 0)] = 50
        ids = await fill(env, q0, 2)
        recorder = Recorder()
        async with consumer(env, handler=recorder):
            await wait_until(lambda: committed(env, q0) == 2)
            assert recorder.messages == []
            # Backwards (the node has less than we read): waited out three times first,
            # in case it is a follower catching up.
            pulls = [
                r.fields["offset"]
                for r in env.group("g1").requests
                if r.code == RequestCode.PULL_MESSAGE and r.fields["queue_id"] == 0
            ]
            assert pulls[:5] == [50, 50, 50, 50, 2]
            more = await fill(env, q0, 1)
            await wait_until(lambda: recorder.ids() == more)
        assert ids


async def test_where_a_queue_without_offset_starts(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        cluster = env.cluster
        early = await fill(env, q0, 2)
        cluster.wall_ms += 1_000
        late = await fill(env, q0, 1)
        for start, options, expected in [
            ("last", {}, []),
            ("timestamp", {"consume_timestamp_ms": cluster.wall_ms}, late),
            ("first", {}, early + late),
        ]:
            group = f"cg-{start}"
            recorder = Recorder()
            async with consumer(env, group=group, consume_from=start, handler=recorder, **options):
                await wait_until(lambda: committed(env, q0, group) == 3)  # noqa: B023
            assert sorted(recorder.ids()) == sorted(expected), start


async def test_tag_filtered_messages_move_the_offset_but_are_not_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        await fill(env, q0, 2, tag="a")
        wanted = await fill(env, q0, 1, tag="b")
        await fill(env, q0, 2, tag="c")
        recorder = Recorder()
        push = PushConsumer(env.namesrv, GROUP, consume_from="first", handler=recorder)
        push.subscribe("orders", "b")
        async with push:
            await wait_until(lambda: committed(env, q0) == 5)
        assert recorder.ids() == wanted


async def test_deliveries_are_acked_explicitly(autojump_clock: trio.testing.MockClock) -> None:
    async with fake_env() as env:
        q0 = QUEUES[0]
        ids = await fill(env, q0, 3)
        got: list[tuple[str, int]] = []
        async with consumer(env, handlers_max=2) as push:
            async for delivery in push.deliveries():
                got.append((delivery.message.msg_id, delivery.attempt))
                if delivery.message.queue_offset == 1 and delivery.attempt == 1:
                    await delivery.retry(delay_ms=500)
                    continue
                await delivery.ack()
                with pytest.raises(RuntimeError):
                    await delivery.ack()
                if len(got) == 4:
                    break
            await wait_until(lambda: committed(env, q0) == 3)
        assert sorted(got) == sorted([(i, 1) for i in ids] + [(ids[1], 2)])


async def test_subscribing_needs_a_topic_and_handler_modes_do_not_mix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env:
        with pytest.raises(ValueError):
            await PushConsumer(env.namesrv, GROUP).start()
        with pytest.raises(ValueError):
            PushConsumer(env.namesrv, GROUP, consume_from="timestamp")
        recorder = Recorder()
        async with consumer(env, handler=recorder, commit_interval_ms=10**9) as push:
            with pytest.raises(RuntimeError):
                async for _ in push.deliveries():
                    pass
            await fill(env, QUEUES[0], 1)
            await wait_until(lambda: len(recorder.messages) == 1)
            push.unsubscribe("orders")
            await wait_until(lambda: push.assigned == [])
            assert committed(env, QUEUES[0]) == 1  # a dropped queue commits its offset
