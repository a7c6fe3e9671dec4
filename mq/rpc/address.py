"""Network addresses as the cluster writes them: "host:port", "[v6-host]:port"."""

from __future__ import annotations


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[::1]:port") into host and port; ValueError if malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address must look like host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
