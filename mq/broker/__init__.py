"""Broker: a sans-IO core and a thin trio server."""
