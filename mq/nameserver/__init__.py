"""Stateless route registry: brokers register, clients ask for routes."""
