"""Deterministic simulator: virtual time, network and disk faults, workloads, checkers."""
