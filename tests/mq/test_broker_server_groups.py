"""Consumer groups through the trio driver, over real loopback sockets on trio's virtual
clock: notifications reach the members' own connections, and a closed connection takes
its members with it."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from mq.protocol import Frame, RequestCode, request
from mq.rpc.client import connect
from tests.mq.test_broker_server import broker_group, held_pulls, wait_for


def heartbeat(client_id: str) -> Frame:
    return request(
        RequestCode.HEARTBEAT,
        {"client_id": client_id, "group": "g", "model": "clustering", "topics": ["t"]},
    )


async def test_a_member_is_notified_when_a_second_member_heartbeats_and_when_it_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with broker_group() as group:
        node = next(iter(group.servers.values()))  # any node: membership is per node
        send, received = trio.open_memory_channel[Frame](16)

        async def on_request(frame: Frame) -> Frame | None:
            send.send_nowait(frame)
            return None

        async def members() -> list[str]:
            async with connect(node.address) as admin:
                response = await admin.request(
                    request(RequestCode.GET_CONSUMER_LIST, {"group": "g"})
                )
            return list(response.fields["client_ids"])

        async with connect(node.address, on_request=on_request) as first:
            await first.request(heartbeat("a"))
            with trio.fail_after(5):
                joined = await received.receive()  # its own arrival
            assert joined.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
            assert joined.is_oneway and dict(joined.fields) == {"group": "g"}

            async with connect(node.address) as second:
                await second.request(heartbeat("b"))
                with trio.fail_after(5):
                    notified = await received.receive()
                assert notified.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
                assert dict(notified.fields) == {"group": "g"}
                assert await members() == ["a", "b"]

            # The second connection closed: b leaves, and a is told.
            with trio.fail_after(5):
                left = await received.receive()
            assert dict(left.fields) == {"group": "g"}
            assert await members() == ["a"]

        async def nobody_left() -> bool:
            return await members() == []

        await wait_for(nobody_left)
        assert node.core.stats()["consumers"] == 0
        assert node.status()["dropped_notifications"] == 0


async def test_a_member_that_hangs_up_with_a_long_poll_held_leaves_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its held pull must not keep it in the group until the poll's suspend time ends:
    the other members would wait that long to take its queues."""
    async with broker_group() as group:
        node = next(iter(group.servers.values()))
        send, received = trio.open_memory_channel[Frame](16)

        async def on_request(frame: Frame) -> Frame | None:
            send.send_nowait(frame)
            return None

        async with connect(node.address, on_request=on_request) as first:
            await first.request(heartbeat("a"))
            await received.receive()
            async with trio.open_nursery() as nursery, connect(node.address) as second:
                await second.request(heartbeat("b"))
                await received.receive()
                poll = request(
                    RequestCode.PULL_MESSAGE,
                    {"topic": "t", "queue_id": 0, "offset": 0, "suspend_ms": 20_000},
                )
                nursery.start_soon(partial(second.request, poll, timeout=60.0))
                await held_pulls(node, 1)
                nursery.cancel_scope.cancel()
            hung_up_at = trio.current_time()
            with trio.fail_after(5):
                left = await received.receive()
            assert dict(left.fields) == {"group": "g"}
            assert trio.current_time() - hung_up_at < 1
