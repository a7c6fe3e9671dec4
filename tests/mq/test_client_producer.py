"""Producer against fake broker groups and a real NameServer over loopback (trio)."""

from __future__ import annotations

import trio
import trio.testing

from mq.client import Message, Producer, PullConsumer, PullStatus
from tests.mq.fake_broker import fake_env


async def test_send_is_stored_at_the_leader_and_pulled_back() -> None:
    async with fake_env() as env, Producer(env.namesrv) as producer:
        result = await producer.send(Message("orders", b"hello", tags="a", keys=["k1", "k2"]))
        assert result.status == "SEND_OK"
        group = env.group(result.group)
        (stored,) = group.messages("orders", result.queue_id)
        assert stored.msg_id == result.msg_id and stored.body == b"hello"
        assert stored.keys == "k1 k2" and stored.tags == "a"
        assert group.sends()[0].address == group.leader.address
        async with PullConsumer(env.namesrv) as consumer:
            queue = next(q for q in await consumer.fetch_queues("orders") if q == result.queue)
            pulled = await consumer.pull(queue, 0)
            assert pulled.status is PullStatus.FOUND
            (message,) = pulled.messages
            assert message.msg_id == result.msg_id and message.body == b"hello"
            assert message.keys == ["k1", "k2"] and message.queue_offset == 0
