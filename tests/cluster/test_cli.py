"""The `mq` command line against a cluster it started itself (`mq cluster up`), every
command run as a subprocess, the way a user runs them: status, produce / consume with
--json-lines, kill-node / start-node, down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mq import cluster as local
from tests.cluster.harness import BROKER_ARGS, CLUSTERS_KEY, DEADLINE_S, LocalCluster, wait_until

CLI_TIMEOUT_S = 2 * DEADLINE_S


def mq(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "mq.cli", *args, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    if check:
        assert done.returncode == 0, f"mq {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def cluster_up(directory: Path, *extra: str) -> LocalCluster:
    """`mq cluster up`, adopted by the harness (which kills whatever is left at the end)."""
    args = [f"--broker-arg={arg}" for arg in BROKER_ARGS]
    done = mq(directory, "cluster", "up", *args, *extra, check=False)
    cluster = LocalCluster.adopt(directory)
    if done.returncode != 0 or "leader" not in done.stdout:
        cluster.destroy()
        raise AssertionError(f"mq cluster up: {done.stdout}{done.stderr}")
    return cluster


def status_json(directory: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(mq(directory, "cluster", "status", "--json").stdout)
    return parsed


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    directory = tmp_path_factory.mktemp("cli") / "cluster"
    cluster: LocalCluster | None = None
    try:
        cluster = cluster_up(directory)
        yield cluster
    finally:
        if cluster is None:  # up failed half-way: still stop what it started
            try:
                cluster = LocalCluster.adopt(directory)
            except FileNotFoundError:
                cluster = None
        if cluster is not None:
            mq(directory, "cluster", "down", check=False)
            cluster.destroy()


@pytest.fixture
def cli(request: pytest.FixtureRequest, cli_cluster: LocalCluster) -> LocalCluster:
    request.node.stash.setdefault(CLUSTERS_KEY, []).append(cli_cluster)  # logs on failure
    cli_cluster.reload()
    return cli_cluster


def settled(directory: Path) -> dict[str, Any] | None:
    """`mq cluster status --json` once every group shows one leader that all of its
    nodes follow in one term (None while an election is under way)."""
    status = status_json(directory)
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in status["nodes"]:
        groups.setdefault(node["group"], []).append(node)
    for nodes in groups.values():
        leaders = [n for n in nodes if n["role"] == "leader"]
        if len(leaders) != 1 or len({n["term"] for n in nodes}) != 1:
            return None
        if any(n["leader"] != leaders[0]["address"] for n in nodes):
            return None
    return status


def test_status_json_lists_every_node_with_group_node_id_address_role_term_and_pid(
    cli: LocalCluster,
) -> None:
    status = wait_until(lambda: settled(cli.directory), "a settled cluster status")
    assert status["nameservers"] == cli.namesrv
    nodes = status["nodes"]
    assert len(nodes) == 3
    for node in nodes:
        assert {"group", "node_id", "address", "role", "term", "pid"} <= node.keys(), node
    by_id = {n["node_id"]: n for n in nodes}
    for proc in cli.spec.brokers():
        node = by_id[proc.node_id]
        assert (node["group"], node["address"], node["pid"]) == (
            proc.group,
            proc.address,
            proc.pid,
        )
        assert isinstance(node["term"], int) and node["term"] >= 1
    assert sorted(n["role"] for n in nodes) == ["follower", "follower", "leader"]
    leader = next(n for n in nodes if n["role"] == "leader")
    assert cli.name_of(leader["address"]) in cli.brokers()


def test_produce_and_consume_json_lines_round_trip(cli: LocalCluster) -> None:
    cli.leader()
    produced = [
        json.loads(line)
        for line in mq(
            cli.directory, "produce", "--topic", "cli-rt", "--count", "12", "--json-lines"
        ).stdout.splitlines()
    ]
    assert len(produced) == 12
    assert all(not p["duplicate"] and p["group"] == "broker-a" for p in produced)
    assert len({p["msg_id"] for p in produced}) == 12

    consumed = [
        json.loads(line)
        for line in mq(
            cli.directory, "consume", "--topic", "cli-rt", "--json-lines"
        ).stdout.splitlines()
    ]
    assert len(consumed) == 12
    sent = {p["msg_id"]: (i, p) for i, p in enumerate(produced)}
    for message in consumed:
        i, p = sent[message["msg_id"]]
        assert message["topic"] == "cli-rt"
        assert (message["group"], message["queue"], message["queue_offset"]) == (
            p["group"],
            p["queue"],
            p["queue_offset"],
        )
        assert message["body"] == f"message {i}"
    assert sorted(m["msg_id"] for m in consumed) == sorted(sent)


def test_consume_filters_by_tag_and_reads_keys(cli: LocalCluster) -> None:
    cli.leader()
    for tag in ("a", "b"):
        mq(cli.directory, "produce", "--topic", "cli-tags", "--count", "3", "--tag", tag,
           "--key", f"key-{tag}", "--body", f"tagged {tag}")  # fmt: skip
    out = mq(cli.directory, "consume", "--topic", "cli-tags", "--tags", "b", "--json-lines")
    consumed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(m["tags"], m["keys"], m["body"]) for m in consumed] == [
        ("b", ["key-b"], "tagged b")
    ] * 3


def test_consume_as_a_group_continues_where_the_group_left_off(cli: LocalCluster) -> None:
    cli.leader()
    mq(cli.directory, "produce", "--topic", "cli-group", "--count", "10")
    args = ["consume", "--topic", "cli-group", "--group", "cli-g", "--json-lines"]
    first = mq(cli.directory, *args, "--count", "6").stdout.splitlines()
    rest = mq(cli.directory, *args, "--count", "4").stdout.splitlines()
    bodies = sorted(json.loads(line)["body"] for line in first + rest)
    assert bodies == sorted(f"message {i}" for i in range(10))
    described = json.loads(
        mq(cli.directory, "admin", "group", "describe", "--group", "cli-g", "--json").stdout
    )
    assert described["lag"] == 0
    assert sum(q["consumer_offset"] for q in described["queues"]) == 10
    mq(cli.directory, "admin", "group", "reset-offset", "--group", "cli-g",
       "--topic", "cli-group", "--to", "first")  # fmt: skip
    again = mq(cli.directory, *args, "--count", "10").stdout.splitlines()
    assert sorted(json.loads(line)["body"] for line in again) == bodies


def test_a_group_member_stopped_with_sigterm_commits_what_it_printed(cli: LocalCluster) -> None:
    """A service manager stops it with SIGTERM: it must commit and leave its group as
    on ^C, or the next member gets everything it printed again."""
    cli.leader()
    mq(cli.directory, "produce", "--topic", "cli-term", "--count", "5")
    member = subprocess.Popen(
        [sys.executable, "-m", "mq.cli", "consume", "--topic", "cli-term", "--group",
         "cli-term-g", "--json-lines", "--dir", str(cli.directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert member.stdout is not None
        printed = [json.loads(member.stdout.readline()) for _ in range(5)]
        member.send_signal(signal.SIGTERM)
        assert member.wait(timeout=CLI_TIMEOUT_S) == 0, member.stderr and member.stderr.read()
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()
    assert sorted(m["body"] for m in printed) == [f"message {i}" for i in range(5)]
    described = json.loads(
        mq(cli.directory, "admin", "group", "describe", "--group", "cli-term-g", "--json").stdout
    )
    assert described["lag"] == 0 and described["members"] == []


def test_kill_node_and_start_node_show_in_status(cli: LocalCluster) -> None:
    leader = cli.leader()
    follower = next(n for n in cli.brokers() if n != leader)
    old_pid = cli.pid(follower)

    mq(cli.directory, "cluster", "kill-node", follower)
    wait_until(lambda: not local.alive(old_pid), f"{follower} to exit")
    node_id = cli.proc(follower).node_id
    down = next(n for n in status_json(cli.directory)["nodes"] if n["node_id"] == node_id)
    assert (down["role"], down["pid"]) == ("down", None)
    # Two of three nodes still make a majority: writes go on.
    wait_until(
        lambda: (
            mq(
                cli.directory, "produce", "--topic", "cli-kill", "--count", "3", check=False
            ).returncode
            == 0
        ),
        "a produce with one follower down",
    )

    assert "started" in mq(cli.directory, "cluster", "start-node", follower).stdout
    cli.reload()
    assert cli.pid(follower) != old_pid
    cli.wait_answering(follower)

    def back_as_follower() -> dict[str, Any] | None:
        nodes = status_json(cli.directory)["nodes"]
        node = next(n for n in nodes if n["node_id"] == node_id)
        return node if node["role"] == "follower" and node["leader"] else None

    node = wait_until(back_as_follower, f"{follower} to rejoin as a follower")
    assert node["pid"] == cli.pid(follower)
    cli.wait_caught_up(follower, "cli-kill", queues=8)


def test_up_with_two_groups_refuses_to_start_twice_and_down_stops_every_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    directory = tmp_path / "cluster"
    cluster = cluster_up(directory, "--groups", "2")
    request.node.stash.setdefault(CLUSTERS_KEY, []).append(cluster)
    try:
        status = wait_until(lambda: settled(directory), "both groups to settle")
        assert sorted((n["group"], n["node_id"]) for n in status["nodes"]) == [
            (g, i) for g in ("broker-a", "broker-b") for i in (1, 2, 3)
        ]
        again = mq(directory, "cluster", "up", check=False)
        assert again.returncode == 1 and "already running" in again.stdout
        pids = [p.pid for p in cluster.spec.processes]
        assert len(pids) == 7 and all(local.alive(pid) for pid in pids)
        assert "stopped 7 processes" in mq(directory, "cluster", "down").stdout
        assert not any(local.alive(pid) for pid in pids)
        assert [n["role"] for n in status_json(directory)["nodes"]] == ["down"] * 6
    finally:
        cluster.destroy()


def test_a_group_over_its_disk_refuse_ratio_refuses_sends_clearly_and_stays_up(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Any real disk is fuller than 0.0001 %: every node refuses sends, as a full one would.
    directory = tmp_path / "cluster"
    cluster = cluster_up(directory, "--broker-arg=--disk-refuse-ratio=0.000001")
    request.node.stash.setdefault(CLUSTERS_KEY, []).append(cluster)
    try:
        wait_until(
            lambda: any(n.get("disk_full") == ["sends"] for n in status_json(directory)["nodes"]),
            what="a node to report its disk full",
        )
        done = mq(directory, "produce", "--topic", "full", "--count", "1", check=False)
        assert done.returncode != 0
        assert "disk is full" in done.stderr, done.stderr
        text = mq(directory, "cluster", "status").stdout
        assert "DISK FULL (sends stopped)" in text
        assert all(cluster.alive(name) for name in cluster.brokers())
    finally:
        mq(directory, "cluster", "down", check=False)
        cluster.destroy()
