"""The Producer against the real broker (tests/mq/test_broker_server.py's
`broker_group`: three broker servers and a NameServer in this trio process, on trio's
virtual clock): what auto-batching does when the broker refuses one of the sends."""

from __future__ import annotations

import trio
import trio.testing

from mq.client import Message, Producer, SendError
from mq.protocol import ErrorCode
from tests.mq.test_broker_server import broker_group
from tests.mq.test_push_consumer_broker import TOPIC, create_topic


async def test_a_send_the_broker_refuses_fails_alone_not_with_the_sends_batched_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client checks bodies against its own 4 MiB limit; a broker with a lower one
    refuses the whole shared request. Only the send at fault may fail."""
    async with broker_group(message_bytes_max=1024) as group:
        await create_topic(group)
        outcomes: dict[int, object] = {}
        async with Producer([group.nameserver.address]) as producer:

            async def send(i: int) -> None:
                body = bytes(4096) if i == 7 else f"m{i}".encode()
                try:
                    outcomes[i] = await producer.send(Message(TOPIC, body))
                except SendError as exc:
                    outcomes[i] = exc

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(send, i)
        failed = {i: o for i, o in outcomes.items() if isinstance(o, SendError)}
        assert list(failed) == [7], failed
        assert failed[7].code == ErrorCode.MESSAGE_TOO_LARGE
