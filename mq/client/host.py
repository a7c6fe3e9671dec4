"""This host's address as producers stamp it on messages (born host, message ids)."""

from __future__ import annotations

import functools
import ipaddress
import socket


@functools.cache
def local_ipv4() -> str:
    """A non-loopback IPv4 address of this host if name resolution gives one, else
    127.0.0.1. Resolves our own host name only: no packet leaves the machine."""
    try:
        candidates = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        candidates = []
    for candidate in candidates:
        try:
            if not ipaddress.IPv4Address(candidate).is_loopback:
                return candidate
        except ValueError:
            continue
    return "127.0.0.1"
