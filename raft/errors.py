"""Why a request to the Raft core was refused; the caller decides whether to retry."""

from __future__ import annotations


class RaftError(Exception):
    """Base of every error the core raises on purpose."""


class NotLeaderError(RaftError):
    """Only the leader accepts proposals. `leader_id` is the leader this node believes
    in (None while there is none or it is changing), so a client can redirect."""

    def __init__(self, leader_id: int | None) -> None:
        super().__init__(f"not the leader (leader is {leader_id})")
        self.leader_id = leader_id


class TransferInProgressError(NotLeaderError):
    """The leader is handing leadership over and refuses new proposals until the
    transfer completes or is aborted (within one election timeout). A NotLeaderError
    with leader_id None, so callers that only know NotLeaderError retry elsewhere."""

    def __init__(self, transferee: int) -> None:
        super().__init__(None)
        self.args = (f"leadership transfer to {transferee} in progress",)
        self.transferee = transferee


class BacklogFullError(RaftError):
    """Too many proposed entries await commit (Config.uncommitted_entries_max): the
    cluster is not keeping up, so the leader pushes back instead of growing its log."""
