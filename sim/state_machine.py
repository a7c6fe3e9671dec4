"""The replicated state machine of the simulation: client operations, deduplicated.

Each NORMAL entry carries one client operation `c<client>:s<seq>` (plus padding, so
entries have a realistic size). A client retries an operation with the same sequence
number when it is unsure whether it committed, so the log may hold an operation twice;
the state machine applies it once, as an idempotent producer's broker would. Clients send
one operation at a time with increasing sequence numbers, so "already applied" is
"seq <= the last seq applied for that client".

The state machine lives in memory and is lost in a crash; a restarted node rebuilds it
by re-applying its committed log from index 1 (the simulation does not compact logs).
"""

from __future__ import annotations

from raft.messages import Entry, EntryKind


def encode_op(client: int, seq: int, pad_bytes: int = 0) -> bytes:
    return f"c{client}:s{seq}".encode() + b"." * pad_bytes


def decode_op(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"c"):
        return None
    head = data.split(b".", 1)[0]
    client, seq = head[1:].split(b":s", 1)
    return int(client), int(seq)


class DedupStateMachine:
    def __init__(self) -> None:
        self.applied_index = 0
        self.ops: list[tuple[int, int]] = []
        self.duplicates = 0
        self._last_seq: dict[int, int] = {}

    def apply(self, entry: Entry) -> tuple[int, int] | None:
        """Apply one committed entry; returns the (client, seq) it carried, if any."""
        assert entry.index == self.applied_index + 1, "apply in index order"
        self.applied_index = entry.index
        if entry.kind != EntryKind.NORMAL or not entry.data:
            return None
        op = decode_op(entry.data)
        if op is None:
            return None
        client, seq = op
        if seq <= self._last_seq.get(client, 0):
            self.duplicates += 1
            return op
        self._last_seq[client] = seq
        self.ops.append(op)
        return op
