"""The `mq` command line: one entry point, one subcommand group per thing a user does."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mq import __version__
from mq.client.errors import MQClientError
from mq.commands import bench_cmd, cluster_cmd, data_cmd, demo_cmd
from mq.rpc.errors import TransportError
from sim.cli import add_sim_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cluster_cmd.register(commands)
    data_cmd.register(commands)
    add_sim_commands(commands)
    demo_cmd.register(commands)
    bench_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result: int = handler(args)
    except (MQClientError, TransportError, FileNotFoundError, KeyError) as exc:
        print(f"mq: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output left (`mq consume ... | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    return result


if __name__ == "__main__":
    sys.exit(main())
