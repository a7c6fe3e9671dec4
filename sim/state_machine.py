"""The replicated state machine of the simulation: client operations, deduplicated.

Each NORMAL entry carries one client operation `c<client>:s<seq>` (plus padding, so
entries have a realistic size). A client retries an operation with the same sequence
number when it is unsure whether it committed, so the log may hold an operation twice;
the state machine applies it once, as an idempotent producer's broker would. Clients send
one operation at a time with increasing sequence numbers, so "already applied" is
"seq <= the last seq applied for that client".

The state lives in memory and is lost in a crash, except for a checkpoint written every
`CHECKPOINT_EVERY` applied entries (as the broker checkpoints its dispatch position): a
restarted node restores it and re-applies its committed log from there, telling the
core its `applied` index. Without checkpoints every restart would replay the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass

from raft.messages import Entry, EntryKind

CHECKPOINT_EVERY = 64


def encode_op(client: int, seq: int, pad_bytes: int = 0) -> bytes:
    return f"c{client}:s{seq}".encode() + b"." * pad_bytes


def decode_op(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"c"):
        return None
    head = data.split(b".", 1)[0]
    client, seq = head[1:].split(b":s", 1)
    return int(client), int(seq)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What survives a crash: the applied index, each client's last applied seq, and how
    many operations the applied state held (the operations themselves are append-only,
    so the state is their prefix of that length)."""

    applied_index: int
    op_count: int
    last_seq: tuple[tuple[int, int], ...]
    duplicates: int

    def encode(self) -> bytes:
        seqs = ",".join(f"{c}:{s}" for c, s in self.last_seq)
        return (
            f"applied={self.applied_index} ops={self.op_count} dup={self.duplicates} "
            f"last={seqs or '-'}\n"
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        fields = dict(part.split("=", 1) for part in data.decode().split())
        last = (
            ()
            if fields["last"] == "-"
            else tuple(
                (int(c), int(s)) for c, s in (pair.split(":") for pair in fields["last"].split(","))
            )
        )
        return cls(int(fields["applied"]), int(fields["ops"]), last, int(fields["dup"]))


class DedupStateMachine:
    def __init__(
        self, ops: list[tuple[int, int]] | None = None, checkpoint: Checkpoint | None = None
    ) -> None:
        """`ops` is the durable list the operations go to (kept across restarts);
        `checkpoint` the last checkpoint, whose prefix of `ops` is all that counts."""
        self.ops: list[tuple[int, int]] = ops if ops is not None else []
        if checkpoint is None:
            del self.ops[:]
            self.applied_index = 0
            self.duplicates = 0
            self._last_seq: dict[int, int] = {}
        else:
            del self.ops[checkpoint.op_count :]
            self.applied_index = checkpoint.applied_index
            self.duplicates = checkpoint.duplicates
            self._last_seq = dict(checkpoint.last_seq)

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

    def snapshot(self) -> bytes:
        """The whole state, for a leader to send to a follower whose log it compacted."""
        seqs = ",".join(f"{c}:{q}" for c, q in sorted(self._last_seq.items()))
        ops = ",".join(f"{c}:{q}" for c, q in self.ops)
        return f"{self.applied_index};{self.duplicates};{seqs};{ops}".encode()

    def install(self, data: bytes, index: int) -> None:
        """Replace the state with a snapshot taken at `index` (Ready.snapshot)."""
        applied, duplicates, seqs, ops = data.decode().split(";")
        assert int(applied) == index, "the snapshot is of the state at its index"
        pairs = [tuple(map(int, p.split(":"))) for p in seqs.split(",") if p]
        self._last_seq = {c: q for c, q in pairs}
        self.ops[:] = [(int(c), int(q)) for c, q in (p.split(":") for p in ops.split(",") if p)]
        self.applied_index = index
        self.duplicates = int(duplicates)

    def checkpoint_due(self) -> bool:
        return self.applied_index % CHECKPOINT_EVERY == 0

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.applied_index,
            len(self.ops),
            tuple(sorted(self._last_seq.items())),
            self.duplicates,
        )
