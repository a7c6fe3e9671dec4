"""Connections that carry `mq.protocol` frames: a trio server loop and an anyio client.

The modules are imported directly (`mq.rpc.client`, `mq.rpc.server`) so that a client
running under asyncio never imports trio.
"""
