"""`mq consume --group` and `mq admin group ...` against fake broker groups.

The fake brokers run on trio in a thread of their own (an anyio blocking portal), so the
command runs exactly as from a shell: its own `trio.run` in this thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from anyio.from_thread import start_blocking_portal

from mq.cli import main
from mq.client import Message, PushConsumer
from mq.client.blocking import BlockingProducer
from mq.client.offset_store import LocalOffsetStore
from mq.commands import data_cmd
from tests.mq.fake_broker import ORDERS, Env, fake_env


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(fake_env()) as running,
    ):
        with BlockingProducer(running.namesrv) as producer:
            for i in range(6):
                producer.send(
                    Message("orders", f"m{i}".encode(), tags="even" if i % 2 == 0 else "odd")
                )
        yield running


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`mq consume --group` configures logging for its process (to stderr, loggers
    cached). Here it would cache loggers writing to pytest's capture file, which is
    closed after the test: drop its logs instead, uncached, and restore the defaults."""

    def quiet(level: str = "info") -> None:
        structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

    monkeypatch.setattr(data_cmd, "configure_logging", quiet)
    yield
    structlog.reset_defaults()


def mq(env: Env, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--namesrv", ",".join(env.namesrv)]) == 0
    return capsys.readouterr().out


def test_consume_as_a_group_member_commits_and_continues(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["consume", "--topic", "orders", "--group", "cli", "--json-lines"]
    first = [json.loads(line) for line in mq(env, capsys, *args, "--count", "4").splitlines()]
    assert len(first) == 4
    rest = [json.loads(line) for line in mq(env, capsys, *args, "--count", "2").splitlines()]
    assert sorted(m["body"] for m in first + rest) == [f"m{i}" for i in range(6)]
    listed = json.loads(mq(env, capsys, "admin", "group", "list", "--json"))
    assert {"group": "cli", "members": [], "model": None, "topics": ["orders"]} in listed
    described = json.loads(
        mq(env, capsys, "admin", "group", "describe", "--group", "cli", "--json")
    )
    assert described["lag"] == 0 and len(described["queues"]) == 8
    text = mq(env, capsys, "admin", "group", "describe", "--group", "cli")
    assert "total lag 0" in text and "consumer-offset" in text
    assert "group cli (model unknown: no member online), members: none" in text
    listed_text = mq(env, capsys, "admin", "group", "list")
    assert (
        "cli (model unknown: no member online) topics: orders; members: no members" in listed_text
    )


def test_reset_offset_then_consume_again_with_tags(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["consume", "--topic", "orders", "--group", "tagged", "--tags", "even", "--json-lines"]
    assert len(mq(env, capsys, *args, "--count", "3").splitlines()) == 3
    reset = json.loads(mq(env, capsys, "admin", "group", "reset-offset", "--group", "tagged",
                          "--topic", "orders", "--to", "first", "--json"))  # fmt: skip
    assert {r["offset"] for r in reset} == {0} and len(reset) == 8
    again = [json.loads(line) for line in mq(env, capsys, *args, "--count", "3").splitlines()]
    assert sorted(m["body"] for m in again) == ["m0", "m2", "m4"]
    text = mq(env, capsys, "admin", "group", "reset-offset", "--group", "tagged", "--topic",
              "orders", "--to", "1700000000000")  # fmt: skip
    assert "orders@g1#0 -> 0" in text


def test_a_second_broadcast_member_with_the_same_instance_name_is_refused(
    env: Env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = PushConsumer(env.namesrv, "bc", model="broadcasting", instance_name="x").offsets_path
    running = LocalOffsetStore(path, "bc")
    running.lock()  # another live member with that name on this host
    try:
        argv = ["consume", "--topic", "orders", "--group", "bc", "--broadcast"]
        argv += ["--instance-name", "x", "--count", "1", "--namesrv", env.namesrv[0]]
        assert main(argv) == 1
        assert "in use by another consumer" in capsys.readouterr().err
    finally:
        running.unlock()
    assert main([*argv[:-4], "--instance-name", "y", "--count", "1", *argv[-2:]]) == 0
    assert (tmp_path / ".mq" / "offsets").is_dir()


def test_broadcast_needs_a_group(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consume", "--topic", "orders", "--broadcast", "--namesrv", env.namesrv[0]]) == 2
    assert main(["consume", "--topic", "orders", "--from", "timestamp"]) == 2


@pytest.fixture(scope="module")
def bulk_env() -> Iterator[Env]:
    """Its own topic, so the messages sent here stay out of the `orders` tests above."""
    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(fake_env(topics={"bulk": ORDERS})) as running,
    ):
        yield running


def test_produce_sends_a_window_at_a_time_and_prints_results_in_send_order(
    bulk_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env = bulk_env
    lines = mq(env, capsys, "produce", "--topic", "bulk", "--count", "200", "--json-lines",
               "--window", "32", "--body", "same")  # fmt: skip
    results = [json.loads(line) for line in lines.splitlines()]
    assert len(results) == 200 and len({r["msg_id"] for r in results}) == 200
    # Send order: a producer's message ids grow with every message it makes.
    assert [r["msg_id"] for r in results] == sorted(r["msg_id"] for r in results)
    summary = mq(env, capsys, "produce", "--topic", "bulk", "--count", "50", "--window", "1")
    assert "sent 50 messages to bulk" in summary


def test_produce_reports_a_bad_topic_once_and_a_failed_send_with_what_was_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["produce", "--topic", "bad topic", "--namesrv", "127.0.0.1:9"]) == 2
    assert "invalid topic" in capsys.readouterr().err
    # Nothing listens on port 9 (discard, closed here): the first send fails.
    assert main(["produce", "--topic", "t", "--count", "5", "--namesrv", "127.0.0.1:9"]) != 0
    err = capsys.readouterr().err
    assert "sent 0 of 5 messages before a send failed" in err


def test_shrinking_a_topics_read_queues_is_refused_unless_forced(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewer read queues hide the messages of the queues dropped (RocketMQ's semantics):
    the command says so and how to shrink safely, instead of doing it silently."""
    ns = ["--namesrv", env.namesrv[0]]
    assert main(["admin", "topic", "create", "shrinking", "--queues", "8", *ns]) == 0
    assert main(["admin", "topic", "create", "shrinking", "--queues", "4", *ns]) == 1
    err = capsys.readouterr().err
    assert "would hide the messages of queues 4-7" in err and "--write-queues" in err
    argv = ["admin", "topic", "create", "shrinking", "--queues", "8", "--write-queues", "4"]
    assert main([*argv, *ns]) == 0
    assert "(4 written to)" in capsys.readouterr().out
    assert main(["admin", "topic", "create", "shrinking", "--queues", "4", "--force", *ns]) == 0


def test_a_tag_expression_that_cannot_be_used_is_a_clear_error(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in ([], ["--group", "cli-tags"]):
        argv = ["consume", "--topic", "orders", "--tags", "a || *", *extra]
        assert main([*argv, "--namesrv", env.namesrv[0]]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mq: error: --tags:") and "Traceback" not in err
