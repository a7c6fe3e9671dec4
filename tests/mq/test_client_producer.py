"""Producer against fake broker groups and a real NameServer over loopback (trio).

Timing-dependent tests run on trio's MockClock (autojump): a hung broker or a 30 s
avoidance period costs no wall-clock time.
"""

from __future__ import annotations

from typing import Any

import anyio.lowlevel
import pytest
import trio
import trio.testing

from mq.client import (
    ClientClosedError,
    Message,
    MessageQueue,
    NoRouteError,
    Producer,
    SelectByHash,
    SendCallback,
    SendError,
    SendResult,
    SendTimeoutError,
)
from mq.client.queues import stable_hash
from mq.protocol import ErrorCode, RequestCode
from mq.route import Perm, TopicConfig
from storage.record import MessageRecord
from tests.mq.fake_broker import FakeGroup, Fault, fake_env


def decode_body(body: bytes) -> list[MessageRecord]:
    records, pos = [], 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "little")
        records.append(MessageRecord.decode(body[pos : pos + size]))
        pos += size
    return records


async def test_send_is_stored_at_the_leader_with_its_fields() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        message = Message("orders", b"hello", tags="a", keys=["k1", "k2"], properties={"p": "v"})
        result = await producer.send(message)
        assert result.status == "SEND_OK" and result.attempts == 1 and not result.duplicate
        group = env.group(result.group)
        (stored,) = group.messages("orders", result.queue_id)
        assert stored.msg_id == result.msg_id == result.msg_ids[0]
        assert (stored.body, stored.tags, stored.keys) == (b"hello", "a", "k1 k2")
        assert stored.properties == {"p": "v"} and stored.born_host == producer.born_host
        (request,) = group.sends()
        assert request.address == group.leader.address
        assert request.code == RequestCode.SEND_MESSAGE
        assert request.fields["producer_id"] == producer.producer_id
        assert request.fields["count"] == 1


async def test_sends_round_robin_over_every_queue_of_every_group() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        results = [await producer.send(Message("orders", b"x")) for _ in range(8)]
        assert {r.queue for r in results} == {
            MessageQueue("orders", g, q) for g in ("g1", "g2") for q in range(4)
        }
        seqs = [r.fields["seq"] for g in ("g1", "g2") for r in env.group(g).sends()]
        assert sorted(seqs) == list(range(1, 9))


async def test_batch_is_one_request_with_contiguous_offsets() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        await producer.send(Message("orders", b"first"))
        messages = [Message("orders", f"m{i}".encode(), keys=[f"k{i}"]) for i in range(5)]
        result = await producer.send_batch(messages)
        group = env.group(result.group)
        batch_requests = [r for r in group.sends() if r.code == RequestCode.SEND_BATCH]
        assert len(batch_requests) == 1 and batch_requests[0].fields["count"] == 5
        stored = group.messages("orders", result.queue_id)[result.queue_offset :]
        assert [s.body for s in stored] == [m.body for m in messages]
        assert [s.msg_id for s in stored] == list(result.msg_ids)
        with pytest.raises(ValueError):
            await producer.send_batch([Message("orders", b""), Message("other", b"")])
        with pytest.raises(ValueError):
            await producer.send_batch([])


async def test_async_sends_complete_futures_and_callbacks_and_each_lane_is_in_call_order() -> None:
    async with fake_env() as env, Producer(env.namesrv, auto_batch=False) as producer:
        seen: list[tuple[SendResult | None, BaseException | None]] = []
        futures = [
            await producer.send_async(
                Message("orders", bytes([i])), lambda r, e: seen.append((r, e))
            )
            for i in range(20)
        ]
        results = [await future for future in futures]
        assert all(
            future.done() and future.result() is r
            for future, r in zip(futures, results, strict=True)
        )
        assert len(seen) == 20 and all(e is None for _, e in seen)
        sends = [r for g in ("g1", "g2") for r in env.group(g).sends()]
        keys = [(r.fields["producer_id"], r.fields["seq"]) for r in sends]
        assert len(set(keys)) == 20
        by_lane: dict[str, list[tuple[int, int]]] = {}
        for r in sends:
            body = decode_body(r.body)[0].body[0]
            by_lane.setdefault(r.fields["producer_id"], []).append((r.fields["seq"], body))
        for batches in by_lane.values():
            assert [b for _, b in sorted(batches)] == sorted(b for _, b in batches)


async def test_concurrent_sends_use_separate_lanes_so_none_is_refused_as_an_old_duplicate() -> None:
    """The group remembers only a producer id's last batch: a batch that overtook
    another (scheduling, or a retry after a failover) made the other an "old duplicate",
    refused unstored. Concurrent batches therefore never share a producer id."""
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, auto_batch=False) as producer,
    ):
        g1 = env.group("g1")
        g1.fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.NOT_LEADER, times=1))
        async with trio.open_nursery() as nursery:
            results: list[SendResult] = []

            async def send(i: int) -> None:
                results.append(await producer.send(Message("orders", bytes([i]))))

            for i in range(30):
                nursery.start_soon(send, i)
        assert len(results) == 30
        stored = [s.msg_id for q in range(4) for s in g1.messages("orders", q)]
        assert sorted(stored) == sorted(r.msg_id for r in results)
        lanes = {r.fields["producer_id"] for r in g1.sends()}
        assert producer.producer_id in lanes and len(lanes) > 1
        assert all(lane.split("/")[0] == producer.producer_id for lane in lanes)
        # Sequential sends reuse the first lane: the producer's own id.
        await producer.send(Message("orders", b"again"))
        assert g1.sends()[-1].fields["producer_id"] == producer.producer_id


async def test_async_send_failure_goes_to_the_future_not_the_producer() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        env.group("g1").fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.INVALID_REQUEST))
        errors: list[BaseException | None] = []
        future = await producer.send_async(Message("orders", b"x"), lambda r, e: errors.append(e))
        with pytest.raises(SendError):
            await future
        assert isinstance(errors[0], SendError)
        assert (await producer.send(Message("orders", b"y"))).status == "SEND_OK"


async def test_auto_batched_async_sends_free_their_slot_and_run_every_kind_of_callback() -> None:
    """An auto-batched send_async has no task of its own: its topic's sender settles the
    future, frees the in-flight slot, calls the callback and awaits a coroutine one."""
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, async_in_flight_max=2) as producer,
    ):
        seen: list[int] = []

        async def later(i: int) -> None:
            await trio.sleep(0)
            seen.append(i)

        def callback(i: int) -> SendCallback:
            def done(result: SendResult | None, error: BaseException | None) -> object:
                assert error is None and result is not None
                if i % 3 == 0:
                    raise RuntimeError("a callback failing is logged, nothing more")
                if i % 3 == 1:
                    return later(i)
                seen.append(i)
                return None

            return done

        with trio.fail_after(10):
            futures = [
                await producer.send_async(Message("orders", bytes([i])), callback(i))
                for i in range(12)
            ]
            results = [await future for future in futures]
        assert len({r.msg_id for r in results}) == 12
        assert sorted(r.msg_id for r in results) == sorted(
            s.msg_id for q in range(4) for s in env.group("g1").messages("orders", q)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(seen) == [i for i in range(12) if i % 3]


async def test_a_loop_of_async_sends_leaves_in_one_request_not_one_each() -> None:
    """send_async does not yield while an in-flight slot is free, so the topic's sender
    finds the whole loop's messages queued when it first runs."""
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        futures = [await producer.send_async(Message("orders", bytes([i]))) for i in range(40)]
        results = [await future for future in futures]
        assert len(env.group("g1").sends()) == 1
        assert [r.queue_offset for r in results] == list(range(40))


async def test_a_long_loop_of_async_sends_yields_once_per_full_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With room for 1,000 in flight, the loop still yields (lets the topic's sender
    # and everyone else run) once each auto_batch_messages_max sends.
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, auto_batch_messages_max=16, async_in_flight_max=1000) as producer,
    ):
        yields: list[int] = []
        calls = 0
        checkpoint = anyio.lowlevel.checkpoint
        me = trio.lowlevel.current_task()

        async def counted() -> None:
            if trio.lowlevel.current_task() is me:  # not the fake broker's own
                yields.append(calls)
            await checkpoint()

        monkeypatch.setattr(anyio.lowlevel, "checkpoint", counted)
        futures = []
        for i in range(40):
            calls += 1
            futures.append(await producer.send_async(Message("orders", bytes([i]))))
        monkeypatch.undo()
        assert yields == [17, 33]
        for future in futures:
            await future
        sizes = [r.fields.get("count", 1) for r in env.group("g1").sends()]
        assert sum(sizes) == 40 and max(sizes) == 16


async def test_closing_the_producer_waits_for_async_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env:
        env.group("g1").fault(Fault(RequestCode.SEND_MESSAGE, action="delay", delay_ms=2000))
        async with Producer(env.namesrv) as producer:
            future = await producer.send_async(Message("orders", b"x"))
        assert future.done() and future.result().status == "SEND_OK"
        with pytest.raises(ClientClosedError):
            await producer.send(Message("orders", b"x"))


async def test_oneway_send_is_delivered_without_an_answer() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        assert await producer.send_oneway(Message("orders", b"fire")) is None
        await trio.testing.wait_all_tasks_blocked()  # the broker has read and handled it
        (stored,) = env.group("g1").all_messages()
        assert stored.body == b"fire"
        assert env.group("g1").sends()[0].oneway


async def test_not_leader_retries_at_the_named_leader_with_the_same_seq_and_ids() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        await producer.send(Message("orders", b"warm the route"))
        await group.elect(2, register=False)  # the NameServer still names node 0
        result = await producer.send(Message("orders", b"x"))
        assert result.attempts == 2
        first, second = group.sends()[1:]
        assert first.address == group.node(0).address
        assert second.address == group.node(2).address
        assert first.fields["seq"] == second.fields["seq"]
        assert first.body == second.body  # same ids, same born time, same frames
        assert [r.msg_id for r in decode_body(second.body)] == [result.msg_id]
        # The named leader is remembered: the next send goes straight to it.
        await producer.send(Message("orders", b"y"))
        assert group.sends()[-1].address == group.node(2).address
        assert len(group.sends()) == 4


async def test_a_lost_answer_is_retried_with_the_same_seq_and_stored_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv, send_timeout_ms=1000) as p:
        group = env.group("g1")
        group.fault(Fault(RequestCode.SEND_MESSAGE, action="store_then_hang"))
        result = await p.send(Message("orders", b"once"))
        assert result.duplicate and result.attempts == 2
        assert [m.body for m in group.all_messages()] == [b"once"]
        first, second = group.sends()
        assert first.fields["seq"] == second.fields["seq"]
        assert [r.msg_id for r in decode_body(first.body)] == [result.msg_id]
        assert [r.msg_id for r in decode_body(second.body)] == [result.msg_id]
        stored_at = group.sends()[0].fields["queue_id"]
        assert result.queue_id == stored_at  # where the first attempt stored it


async def test_a_dead_leader_makes_the_send_fall_over_to_another_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        g1 = env.group("g1")
        g1.leader.kill()
        results = [await producer.send(Message("orders", b"x")) for _ in range(6)]
        assert {r.group for r in results} == {"g2"}
        assert producer.fault.item("g1") is not None and not producer.fault.available("g1")
        await trio.sleep(601)  # RocketMQ isolates a failed group for 600 s
        assert producer.fault.available("g1")


async def test_retryable_broker_errors_move_to_another_group() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        for name in ("g1", "g2"):
            env.group(name).fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY))
        result = await producer.send(Message("orders", b"x"))
        assert result.attempts == 3
        groups = [r.group for r in env.cluster.sends()]
        assert groups[0] != groups[1] and groups[2] == groups[0] == result.group
        assert len({r.fields["seq"] for r in env.cluster.sends()}) == 1
        assert [m.body for m in env.group(result.group).all_messages()] == [b"x"]


async def test_a_busy_only_group_is_asked_again_after_a_pause_another_group_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        env.group("g1").fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY, times=2))
        began = trio.current_time()
        result = await producer.send(Message("orders", b"x"))
        assert result.attempts == 3
        assert trio.current_time() - began >= 0.05 + 0.1  # 50 ms, then 100 ms
    async with fake_env() as env, Producer(env.namesrv) as producer:
        for name in ("g1", "g2"):
            env.group(name).fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY))
        began = trio.current_time()
        assert (await producer.send(Message("orders", b"x"))).attempts == 3
        assert trio.current_time() - began < 0.05  # each retry went to the other group


async def test_errors_no_retry_can_fix_fail_at_once() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        for name in ("g1", "g2"):
            env.group(name).fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.INVALID_REQUEST))
        with pytest.raises(SendError) as caught:
            await producer.send(Message("orders", b"x"))
        assert caught.value.code == ErrorCode.INVALID_REQUEST and caught.value.attempts == 1


async def test_retries_are_bounded_and_the_last_error_is_reported() -> None:
    async with fake_env() as env, Producer(env.namesrv, retries=2) as producer:
        for name in ("g1", "g2"):
            env.group(name).fault(
                Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY, times=10)
            )
        with pytest.raises(SendError) as caught:
            await producer.send(Message("orders", b"x"))
        assert caught.value.attempts == 3 and caught.value.code == ErrorCode.SYSTEM_BUSY
        sends = [r for g in ("g1", "g2") for r in env.group(g).sends()]
        assert len(sends) == 3 and len({r.fields["seq"] for r in sends}) == 1
        assert len(caught.value.msg_ids) == 1


async def test_a_slow_group_is_avoided_for_30_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        env.group("g1").fault(Fault(RequestCode.SEND_MESSAGE, action="delay", delay_ms=600))
        for _ in range(5):  # round-robin reaches g1 within 5 sends
            if (await producer.send(Message("orders", b"x"))).group == "g1":
                break  # that one took 600 ms: the 30 s level
        else:
            raise AssertionError("no send reached g1")
        fast = "g2"
        others = [await producer.send(Message("orders", b"x")) for _ in range(4)]
        assert {r.group for r in others} == {fast}
        await trio.sleep(30)
        later = [await producer.send(Message("orders", b"x")) for _ in range(8)]
        assert "g1" in {r.group for r in later}, "the avoidance period is over"


async def test_a_failed_send_names_earlier_attempts_that_failed_otherwise() -> None:
    # A leader whose disk is full refuses, then hands over: the last answer alone
    # (here SYSTEM_BUSY, for real NOT_LEADER) would hide why.
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        group.fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SERVICE_NOT_AVAILABLE))
        group.fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY, times=2))
        with pytest.raises(SendError) as caught:
            await producer.send(Message("orders", b"x"))
        assert caught.value.code == ErrorCode.SYSTEM_BUSY and caught.value.attempts == 3
        text = str(caught.value)
        assert text.count("SYSTEM_BUSY") == 1, "the same failure is named once"
        assert "(earlier attempts: SERVICE_NOT_AVAILABLE" in text


async def test_ordered_sends_with_one_shard_key_use_one_queue() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        selector = SelectByHash()
        queues = {
            (await producer.send(Message("orders", b"x"), selector=selector, arg=order_id)).queue
            for order_id in [17] * 10
        }
        assert len(queues) == 1
        (queue,) = queues
        assert queue.queue_id == stable_hash(17) % 8 % 4  # 8 queues: g1#0-3, g2#0-3
        spread = {
            (await producer.send(Message("orders", b"x"), selector=selector, arg=k)).queue
            for k in range(16)
        }
        assert len(spread) == 8


async def test_ordered_sends_never_fall_over_to_another_queue() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        selector = SelectByHash()
        queue = (await producer.send(Message("orders", b"a"), selector=selector, arg="k")).queue
        group = env.group(queue.group)
        group.fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY))
        result = await producer.send(Message("orders", b"b"), selector=selector, arg="k")
        assert result.queue == queue and result.attempts == 2
        await group.elect(1, register=False)
        result = await producer.send(Message("orders", b"c"), selector=selector, arg="k")
        assert result.queue == queue and result.attempts == 2
        assert [m.body for m in group.messages("orders", queue.queue_id)] == [b"a", b"b", b"c"]
        group.fault(Fault(RequestCode.SEND_MESSAGE, error=ErrorCode.SYSTEM_BUSY, times=3))
        with pytest.raises(SendError):
            await producer.send(Message("orders", b"d"), selector=selector, arg="k")
        other = next(g for g in ("g1", "g2") if g != queue.group)
        assert not env.group(other).sends()


async def test_with_no_broker_group_an_unknown_topic_raises_no_route_error() -> None:
    async with fake_env(groups=()) as env, Producer(env.namesrv) as producer:
        with pytest.raises(NoRouteError):
            await producer.send(Message("unknown", b"x"))


async def test_an_unknown_topic_goes_to_a_group_with_a_leader_for_auto_create() -> None:
    # The fake broker does not auto-create topics: its refusal proves the send reached it.
    async with fake_env() as env, Producer(env.namesrv) as producer:
        with pytest.raises(SendError) as caught:
            await producer.send(Message("fresh", b"x"))
        assert caught.value.code == ErrorCode.TOPIC_NOT_EXIST


async def test_invalid_messages_and_closed_producers_fail_before_sending() -> None:
    async with fake_env(groups=["g1"]) as env:
        producer = Producer(env.namesrv, message_bytes_max=4)
        with pytest.raises(ClientClosedError):
            await producer.send(Message("orders", b"x"))
        async with producer:
            with pytest.raises(ValueError):
                await producer.send(Message("orders", b"too long"))
            with pytest.raises(ValueError):
                await producer.send(Message("orders", b"x", delay_ms=1000))
        assert not env.group("g1").sends()


async def test_a_send_that_keeps_timing_out_raises_a_timeout_send_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv, send_timeout_ms=500) as p:
        env.group("g1").fault(Fault(RequestCode.SEND_MESSAGE, action="hang", times=3))
        with pytest.raises(SendTimeoutError) as caught:
            await p.send(Message("orders", b"x"))
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, SendError)
        assert caught.value.attempts == 3 and caught.value.code is None
        assert 1.5 <= trio.current_time() < 3  # three attempts of 0.5 s each


async def test_during_an_election_sends_go_to_another_group() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        await producer.send(Message("orders", b"warm"))
        await env.group("g1").elect(None, register=False)  # every g1 node: NOT_LEADER, no leader
        results = [await producer.send(Message("orders", b"x")) for _ in range(6)]
        assert {r.group for r in results} == {"g2"}


async def test_after_a_connection_failure_the_route_is_read_again_before_retrying() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        await producer.send(Message("orders", b"warm"))
        await group.elect(1)  # the NameServer learns of node 1 ...
        group.node(0).kill()  # ... and the old leader is gone
        result = await producer.send(Message("orders", b"x"))
        assert result.attempts == 2
        assert group.sends()[-1].node == 1
        assert [m.body for m in group.all_messages()] == [b"warm", b"x"]


async def _elect_later(group: FakeGroup, node: int | None, delay_s: float) -> None:
    await trio.sleep(delay_s)
    await group.elect(node)


async def test_a_send_waits_out_the_election_after_its_only_leader_died(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        await producer.send(Message("orders", b"warm"))
        group.node(0).kill()  # the NameServers go on naming node 0 until node 1 registers
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, group, 1, 0.9)
            result = await producer.send(Message("orders", b"x"), selector=SelectByHash(), arg=1)
            ordered_took = trio.current_time() - started
            assert result.attempts == 2 and group.sends()[-1].node == 1
        assert 0.9 <= ordered_took < 1.5  # the election, and at most one poll pause more
        group.node(1).kill()
        await group.elect(None, register=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, group, 2, 0.4)
            result = await producer.send(Message("orders", b"y"))
        assert result.attempts == 2 and group.sends()[-1].node == 2
        assert [m.body for m in group.all_messages()] == [b"warm", b"x", b"y"]


async def test_waiting_for_a_leader_ends_with_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv, send_timeout_ms=2000) as p:
        await p.send(Message("orders", b"warm"))
        env.group("g1").node(0).kill()
        started = trio.current_time()
        with pytest.raises(SendError) as caught:
            await p.send(Message("orders", b"x"))
        assert caught.value.attempts == 3
        assert 2.0 <= trio.current_time() - started < 2.5


async def test_an_ordered_send_waits_out_a_hand_over_whose_transferee_has_not_won_yet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        await producer.send(Message("orders", b"warm"))
        # Node 0 names its transferee, node 1, which has no leader yet; the NameServers
        # still name node 0. Node 1 wins 0.5 s later.
        await group.elect(1, register=False)
        group.fault(
            Fault(
                RequestCode.SEND_MESSAGE,
                error=ErrorCode.NOT_LEADER,
                fields={"leader": None, "group": "g1"},
                node=1,
            )
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, group, 1, 0.5)
            result = await producer.send(Message("orders", b"x"), selector=SelectByHash(), arg=1)
        assert result.attempts == 3 and group.sends()[-1].node == 1


async def test_when_every_group_loses_its_leader_a_send_waits_for_the_first_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1", "g2"]) as env, Producer(env.namesrv) as producer:
        g1, g2 = env.group("g1"), env.group("g2")
        await producer.send(Message("orders", b"warm"))
        g1.node(0).kill()
        g2.node(0).kill()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, g2, 1, 0.2)  # g2 first
            nursery.start_soon(_elect_later, g1, 1, 2.5)
            started = trio.current_time()
            result = await producer.send(Message("orders", b"x"))
            took = trio.current_time() - started
        assert result.group == "g2" and took < 0.5, "waited for any group, not only its own"


async def test_a_read_only_group_does_not_end_the_wait_for_a_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        await env.cluster.add_group("g2", topics={"orders": TopicConfig(4, 4, perm=Perm.READ)})
        g1 = env.group("g1")
        await producer.send(Message("orders", b"warm"))
        g1.node(0).kill()
        await g1.elect(None)  # the NameServers name no leader for g1
        await producer._client.routes.refresh("orders")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, g1, 1, 0.5)
            result = await producer.send(Message("orders", b"x"))
        assert result.group == "g1"


async def test_a_send_to_a_topic_still_to_be_created_waits_out_an_election(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = FakeGroup._send

    def auto_create(self: FakeGroup, node: Any, frame: Any) -> Any:
        self.topics.setdefault(frame.fields["topic"], TopicConfig(8, 8))
        return original(self, node, frame)

    monkeypatch.setattr(FakeGroup, "_send", auto_create)
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        group = env.group("g1")
        group.node(0).kill()  # the provisional route (from cluster info) names node 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_elect_later, group, 1, 0.5)
            result = await producer.send(Message("fresh", b"x"))
        assert group.sends()[-1].node == 1 and result.status == "SEND_OK"


async def test_auto_batched_sends_wait_out_an_election_once_not_once_per_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, send_timeout_ms=1000, auto_batch_messages_max=4) as producer,
    ):
        await producer.send(Message("orders", b"warm"))
        env.group("g1").node(0).kill()  # and no new leader, ever
        failed_at: list[float] = []

        async def one(i: int) -> None:
            with pytest.raises(SendError):
                await producer.send(Message("orders", b"%d" % i))
            failed_at.append(trio.current_time() - started)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(40):  # 10 batches of 4, 2 in flight at a time
                nursery.start_soon(one, i)
        assert max(failed_at) < 1.5, "each send's wait ends send_timeout_ms after it began"


# --- auto-batching ------------------------------------------------------------------


async def _send_concurrently(producer: Producer, count: int) -> list[SendResult]:
    """`count` sends at once, the first alone on its way before the others start."""
    results: list[SendResult] = []

    async def send(i: int) -> None:
        results.append(await producer.send(Message("orders", bytes([i]), keys=[f"k{i}"])))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, 0)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1, count):
            nursery.start_soon(send, i)
    return results


async def test_a_lone_send_leaves_at_once_as_a_single_message_request() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        result = await producer.send(Message("orders", b"x"))
        [request] = env.group("g1").sends()
        assert request.code == RequestCode.SEND_MESSAGE and request.fields["count"] == 1
        assert result.msg_ids == (result.msg_id,)


async def test_concurrent_sends_share_requests_and_each_gets_its_own_result() -> None:
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, auto_batch_senders=2, auto_batch_messages_max=16) as producer,
    ):
        g1 = env.group("g1")
        # Slow answers make sends queue up behind the two senders in flight.
        g1.fault(Fault(None, action="delay", delay_ms=50, times=1000))
        results = await _send_concurrently(producer, 60)
        requests = g1.sends()
        assert len(results) == 60 and len(requests) < 60
        assert max(r.fields["count"] for r in requests) <= 16
        assert len({r.msg_id for r in results}) == 60
        stored = {
            s.msg_id: (q, offset)
            for q in range(4)
            for offset, s in enumerate(g1.messages("orders", q))
        }
        assert len(stored) == 60
        for r in results:  # each result says where its own message is
            assert r.msg_ids == (r.msg_id,)
            assert stored[r.msg_id] == (r.queue_id, r.queue_offset)


async def test_a_failed_batch_fails_each_send_with_its_own_message_id() -> None:
    async with (
        fake_env(groups=["g1"]) as env,
        Producer(env.namesrv, retries=0, auto_batch_senders=1) as producer,
    ):
        g1 = env.group("g1")
        g1.fault(Fault(None, action="delay", delay_ms=50, times=1))
        g1.fault(Fault(RequestCode.SEND_BATCH, error=ErrorCode.NO_PERMISSION, times=1))
        outcomes: list[BaseException | SendResult] = []

        async def send(i: int) -> None:
            try:
                outcomes.append(await producer.send(Message("orders", bytes([i]))))
            except SendError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 0)
            await trio.testing.wait_all_tasks_blocked()  # the first is on its way, alone
            for i in range(1, 10):
                nursery.start_soon(send, i)
        errors = [o for o in outcomes if isinstance(o, SendError)]
        # The first send went alone (and was delayed); the nine queued behind it went
        # as one batch, which the broker refused.
        assert len(errors) == 9
        assert all(len(e.msg_ids) == 1 for e in errors)
        assert len({e.msg_ids[0] for e in errors}) == 9
        assert all(e.code == ErrorCode.NO_PERMISSION for e in errors)


async def test_a_retried_automatic_batch_is_stored_once() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        g1 = env.group("g1")
        g1.fault(Fault(None, action="delay", delay_ms=50, times=1))
        g1.fault(Fault(RequestCode.SEND_BATCH, action="store_then_hang", times=1))
        producer.send_timeout_ms = 200
        results = await _send_concurrently(producer, 30)
        stored = [s.msg_id for q in range(4) for s in g1.messages("orders", q)]
        assert sorted(stored) == sorted(r.msg_id for r in results)
        assert any(r.duplicate for r in results)


async def test_async_sends_are_batched_too_and_complete_their_futures() -> None:
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        g1 = env.group("g1")
        g1.fault(Fault(None, action="delay", delay_ms=50, times=1000))
        futures = [await producer.send_async(Message("orders", bytes([i]))) for i in range(40)]
        results = [await f for f in futures]
        assert len({r.msg_id for r in results}) == 40
        assert len(g1.sends()) < 40


def test_auto_batch_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Producer("127.0.0.1:9876", auto_batch_senders=0)
    with pytest.raises(ValueError):
        Producer("127.0.0.1:9876", auto_batch_messages_max=100_000)


async def test_a_provisional_route_with_too_many_queues_is_corrected_by_the_group() -> None:
    """The NameServer does not know the topic yet (its registration is on the way), so
    the producer guesses 8 queues; the group has 2 and says so: every send lands."""
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv, auto_batch=False) as producer:
        g1 = env.group("g1")
        g1.topics["fresh"] = TopicConfig(read_queues=2, write_queues=2)  # not registered
        results = [await producer.send(Message("fresh", bytes([i]))) for i in range(12)]
        assert {r.queue_id for r in results} <= {0, 1}
        stored = [m.msg_id for q in (0, 1) for m in g1.messages("fresh", q)]
        assert sorted(stored) == sorted(r.msg_id for r in results)


async def test_a_batch_that_encodes_past_one_request_is_refused_as_bad_input() -> None:
    """Bodies within the batch limit can still encode past the 16 MiB a request carries
    (keys are in every frame): a ValueError, before anything is sent."""
    async with fake_env(groups=["g1"]) as env, Producer(env.namesrv) as producer:
        batch = [Message("orders", b"x", keys=[f"{i:05d}" + "k" * 60_000]) for i in range(300)]
        with pytest.raises(ValueError, match="more than one request carries"):
            await producer.send_batch(batch)
        assert not env.group("g1").messages("orders", 0)
        assert (await producer.send(Message("orders", b"after"))).msg_id
