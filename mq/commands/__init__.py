"""Subcommands of `mq`; each module adds its own parser with `register(subparsers)`."""
