"""`python -m mq.broker`: run one broker node in the foreground until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Sequence
from typing import Any

import structlog
import trio

from mq.broker.commands import CommandError
from mq.broker.config import BrokerConfig, ConfigError, load_config
from mq.broker.core import InstallDiskFullError
from mq.broker.hard_state import HardStateError
from mq.broker.raft_codec import RaftCodecError
from mq.broker.server import BrokerServer, DataDirLockedError, run_broker
from mq.logs import LOG_LEVELS, configure_logging
from mq.rpc.server import raise_open_files_limit
from storage.consume_queue import ConsumeQueueError
from storage.entry_log import EntryLogError
from storage.errors import StorageError
from storage.index_file import IndexFileError

_log = structlog.get_logger("mq.broker")

# flag -> config key; values are only applied when the flag is given.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--cluster", "cluster", {"help": "cluster name"}),
    ("--group", "group", {"help": "broker group (RocketMQ broker name); one Raft group"}),
    ("--node-id", "node_id", {"type": int, "help": "this node's id within the group"}),
    ("--listen", "listen", {"help": "host:port for clients and peers (port 0: any free)"}),
    ("--peers", "peers", {"help": "every voter as id=host:port,... (this node included)"}),
    ("--data", "data_dir", {"help": "data directory"}),
    ("--namesrv", "namesrv", {"help": "NameServer addresses, host:port[,host:port]"}),
    ("--flush", "flush", {"choices": ["sync", "async"], "help": "log flush mode"}),
    ("--segment-bytes", "segment_bytes", {"type": int, "help": "CommitLog segment size"}),
    ("--election-ms", "election_ms", {"type": int, "help": "Raft election timeout"}),
    ("--heartbeat-ms", "heartbeat_ms", {"type": int, "help": "Raft heartbeat interval"}),
    ("--tick-ms", "tick_ms", {"type": int, "help": "Raft tick length"}),
    (
        "--register-interval-ms",
        "register_interval_ms",
        {"type": int, "help": "how often to re-register with every NameServer"},
    ),
    ("--send-timeout-ms", "send_timeout_ms", {"type": int, "help": "replication timeout"}),
    (
        "--disk-refuse-ratio",
        "disk_refuse_ratio",
        {"type": float, "help": "refuse sends while the disk is fuller than this (0-1]"},
    ),
    (
        "--retention-ms",
        "retention_ms",
        {"type": int, "help": "delete CommitLog segments older than this (default 72 h)"},
    ),
    (
        "--disk-retention-ratio",
        "disk_retention_ratio",
        {"type": float, "help": "delete the oldest segments while the disk is fuller than this"},
    ),
    (
        "--retention-check-interval-ms",
        "retention_check_interval_ms",
        {"type": int, "help": "how often to look for segments to delete"},
    ),
    (
        "--raft-index-chunk-entries",
        "raft_index_chunk_entries",
        {"type": int, "help": "committed Raft entries per sealed chunk of raft-index/"},
    ),
    (
        "--auto-create-topics",
        "auto_create_topics",
        {"action": argparse.BooleanOptionalAction, "help": "create unknown topics on send"},
    ),
    (
        "--join",
        "join",
        {
            "action": "store_true",
            "help": "this node joins an existing group (its disk was replaced): no vote "
            "or campaign until a leader caught it up",
        },
    ),
    ("--log-level", "log_level", {"choices": LOG_LEVELS, "help": "log level"}),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mq.broker",
        description="Run one broker node: a member of a Raft-replicated broker group.",
        epilog="Flags override the --config TOML file, whose keys are documented in docs/broker.md.",
    )
    parser.add_argument("--config", help="TOML file with the node's settings")
    for flag, key, options in _FLAGS:
        parser.add_argument(flag, dest=key, default=None, **options)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> BrokerConfig:
    args = build_parser().parse_args(argv)
    overrides = {
        key: getattr(args, key) for _f, key, _o in _FLAGS if getattr(args, key) is not None
    }
    return load_config(args.config, overrides)


async def _main(config: BrokerConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server: BrokerServer = await nursery.start(partial_run(config))
            print(
                f"mq broker {config.group}/{config.node_id} listening on {server.address}",
                flush=True,
            )
            async for signum in signals:
                _log.info("broker_stopping", signal=signal.Signals(signum).name)
                # A leader hands over first, unless a second signal says hurry.
                with trio.CancelScope() as hand_over:
                    nursery.start_soon(_cancel_on_next_signal, signals, hand_over)
                    await server.hand_over()
                await server.release_held_pulls()
                nursery.cancel_scope.cancel()
                break


async def _cancel_on_next_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def partial_run(config: BrokerConfig) -> Any:
    async def run(task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED) -> None:
        await run_broker(config, task_status=task_status)

    return run


_DAMAGED_DATA = (
    StorageError,
    EntryLogError,
    ConsumeQueueError,
    IndexFileError,
    HardStateError,
    RaftCodecError,
    CommandError,
)
"""What a node's own files can raise when they are damaged or were written with another
configuration: said in one line, not a traceback (the log keeps the traceback)."""

GC_GEN0_THRESHOLD = 100_000
"""Allocations between young-generation collections (CPython's default is 700)."""


def tune_gc() -> None:
    """Collect cyclic garbage less often. The request path allocates short-lived objects
    that reference counting frees at once, so the cycle collector mostly scans live
    ones: at CPython's defaults a loaded broker paused 3-8 ms for a collection every few
    seconds, inside whatever send was in flight (a p99.9 cost); with this it did none in
    a 5 s run. Memory cost: garbage cycles live up to 100,000 allocations longer.
    Objects alive after start-up (imported modules, the config) are frozen out of every
    collection."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    raise_open_files_limit()
    tune_gc()
    failure: BaseException | None = None
    stopped: BaseException | None = None
    damaged: BaseException | None = None
    try:
        trio.run(_main, config)
    except* InstallDiskFullError as group:
        stopped = group.exceptions[0]
    except* (OSError, DataDirLockedError) as group:  # port taken, data dir in use, ...
        failure = group.exceptions[0]
    except* _DAMAGED_DATA as group:
        damaged = group.exceptions[0]
    if stopped is not None:
        _log.error("snapshot_install_disk_full", error=str(stopped))
        print(
            f"broker stopped: no room on the disk to install the leader's snapshot "
            f"({stopped}); free space and start it again",
            file=sys.stderr,
        )
        return 1
    if failure is not None:
        print(f"broker failed to start: {failure}", file=sys.stderr)
        return 1
    if damaged is not None:
        _log.error("broker_data_damaged", data_dir=config.data_dir, error=str(damaged),
                   exc_info=damaged)  # fmt: skip
        print(
            f"broker stopped: the data under {config.data_dir} is damaged or does not "
            f"match this node's configuration: {type(damaged).__name__}: {damaged}\n"
            "Restore the file named (or the configuration), or give the node an empty "
            "data directory and start it with --join so that it copies the group's data "
            '(docs/broker.md, "Replacing a node\'s disk"; mq cluster replace-disk).',
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
