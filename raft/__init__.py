"""Raft consensus core, sans-IO: no sockets, no clock, no trio."""
