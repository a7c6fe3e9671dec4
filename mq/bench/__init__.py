"""Benchmarks behind `mq bench ...`: each prints one JSON object with its baseline."""
