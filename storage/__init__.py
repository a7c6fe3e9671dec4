"""The message store: CommitLog, ConsumeQueue, IndexFile, flush, recovery, retention."""
