"""The `mq` command line: one entry point, one subcommand per thing a user does."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mq import __version__
from sim.cli import add_sim_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_sim_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
