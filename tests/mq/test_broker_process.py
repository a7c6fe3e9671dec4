"""`python -m mq.broker` as a real process: TOML config plus flags, the listening line,
SIGTERM is a clean exit, and kill -9 loses nothing acknowledged. Real clock: every
wait polls with a deadline."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from mq.broker import __main__ as broker_main
from mq.broker.__main__ import parse_config
from mq.broker.config import BrokerConfig, ConfigError
from mq.broker.core import InstallDiskFullError
from mq.protocol import RequestCode, request
from mq.rpc.client import connect
from tests.mq.broker_cluster import send_request

DEADLINE_S = 20

CONFIG = """
cluster = "c1"
group = "solo"
listen = "127.0.0.1:0"
election-ms = 100
heartbeat_ms = 20
segment_bytes = 1048576
cq_units_per_segment = 1024
index_slots = 1024
index_entries_max = 4096
log_level = "warning"
"""


class BrokerProcess:
    def __init__(self, config: Path, data: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mq.broker", "--config", str(config), "--data", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    async def address(self) -> str:
        assert self.proc.stdout is not None
        with trio.fail_after(DEADLINE_S):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline)
        match = re.search(r"listening on (\S+)", line)
        assert match, f"unexpected first line {line!r}"
        return match.group(1)

    async def wait(self) -> int:
        with trio.fail_after(DEADLINE_S):
            return await trio.to_thread.run_sync(self.proc.wait)


async def send_when_leader(address: str, body: bytes) -> dict[str, object]:
    async with connect(address) as conn:
        with trio.fail_after(DEADLINE_S):
            while True:
                response = await conn.request(send_request("t", [body]), check=False)
                if response.ok:
                    return dict(response.fields)
                await trio.sleep(0.05)


async def bodies(address: str) -> int:
    async with connect(address) as conn:
        with trio.fail_after(DEADLINE_S):
            while True:
                status = (await conn.request(request(RequestCode.GET_BROKER_STATUS))).fields
                if status["role"] == "leader" and status["applied_index"] == status["commit_index"]:
                    break
                await trio.sleep(0.05)
        response = await conn.request(
            request(RequestCode.GET_MAX_OFFSET, {"topic": "t", "queue_id": 0})
        )
        return int(response.fields["offset"])


async def test_a_broker_process_stops_cleanly_and_keeps_what_it_acknowledged(
    tmp_path: Path,
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    broker = BrokerProcess(config, data)
    try:
        address = await broker.address()
        assert (await send_when_leader(address, b"one"))["queue_offset"] == 0
        broker.proc.send_signal(signal.SIGTERM)
        assert await broker.wait() == 0

        broker = BrokerProcess(config, data)
        address = await broker.address()
        assert (await send_when_leader(address, b"two"))["queue_offset"] == 1
        broker.proc.kill()  # kill -9: no chance to flush anything more
        await broker.wait()

        broker = BrokerProcess(config, data)
        address = await broker.address()
        assert await bodies(address) == 2
    finally:
        if broker.proc.poll() is None:
            broker.proc.kill()
            broker.proc.wait()


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG + '\n[peers]\n1 = "127.0.0.1:7001"\n2 = "127.0.0.1:7002"\n')
    parsed = parse_config(
        ["--config", str(config), "--node-id", "2", "--flush", "async", "--namesrv", "a:1,b:2"]
    )
    assert parsed.node_id == 2
    assert parsed.flush.value == "async"
    assert parsed.namesrv == ("a:1", "b:2")
    assert parsed.peers == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002"}
    assert parsed.election_ms == 100 and parsed.group == "solo"
    # The default tick (50 ms) comes down to the file's 20 ms heartbeat.
    assert parsed.tick_ms == 20 and parsed.raft_config().election_ticks == 5


def test_join_comes_from_the_flag_or_the_file_and_reaches_raft(tmp_path: Path) -> None:
    assert not parse_config([]).join
    assert parse_config(["--join"]).raft_config().join_existing
    config = tmp_path / "node.toml"
    config.write_text(CONFIG + "\njoin = true\n")
    assert parse_config(["--config", str(config)]).join
    config.write_text(CONFIG + '\njoin = "yes"\n')
    with pytest.raises(ConfigError, match="join"):
        parse_config(["--config", str(config)])


def test_the_default_tick_fits_a_short_heartbeat_and_an_explicit_one_is_checked() -> None:
    assert BrokerConfig().tick_ms == 50
    assert BrokerConfig(heartbeat_ms=20).tick_ms == 20
    assert BrokerConfig(tick_ms=10, heartbeat_ms=20).tick_ms == 10
    with pytest.raises(ConfigError, match="tick_ms"):
        BrokerConfig(tick_ms=30, heartbeat_ms=20)


def test_a_full_disk_in_a_snapshot_install_stops_the_broker_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def install_fails(*_args: object) -> None:
        raise InstallDiskFullError("/data/installing", 4096)

    monkeypatch.setattr(broker_main.trio, "run", install_fails)
    monkeypatch.setattr(broker_main, "tune_gc", lambda: None)  # not in the test process
    monkeypatch.setattr(broker_main, "configure_logging", lambda level: None)
    assert broker_main.main(["--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no room on the disk to install the leader's snapshot" in err
    assert "failed to start" not in err


def test_a_damaged_hard_state_stops_the_broker_with_one_line_naming_the_way_out(
    tmp_path: Path,
) -> None:
    """Not a traceback: what is damaged, where, and what to do."""
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir()
    (data / "hardstate").write_bytes(b"garbage, not a hard state")
    done = subprocess.run(
        [sys.executable, "-m", "mq.broker", "--config", str(config), "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    (said,) = [line for line in lines if line.startswith("broker stopped:")]
    assert said.startswith(f"broker stopped: the data under {data} is damaged")
    assert "HardStateError" in said and "--join" in done.stderr
    assert not [line for line in lines if line.startswith("Traceback")]
    (logged,) = [json.loads(line) for line in lines if line.startswith("{")]
    assert logged["event"] == "broker_data_damaged"  # with the traceback, for whoever digs
