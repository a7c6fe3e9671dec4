"""`python -m mq.nameserver`: run one NameServer in the foreground until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from mq.logs import LOG_LEVELS, configure_logging
from mq.nameserver.server import PORT_DEFAULT, SCAN_INTERVAL_MS_DEFAULT, run_nameserver
from mq.route import BROKER_EXPIRE_MS_DEFAULT
from mq.rpc.server import raise_open_files_limit

_log = structlog.get_logger("mq.nameserver")


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT. Handled here rather than left to KeyboardInterrupt:
    a process started from a background job or under nohup inherits SIGINT ignored,
    and `mq cluster down` (like any service manager) stops processes with SIGTERM."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_nameserver(
                    args.host,
                    args.port,
                    expire_ms=args.expire_ms,
                    scan_interval_ms=args.scan_interval_ms,
                )
            )
            async for signum in signals:
                _log.info("nameserver_stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mq.nameserver",
        description="Run a NameServer: brokers register with it, clients ask it for routes.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=PORT_DEFAULT,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--expire-ms",
        type=int,
        default=BROKER_EXPIRE_MS_DEFAULT,
        help="forget a broker node silent for this long (default: %(default)s)",
    )
    parser.add_argument(
        "--scan-interval-ms",
        type=int,
        default=SCAN_INTERVAL_MS_DEFAULT,
        help="how often to look for silent brokers (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.expire_ms <= 0 or args.scan_interval_ms <= 0:
        print("--expire-ms and --scan-interval-ms must be positive", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    raise_open_files_limit()
    listen_error: OSError | None = None
    try:
        trio.run(_serve_until_signalled, args)
    except* KeyboardInterrupt:
        pass  # Ctrl-C / SIGINT is how a foreground server is stopped
    except* OSError as group:  # e.g. the port is taken: say so, without a traceback
        listen_error = group.exceptions[0]  # type: ignore[assignment]
    if listen_error is not None:
        print(f"cannot listen on {args.host}:{args.port}: {listen_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
