"""`mq cluster status`: what each node says of itself, a full disk included."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from mq import cluster as local
from mq.commands import cluster_cmd
from tests.mq.fake_broker import fake_env


async def test_a_node_reports_what_a_full_disk_holds_back() -> None:
    async with fake_env(groups=["g1"]) as env:
        group = env.group("g1")
        group.disk_full = ("dispatch",)
        node = group.node(0)
        proc = local.ProcessSpec(
            "broker-a-1", "broker", node.address, [], "", group="g1", node_id=0, pid=os.getpid()
        )
        status = await cluster_cmd.node_status(proc)
        assert status["role"] == "leader" and status["disk_full"] == ["dispatch"]
        group.disk_full = ()
        assert (await cluster_cmd.node_status(proc))["disk_full"] == []


def test_status_prints_a_full_disk_a_stalled_loop_and_a_node_not_caught_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [
        {"group": "broker-a", "node_id": 1, "address": "127.0.0.1:1", "pid": 7,
         "role": "leader", "term": 3, "disk_full": ["log append"]},
        {"group": "broker-a", "node_id": 2, "address": "127.0.0.1:2", "pid": 8,
         "role": "follower", "term": 3, "disk_full": [], "loop_lag_ms": 99.0,
         "synced": False, "joining": True},
        {"group": "broker-a", "node_id": 3, "address": "127.0.0.1:3", "pid": 9,
         "role": "follower", "term": 3, "disk_full": [], "loop_lag_ms": 310.4},
    ]  # fmt: skip
    spec = local.ClusterSpec("/nowhere", ["127.0.0.1:9"])
    monkeypatch.setattr(local.ClusterSpec, "load", staticmethod(lambda directory: spec))

    async def statuses(_spec: local.ClusterSpec) -> list[dict[str, object]]:
        return nodes

    monkeypatch.setattr(cluster_cmd, "node_statuses", statuses)
    assert cluster_cmd._status(argparse.Namespace(dir="/nowhere", json=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("DISK FULL (log append stopped)")
    assert "DISK" not in lines[1] and "STALL" not in lines[0] + lines[1]
    assert lines[1].endswith("NOT CAUGHT UP (no vote yet)")
    assert "CAUGHT" not in lines[0] + lines[2]
    assert lines[2].endswith("LOOP STALLED 310 ms lately")
    assert cluster_cmd._status(argparse.Namespace(dir="/nowhere", json=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nodes"][0]["disk_full"] == ["log append"]
