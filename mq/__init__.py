"""A RocketMQ-style message queue whose broker groups replicate their CommitLog with Raft."""

__version__ = "0.1.0"
