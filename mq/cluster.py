"""A local cluster on one machine: a NameServer and 3 broker nodes per group, as processes.

`mq cluster up` writes `cluster.json` into the cluster directory: every process with its
command line, address, data directory, log file and pid. `down`, `status`, `kill-node`
and `start-node` read it back, so the cluster outlives the command that started it and
tests can kill -9 and restart single nodes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLUSTER_FILE = "cluster.json"
LAPTOP_BROKER_TOML = """\
# Written by `mq cluster up`: sizes for a laptop (the defaults are RocketMQ's production ones).
segment_bytes = 268435456       # 256 MiB CommitLog segments
cq_units_per_segment = 300000   # 6 MB ConsumeQueue files
index_slots = 500000            # a 42 MB IndexFile instead of 420 MB
index_entries_max = 2000000
election_ms = 500               # loopback: a failover in about a second (randomised 500-1000 ms)
"""
CLUSTER_NAME = "DefaultCluster"


@dataclass
class ProcessSpec:
    name: str
    kind: str  # "nameserver" | "broker"
    address: str
    argv: list[str]
    log: str
    group: str = ""
    node_id: int = 0
    data: str = ""
    pid: int = 0


@dataclass
class ClusterSpec:
    directory: str
    nameservers: list[str]
    processes: list[ProcessSpec] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.directory) / CLUSTER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: str) -> ClusterSpec:
        path = Path(directory) / CLUSTER_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"no cluster in {directory} (run `mq cluster up --dir {directory}`)"
            )
        raw: dict[str, Any] = json.loads(path.read_text())
        procs = [ProcessSpec(**p) for p in raw.pop("processes")]
        return cls(processes=procs, **raw)

    def process(self, name: str) -> ProcessSpec:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(f"no process {name!r}; known: {[p.name for p in self.processes]}")

    def brokers(self) -> list[ProcessSpec]:
        return [p for p in self.processes if p.kind == "broker"]


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def group_name(index: int) -> str:
    return f"broker-{chr(ord('a') + index)}"


def plan(
    directory: str,
    groups: int = 1,
    nodes: int = 3,
    flush: str = "sync",
    extra_broker_args: list[str] | None = None,
) -> ClusterSpec:
    """Decide ports, directories and command lines; starts nothing."""
    root = Path(directory).resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    config = root / "broker.toml"
    config.write_text(LAPTOP_BROKER_TOML)
    ports = free_ports(1 + groups * nodes)
    ns_addr = f"127.0.0.1:{ports[0]}"
    python = sys.executable
    spec = ClusterSpec(str(root), [ns_addr])
    spec.processes.append(
        ProcessSpec(
            name="nameserver",
            kind="nameserver",
            address=ns_addr,
            argv=[python, "-m", "mq.nameserver", "--host", "127.0.0.1", "--port", str(ports[0])],
            log=str(root / "logs" / "nameserver.log"),
        )
    )
    for g in range(groups):
        group = group_name(g)
        addrs = {n: f"127.0.0.1:{ports[1 + g * nodes + n - 1]}" for n in range(1, nodes + 1)}
        peers = ",".join(f"{n}={a}" for n, a in addrs.items())
        for n, addr in addrs.items():
            name = f"{group}-{n}"
            data = root / name
            argv = [
                python, "-m", "mq.broker",
                "--cluster", CLUSTER_NAME,
                "--group", group,
                "--node-id", str(n),
                "--listen", addr,
                "--peers", peers,
                "--data", str(data),
                "--namesrv", ns_addr,
                "--config", str(config),
                "--flush", flush,
                *(extra_broker_args or []),
            ]  # fmt: skip
            spec.processes.append(
                ProcessSpec(
                    name=name,
                    kind="broker",
                    address=addr,
                    argv=argv,
                    log=str(root / "logs" / f"{name}.log"),
                    group=group,
                    node_id=n,
                    data=str(data),
                )
            )
    return spec


def start_process(proc: ProcessSpec) -> int:
    """Start one process detached from our session (it outlives `mq cluster up`)."""
    with open(proc.log, "ab") as log:
        child = subprocess.Popen(
            proc.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proc.pid = child.pid
    return child.pid


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_process(proc: ProcessSpec, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal a process and wait for it to exit (SIGKILL after `timeout_s`)."""
    if not alive(proc.pid):
        return
    os.kill(proc.pid, sig)
    deadline = time.monotonic() + timeout_s
    while alive(proc.pid):
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
        time.sleep(0.02)
