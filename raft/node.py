"""The Raft state machine: election with pre-vote and check-quorum, pipelined log
replication with per-follower flow control, leadership transfer and snapshots.

The node computes and never does I/O. Time enters by `tick()`, messages by `step()`,
commands by `propose()`; what to persist, send and apply leaves by `ready()` and the
driver reports back by `advance()` (see raft/ready.py for the driver's contract).

Sends are deferred: handlers only note that a follower may be sent to, and `ready()`
builds the appends. Everything proposed between two Readies therefore travels in as
few messages as `append_bytes_max` allows, and a leader never sends half a batch.

Rules are quoted from the Raft paper (Ongaro & Ousterhout, "In Search of an
Understandable Consensus Algorithm", Figure 2 and section 5) and the thesis (pre-vote,
check-quorum, leadership transfer: Ongaro, "Consensus: Bridging Theory and Practice",
sections 3.10, 6.2, 9.6) where they are enforced.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from operator import attrgetter

from raft.config import Config, RandomSource
from raft.errors import BacklogFullError, NotLeaderError, TransferInProgressError
from raft.log_store import LogStore
from raft.messages import (
    ENTRY_OVERHEAD_BYTES,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Envelope,
    HardState,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    make_entries,
)
from raft.progress import Inflights, Progress, ProgressState
from raft.ready import Ready, ReceivedSnapshot, SnapshotMeta
from raft.snapshot import SnapshotSource

_data = attrgetter("data")

_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT

# A follower in REPLICATE that acknowledges nothing new this many times in a row while
# appends are outstanding has lost some of them: the leader probes again from its match.
STALLED_ACKS_MAX = 3


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


_FOLLOWER = Role.FOLLOWER
_PRE_CANDIDATE = Role.PRE_CANDIDATE
_CANDIDATE = Role.CANDIDATE
_LEADER = Role.LEADER


class RaftNode:
    def __init__(
        self,
        node_id: int,
        peers: Sequence[int],
        log: LogStore,
        hard_state: HardState,
        config: Config,
        rng: RandomSource,
        applied: int = 0,
        snapshot_source: SnapshotSource | None = None,
    ) -> None:
        """`peers` are all voters, this node included. `applied` is the last index the
        state machine holds (it survived a restart); it must lie within the log, at or
        after its snapshot boundary. `snapshot_source` is needed once the log is compacted."""
        assert node_id in peers, "a node is one of its own voters"
        assert len(set(peers)) == len(peers), "voters are distinct"
        first, last = log.first_index(), log.last_index()
        assert first - 1 <= applied <= last, "applied lies between the snapshot and the tail"
        self._id = node_id
        self._peers = tuple(peers)
        self._others = tuple(p for p in peers if p != node_id)
        self._quorum = len(peers) // 2 + 1
        self._log = log
        self._cfg = config
        self._rng = rng
        self._plants = config.plants
        self._snapshot_source = snapshot_source

        self._term = hard_state.term
        self._vote = None if "forget_vote" in self._plants else hard_state.vote
        # The persisted commit may run ahead of the durable log (the hard state and the
        # log are made durable concurrently); the rest is learned again from the leader.
        self._commit = max(applied, min(hard_state.commit, last))
        self._applied = applied
        self._handed_out = applied  # last index given to the driver to apply
        self._hs_sent = (hard_state.term, hard_state.vote, hard_state.commit)

        self._role = _FOLLOWER
        self._leader: int | None = None
        # A node that started with nothing durable (Config.fresh_vote_hold_ticks: a
        # replaced disk forgot its vote and the entries it acknowledged) sits out
        # elections for a while, then votes only for empty-log candidates until a leader
        # has brought its log up to the commit index it reported (`_caught_up`).
        # A joining node (Config.join_existing) votes and campaigns only once caught up.
        fresh = hard_state.term == 0 and (config.fresh_vote_hold_ticks > 0 or config.join_existing)
        self._vote_hold = config.fresh_vote_hold_ticks if fresh else 0
        self._unsynced = fresh  # no leader has brought its log up to its commit yet
        self._joining = fresh and config.join_existing
        self._catch_up_to: int | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._reset_randomized_timeout()
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._transferee: int | None = None
        self._transfer_elapsed = 0
        self._snapshot_cache: tuple[SnapshotMeta, bytes] | None = None

        # Follower side of an install-snapshot in chunks: (meta, bytes so far).
        self._snapshot_in: tuple[SnapshotMeta, bytearray] | None = None
        self._snapshot_received: ReceivedSnapshot | None = None

        # Output for the next Ready.
        self._msgs: list[Envelope] = []
        self._persisted_msgs: list[Envelope] = []
        self._sync_log = False
        self._bcast_pending = False

    # ------------------------------------------------------------------ properties

    @property
    def id(self) -> int:
        return self._id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def synced(self) -> bool:
        """False while a node that started with nothing durable waits for a leader to
        bring its log up to that leader's commit index (the fresh-start rules)."""
        return self._caught_up()

    @property
    def joining(self) -> bool:
        """A joining node (Config.join_existing) not caught up yet: it neither votes nor
        campaigns."""
        return self._joining and not self._caught_up()

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def vote(self) -> int | None:
        return self._vote

    @property
    def peers(self) -> tuple[int, ...]:
        return self._peers

    # ------------------------------------------------------------------ commands

    def tick(self) -> None:
        """One unit of time passed (the driver decides how long: `tick_ms` in the broker, 50 ms by default)."""
        if self._role is _LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append `data` to the leader's log; returns its index. It is committed when a
        later Ready hands it out in `committed`."""
        return self.propose_batch((data,))[0]

    def propose_batch(self, datas: Sequence[bytes]) -> list[int]:
        if self._role is not _LEADER:
            raise NotLeaderError(self._leader)
        if self._transferee is not None:
            raise TransferInProgressError(self._transferee)
        count = len(datas)
        if count == 0:
            return []
        log = self._log
        first = log.last_index() + 1
        if first - 1 - self._commit + count > self._cfg.uncommitted_entries_max:
            raise BacklogFullError(
                f"{first - 1 - self._commit} entries await commit; "
                f"limit {self._cfg.uncommitted_entries_max}"
            )
        log.append(make_entries(self._term, first, datas))
        self._sync_log = True
        self._bcast_pending = True
        return list(range(first, first + count))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to `to` (thesis 3.10): stop taking proposals, bring `to` up to
        date, then tell it to campaign at once (TimeoutNow). Aborted if it has not
        happened within an election timeout."""
        if self._role is not _LEADER:
            raise NotLeaderError(self._leader)
        if to == self._id:
            return
        if to not in self._progress:
            raise ValueError(f"{to} is not a voter")
        if self._transferee == to:
            return
        self._transferee = to
        self._transfer_elapsed = 0
        if self._progress[to].match == self._log.last_index():
            self._send_timeout_now(to)
        else:
            self._bcast_pending = True

    def match_index(self, peer: int) -> int | None:
        """How far `peer`'s log is known to match ours (a leader's view); None when this
        node does not lead or `peer` is not a voter."""
        progress = self._progress.get(peer) if self._role is _LEADER else None
        return None if progress is None else progress.match

    @property
    def transferee(self) -> int | None:
        """The node a transfer under way hands leadership to, else None."""
        return self._transferee

    def compact(self, index: int) -> None:
        """Entries up to `index` were applied and captured in a snapshot the
        SnapshotSource can produce: drop them from the log."""
        assert index <= self._applied, "only applied entries may be compacted"
        assert self._snapshot_source is not None, "a compacted log needs a snapshot source"
        log = self._log
        if index < log.first_index():
            return
        term = log.term_at(index)
        assert term is not None
        log.compact(index, term)

    # ------------------------------------------------------------------ ready / advance

    def ready(self) -> Ready | None:
        """What the driver must persist, send and apply now; None if nothing."""
        assert self._applied <= self._handed_out <= self._commit <= self._log.last_index()
        if self._bcast_pending:
            self._bcast_pending = False
            if self._role is _LEADER:
                self._send_all()
        hs_now = (self._term, self._vote, self._commit)
        hard_state = None
        if hs_now != self._hs_sent:
            hard_state = HardState(*hs_now)
            self._hs_sent = hs_now
        committed: list[Entry] = []
        if self._handed_out < self._commit:
            committed = self._log.entries(
                self._handed_out + 1, self._commit + 1, self._cfg.ready_committed_bytes_max
            )
            assert committed and committed[0].index == self._handed_out + 1
            self._handed_out = committed[-1].index
        if not (
            hard_state
            or self._sync_log
            or self._msgs
            or self._persisted_msgs
            or committed
            or self._snapshot_received
        ):
            return None
        ready = Ready(
            hard_state,
            self._sync_log,
            self._msgs,
            self._persisted_msgs,
            committed,
            self._snapshot_received,
        )
        self._msgs = []
        self._persisted_msgs = []
        self._sync_log = False
        self._snapshot_received = None
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver did everything `ready` asked. A leader's own entries may have just
        become durable, which can move the commit index."""
        if ready.snapshot is not None and ready.snapshot.meta.last_index > self._applied:
            self._applied = ready.snapshot.meta.last_index
        if ready.committed and ready.committed[-1].index > self._applied:
            self._applied = ready.committed[-1].index
        if self._role is _LEADER and self._maybe_commit():
            self._bcast_pending = True

    # ------------------------------------------------------------------ step

    def step(self, env: Envelope) -> None:
        """Handle one message. The term rules (Figure 2, all servers) come first: a
        message from a newer term makes this node a follower of that term, one from an
        older term is answered so its sender learns it is stale, or dropped."""
        assert env.dst == self._id, "message delivered to the wrong node"
        msg = env.msg
        src = env.src
        if src == self._id or src not in self._peers:
            return
        if msg.term != self._term and not self._step_term(src, msg):
            return
        kind = type(msg)
        if kind is AppendResponse:
            self._on_append_response(src, msg)  # type: ignore[arg-type]
        elif kind is AppendRequest:
            self._on_append_request(src, msg)  # type: ignore[arg-type]
        elif kind is VoteRequest:
            self._on_vote_request(src, msg)  # type: ignore[arg-type]
        elif kind is VoteResponse:
            self._on_vote_response(src, msg)  # type: ignore[arg-type]
        elif kind is SnapshotRequest:
            self._on_snapshot_request(src, msg)  # type: ignore[arg-type]
        elif kind is SnapshotResponse:
            self._on_snapshot_response(src, msg)  # type: ignore[arg-type]
        elif kind is TimeoutNow:
            self._on_timeout_now(src, msg)  # type: ignore[arg-type]

    def _step_term(self, src: int, msg: object) -> bool:
        """Apply the term rules to a message whose term differs from ours; True if the
        message should then be handled."""
        term: int = msg.term  # type: ignore[attr-defined]
        if term > self._term:
            if isinstance(msg, VoteRequest):
                if not msg.transfer and self._in_lease():
                    # Thesis 4.2.3: a server that heard from a current leader within the
                    # minimum election timeout neither updates its term nor grants a vote.
                    return False
                if msg.pre_vote:
                    return True  # a pre-vote never changes our term
                self._become_follower(term, None)
            elif isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted:
                pass  # granted at the term we would campaign in; counted by the handler
            elif isinstance(msg, AppendRequest | SnapshotRequest):
                self._become_follower(term, src)
            else:
                self._become_follower(term, None)
            return True
        # An older term.
        if isinstance(msg, AppendRequest):
            if "accept_stale_term" in self._plants and self._role is not _LEADER:
                self._accept_append(src, msg)
                return False
            # Tell the stale leader about the newer term so it steps down.
            self._send_persisted(src, AppendResponse(self._term, False, 0))
        elif isinstance(msg, SnapshotRequest):
            self._send_persisted(src, AppendResponse(self._term, False, 0))
        elif isinstance(msg, VoteRequest) and msg.pre_vote:
            self._send_persisted(src, VoteResponse(self._term, False, pre_vote=True))
        return False

    def _in_lease(self) -> bool:
        return (
            self._cfg.check_quorum
            and self._leader is not None
            and self._election_elapsed < self._cfg.election_ticks
        )

    # ------------------------------------------------------------------ election

    def _tick_election(self) -> None:
        if self._vote_hold:
            self._vote_hold -= 1
            return
        if self._sits_out():
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._campaign(pre_vote=self._cfg.pre_vote, transfer=False)

    def _reset_randomized_timeout(self) -> None:
        ticks = self._cfg.election_ticks
        self._randomized_timeout = self._rng.randrange(ticks, 2 * ticks)

    def _reset(self, term: int) -> None:
        assert term >= self._term, "the term never decreases"
        if term > self._term:
            self._term = term
            self._vote = None
        self._leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self._progress = {}
        self._transferee = None

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self._role = _FOLLOWER
        self._leader = leader

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        """Pre-vote (thesis 9.6) first, unless this campaign was asked for by TimeoutNow or
        follows a won pre-vote: ask whether peers would vote at term+1 without changing
        anyone's term, so a node that cannot win (partitioned, or behind) never disrupts
        a healthy cluster."""
        if pre_vote:
            self._reset(self._term)
            self._role = _PRE_CANDIDATE
            term = self._term + 1
        else:
            self._reset(self._term + 1)
            self._role = _CANDIDATE
            self._vote = self._id
            term = self._term
        self._votes = {self._id: True}
        if self._tally_votes():
            return
        log = self._log
        last = log.last_index()
        last_term = log.term_at(last)
        assert last_term is not None
        request = VoteRequest(term, last, last_term, pre_vote=pre_vote, transfer=transfer)
        # A real vote request must not leave before our vote for ourselves is durable:
        # otherwise a crash could let us vote for another candidate in this term.
        out = self._msgs if pre_vote else self._persisted_msgs
        for peer in self._others:
            out.append(Envelope(self._id, peer, request))

    def _on_vote_request(self, src: int, m: VoteRequest) -> None:
        """Figure 2, RequestVote: grant if we have not voted for another candidate in this
        term and the candidate's log is at least as up-to-date as ours (5.4.1)."""
        log = self._log
        last = log.last_index()
        last_term = log.term_at(last)
        assert last_term is not None
        up_to_date = m.last_log_term > last_term or (
            m.last_log_term == last_term and m.last_log_index >= last
        )
        can_vote = (
            self._vote == src
            or (self._vote is None and self._leader is None)
            or (m.pre_vote and m.term > self._term)
        ) and (m.pre_vote or self._may_vote_for(m.last_log_index))
        if not can_vote and not m.pre_vote and "double_vote" in self._plants:
            can_vote = True
        if can_vote and up_to_date:
            self._send_persisted(src, VoteResponse(m.term, True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self._vote = src
                self._election_elapsed = 0
        else:
            self._send_persisted(src, VoteResponse(self._term, False, pre_vote=m.pre_vote))

    def _on_vote_response(self, src: int, m: VoteResponse) -> None:
        if self._role is _PRE_CANDIDATE:
            if not m.pre_vote:
                return
            if m.term != (self._term + 1 if m.granted else self._term):
                return
        elif self._role is _CANDIDATE:
            if m.pre_vote or m.term != self._term:
                return
        else:
            return
        if src in self._votes:
            return
        self._votes[src] = m.granted
        self._tally_votes()

    def _tally_votes(self) -> bool:
        """Act on a decided election; True if it was decided."""
        granted = sum(self._votes.values())
        if granted >= self._quorum:
            if self._role is _PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if len(self._votes) - granted >= self._quorum:
            self._become_follower(self._term, None)
            return True
        return False

    def _become_leader(self) -> None:
        """A new leader appends a no-op entry of its term: only a current-term entry can
        be committed by counting replicas (5.4.2), and the no-op commits everything before."""
        assert self._role is _CANDIDATE
        # A majority elected it, so its log holds every committed entry (Leader
        # Completeness): a node that started empty needs no leader to catch it up.
        self._unsynced = False
        self._catch_up_to = None
        log = self._log
        last = log.last_index()
        # First, so that a log that refuses it (a full disk) leaves a candidate, which
        # campaigns again, not a leader that can never commit.
        log.append([Entry(self._term, last + 1, b"", EntryKind.NOOP)])
        self._role = _LEADER
        self._leader = self._id
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._votes = {}
        cfg = self._cfg
        self._progress = {
            peer: Progress(last + 1, Inflights(cfg.inflight_msgs_max, cfg.inflight_bytes_max))
            for peer in self._others
        }
        self._sync_log = True
        self._bcast_pending = True

    # ------------------------------------------------------------------ leader

    def _tick_leader(self) -> None:
        cfg = self._cfg
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= cfg.election_ticks:
                self._transferee = None  # abort: the target did not take over in time
        if self._election_elapsed >= cfg.election_ticks:
            self._election_elapsed = 0
            if cfg.check_quorum:
                # Thesis 6.2: a leader that has not heard from a majority within an
                # election timeout steps down, so clients find the real leader.
                active = 1
                for pr in self._progress.values():
                    active += pr.recent_active
                    pr.recent_active = False
                if active < self._quorum:
                    self._become_follower(self._term, None)
                    return
        for pr in self._progress.values():
            snap = pr.snapshot
            if snap is not None and snap.sent_end >= 0:
                snap.wait_ticks += 1
                if snap.wait_ticks >= cfg.election_ticks:
                    snap.sent_end = -1  # the chunk or its answer was lost: send it again
                    self._bcast_pending = True
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for peer, pr in self._progress.items():
                self._send_heartbeat(peer, pr)

    def _send_all(self) -> None:
        for peer, pr in self._progress.items():
            self._send_appends(peer, pr)

    def _send_appends(self, peer: int, pr: Progress) -> None:
        """Send what `pr`'s flow control allows: in REPLICATE, batches up to the
        in-flight window; in PROBE, one message; in SNAPSHOT, the next chunk."""
        log = self._log
        last = log.last_index()
        bytes_max = self._cfg.append_bytes_max
        term = self._term
        msgs = self._msgs
        while True:
            state = pr.state
            if state is _REPLICATE:
                if pr.inflights.full():
                    break
            elif state is _PROBE:
                if pr.probe_sent:
                    break
            else:
                self._send_snapshot_chunk(peer, pr)
                return
            nxt = pr.next
            if nxt < log.first_index():
                self._start_snapshot(pr)
                continue
            prev_term = log.term_at(nxt - 1)
            assert prev_term is not None
            if nxt <= last:
                entries = log.entries(nxt, last + 1, bytes_max)
            elif state is _PROBE:
                entries = []
            else:
                break
            count = len(entries)
            end = nxt - 1 + count
            commit = self._commit
            msgs.append(
                Envelope(
                    self._id, peer, AppendRequest(term, nxt - 1, prev_term, tuple(entries), commit)
                )
            )
            told = commit if commit < end else end
            if told > pr.commit_sent:
                pr.commit_sent = told
            if state is _PROBE:
                pr.probe_sent = True
                break
            pr.next = end + 1
            size = sum(map(len, map(_data, entries))) + count * ENTRY_OVERHEAD_BYTES
            pr.inflights.add(end, size)
        # The commit index moved and nothing queued will carry it: say so now.
        if (
            self._cfg.eager_commit_notice
            and pr.state is not _SNAPSHOT
            and min(self._commit, pr.match) > pr.commit_sent
            and (pr.state is _PROBE or pr.next > last)
        ):
            self._send_heartbeat(peer, pr)

    def _send_heartbeat(self, peer: int, pr: Progress) -> None:
        """An empty append at the follower's match: it always matches, so it keeps the
        follower's lease and election timer fresh and carries the commit index without
        provoking a rejection while appends are in flight. Its answer repeating the
        match while appends are outstanding tells the leader they were lost."""
        log = self._log
        prev = pr.match
        prev_term = log.term_at(prev)
        if prev_term is None:
            # Compacted past the match: ask at the snapshot boundary instead. Either
            # answer moves things on (a match, or a rejection that leads to a snapshot).
            prev = log.first_index() - 1
            prev_term = _term(log, prev)
        commit = min(self._commit, prev)
        if commit > pr.commit_sent:
            pr.commit_sent = commit
        self._msgs.append(
            Envelope(self._id, peer, AppendRequest(self._term, prev, prev_term, (), commit))
        )

    def _send_timeout_now(self, peer: int) -> None:
        self._msgs.append(Envelope(self._id, peer, TimeoutNow(self._term)))

    def _on_append_response(self, src: int, m: AppendResponse) -> None:
        if self._role is not _LEADER:
            return
        pr = self._progress[src]
        pr.recent_active = True
        if m.success:
            self._on_append_success(src, pr, m.match_index)
        else:
            self._on_append_reject(pr, m)

    def _on_append_success(self, src: int, pr: Progress, match: int) -> None:
        state = pr.state
        if match > pr.match:
            pr.match = match
            if pr.next <= match:
                pr.next = match + 1
            pr.stalled_acks = 0
            if state is _REPLICATE:
                pr.inflights.free_to(match)
            elif state is _PROBE:
                pr.become_replicate()
            else:
                snap = pr.snapshot
                assert snap is not None
                if match >= snap.meta.last_index:
                    pr.become_probe()  # the follower already had the snapshot's entries
            if self._maybe_commit():
                self._bcast_pending = True
        elif state is _PROBE:
            if match == pr.next - 1:
                pr.become_replicate()  # it matches right where we probe
            else:
                # A heartbeat's answer, or a stale one: the follower is alive, so our
                # probe (or its answer) may have been lost; probe again. Never restart
                # from `match` here: for a new leader that is 0, and it would resend
                # the whole log to followers that already hold it.
                pr.probe_sent = False
        elif state is _REPLICATE and match == pr.match and pr.next - 1 > match:
            pr.stalled_acks += 1
            if pr.stalled_acks >= STALLED_ACKS_MAX:
                pr.next = pr.match + 1
                pr.become_probe()
        if self._transferee == src and pr.match == self._log.last_index():
            self._send_timeout_now(src)
        self._bcast_pending = True

    def _on_append_reject(self, pr: Progress, m: AppendResponse) -> None:
        """Fast backtracking: skip the follower's whole conflicting term in one round trip
        instead of one entry at a time.

        A follower whose log ends below what it acknowledged (`short`) lost entries: its
        disk was replaced, or lied about an fsync. Raft assumes that cannot happen, and a
        leader that trusted the old match would never send those entries again (only a
        new leader, probing from scratch, would). So such a rejection of a heartbeat or
        append at the match makes the leader probe there, and a rejection of that probe
        moves the match down to where the follower's log ends. A stale rejection can at
        worst cost a probe, or entries sent again: the commit index never goes back."""
        rejected = m.reject_index
        short = m.conflict_term == 0 and m.conflict_index <= pr.match
        if pr.state is _REPLICATE:
            if rejected < pr.match or (rejected == pr.match and not short):
                return  # stale: the follower has since matched past it
            if rejected == pr.match:
                pr.next = pr.match + 1
                pr.become_probe()
                self._bcast_pending = True
                return
        elif pr.state is _PROBE:
            if rejected != pr.next - 1:
                # Not an answer to our probe (a heartbeat's, or a stale one), but the
                # follower is alive: if our probe was lost, send it again.
                pr.probe_sent = False
                self._bcast_pending = True
                return
            if short:
                pr.match = m.conflict_index - 1
        else:
            return
        nxt = m.conflict_index
        if m.conflict_term:
            last_of_term = self._last_index_of_term(m.conflict_term, rejected)
            if last_of_term is not None:
                nxt = last_of_term + 1
        nxt = min(nxt, rejected)
        pr.next = max(nxt, pr.match + 1)
        pr.become_probe()
        self._bcast_pending = True

    def _last_index_of_term(self, term: int, upto: int) -> int | None:
        """The last index <= upto holding `term` in our log, if any. Terms never decrease
        along a log, so binary search finds it."""
        log = self._log
        lo = log.first_index() - 1
        hi = min(upto, log.last_index())
        if lo > hi or _term(log, lo) > term:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _term(log, mid) <= term:
                lo = mid
            else:
                hi = mid - 1
        return lo if _term(log, lo) == term else None

    def _maybe_commit(self) -> bool:
        """Figure 2, rules for leaders: the largest N with a majority of match >= N and
        log[N].term == currentTerm becomes the commit index. The leader counts itself
        only as far as its log is durable."""
        log = self._log
        own = log.last_index() if "ack_before_fsync" in self._plants else log.durable_index()
        matches = sorted([own, *(pr.match for pr in self._progress.values())], reverse=True)
        candidate = matches[self._quorum - 1]
        if candidate <= self._commit:
            return False
        if log.term_at(candidate) != self._term and "commit_old_term" not in self._plants:
            return False
        self._commit = candidate
        return True

    # ------------------------------------------------------------------ follower

    def _on_append_request(self, src: int, m: AppendRequest) -> None:
        if self._role is not _FOLLOWER:
            if self._role is _LEADER:
                return  # a second leader in our term: impossible unless a bug is planted
            self._become_follower(self._term, src)
        self._leader = src
        self._election_elapsed = 0
        if self._unsynced and self._catch_up_to is None:
            self._catch_up_to = m.commit
        self._accept_append(src, m)

    def _accept_append(self, src: int, m: AppendRequest) -> None:
        """Figure 2, AppendEntries: reject unless our log has prev_index with prev_term;
        delete an existing entry that conflicts with a new one (and all that follow it);
        append the new entries not already in the log; commit = min(leaderCommit, index
        of last new entry)."""
        log = self._log
        commit = self._commit
        prev = m.prev_index
        entries = m.entries
        if prev < commit:
            # Committed entries match the leader's (Leader Completeness): trim them and
            # check consistency at our commit index instead.
            skip = commit - prev
            if skip >= len(entries):
                self._ack(src, commit)
                return
            prev_term = entries[skip - 1].term
            entries = entries[skip:]
            prev = commit
        else:
            prev_term = m.prev_term
        if log.term_at(prev) != prev_term:
            self._reject_append(src, prev)
            return
        count = len(entries)
        if count:
            last = log.last_index()
            if prev == last:
                log.append(entries)
                self._sync_log = True
            else:
                self._merge_entries(prev, entries, last)
        match = prev + count
        leader_commit = m.commit if m.commit < match else match
        if leader_commit > commit:
            self._commit = leader_commit
        self._ack(src, match)

    def _merge_entries(self, prev: int, entries: tuple[Entry, ...], last: int) -> None:
        """Entries overlap our log: keep the matching prefix (a stale or duplicated
        append must never drop acknowledged entries), truncate only at a real conflict."""
        log = self._log
        overlap = min(len(entries), last - prev)
        i = 0
        while i < overlap and log.term_at(prev + 1 + i) == entries[i].term:
            i += 1
        if i == len(entries):
            return
        if i < overlap:
            if "skip_truncate" in self._plants:
                # Keep our conflicting entries and pretend they matched.
                if len(entries) > overlap:
                    log.append(entries[overlap:])
                    self._sync_log = True
                return
            at = prev + 1 + i
            assert at > self._commit, "a committed entry is never truncated"
            assert self._role is not _LEADER, "a leader never truncates its own log"
            log.truncate_suffix(at)
        log.append(entries[i:])
        self._sync_log = True

    def _ack(self, src: int, match: int) -> None:
        response = Envelope(self._id, src, AppendResponse(self._term, True, match))
        if "ack_before_fsync" in self._plants:
            self._msgs.append(response)
            return
        # "Respond after persisting": entries up to `match` must be durable before the
        # leader may count this node for them.
        if match > self._log.durable_index():
            self._sync_log = True
        self._persisted_msgs.append(response)

    def _reject_append(self, src: int, prev: int) -> None:
        log = self._log
        last = log.last_index()
        if prev > last:
            conflict_term = 0
            conflict_index = last + 1
        else:
            conflict_term = _term(log, prev)
            conflict_index = self._first_index_of_term(conflict_term, prev)
        self._send_persisted(
            src,
            AppendResponse(
                self._term,
                False,
                0,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
                reject_index=prev,
            ),
        )

    def _first_index_of_term(self, term: int, hi: int) -> int:
        """The first index of `term` in our log at or before hi (where term_at(hi) ==
        term), never at or below commit: committed entries are not in conflict."""
        log = self._log
        lo = max(log.first_index(), self._commit + 1)
        if lo > hi:
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if _term(log, mid) < term:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ snapshots

    def _start_snapshot(self, pr: Progress) -> None:
        source = self._snapshot_source
        assert source is not None, "the log was compacted but there is no snapshot source"
        boundary = self._log.first_index() - 1
        cached = self._snapshot_cache
        if cached is None or cached[0].last_index < boundary:
            cached = source.snapshot()
            meta = cached[0]
            assert boundary <= meta.last_index <= self._commit, "snapshot covers compacted log"
            assert self._log.term_at(meta.last_index) in (meta.last_term, None)
            self._snapshot_cache = cached
        pr.become_snapshot(*cached)

    def _send_snapshot_chunk(self, peer: int, pr: Progress) -> None:
        snap = pr.snapshot
        assert snap is not None
        if snap.sent_end >= 0:
            return  # one chunk in flight at a time
        offset = snap.offset
        chunk = snap.data[offset : offset + self._cfg.snapshot_chunk_bytes]
        end = offset + len(chunk)
        done = end >= len(snap.data)
        snap.sent_end = end
        snap.wait_ticks = 0
        meta = snap.meta
        self._msgs.append(
            Envelope(
                self._id,
                peer,
                SnapshotRequest(self._term, meta.last_index, meta.last_term, offset, chunk, done),
            )
        )

    def _on_snapshot_response(self, src: int, m: SnapshotResponse) -> None:
        if self._role is not _LEADER:
            return
        pr = self._progress[src]
        pr.recent_active = True
        snap = pr.snapshot
        if snap is None or m.last_index != snap.meta.last_index:
            return
        if m.success:
            if m.next_offset != snap.sent_end:
                return  # a duplicate answer to a chunk we already moved past
            if m.next_offset >= len(snap.data):
                # Installed: the follower's log now starts after the snapshot.
                if snap.meta.last_index > pr.match:
                    pr.match = snap.meta.last_index
                pr.next = pr.match + 1
                pr.become_probe()
                self._maybe_commit()
            else:
                snap.offset = m.next_offset
                snap.sent_end = -1
        else:
            # Restart where the follower says it is (0 when it holds nothing of this one).
            snap.offset = m.next_offset if 0 <= m.next_offset <= len(snap.data) else 0
            snap.sent_end = -1
        self._bcast_pending = True

    def _on_snapshot_request(self, src: int, m: SnapshotRequest) -> None:
        if self._role is not _FOLLOWER:
            if self._role is _LEADER:
                return
            self._become_follower(self._term, src)
        self._leader = src
        self._election_elapsed = 0
        log = self._log
        if m.last_index <= self._commit or log.term_at(m.last_index) == m.last_term:
            # We already hold everything the snapshot does: fast-forward, no install.
            self._snapshot_in = None
            if m.last_index > self._commit:
                self._commit = m.last_index
            self._ack(src, self._commit)
            return
        meta = SnapshotMeta(m.last_index, m.last_term)
        partial = self._snapshot_in
        if m.offset == 0:
            partial = (meta, bytearray())
        elif partial is None or partial[0] != meta or len(partial[1]) != m.offset:
            expected = len(partial[1]) if partial is not None and partial[0] == meta else 0
            self._send_persisted(src, SnapshotResponse(self._term, m.last_index, expected, False))
            return
        buffer = partial[1]
        buffer += m.data
        if not m.done:
            self._snapshot_in = partial
            self._send_persisted(src, SnapshotResponse(self._term, m.last_index, len(buffer), True))
            return
        self._snapshot_in = None
        assert m.last_index > self._commit
        log.reset(m.last_index, m.last_term)
        self._sync_log = True
        self._commit = m.last_index
        self._handed_out = m.last_index
        self._snapshot_received = ReceivedSnapshot(meta, bytes(buffer))
        self._send_persisted(src, SnapshotResponse(self._term, m.last_index, len(buffer), True))

    # ------------------------------------------------------------------ transfer

    def _on_timeout_now(self, src: int, m: TimeoutNow) -> None:
        """Thesis 3.10: the leader says we are caught up; campaign now, skipping pre-vote
        and flagging the request so voters disregard their leader lease."""
        if self._role is _LEADER or self._sits_out():
            return
        self._campaign(pre_vote=False, transfer=True)

    def _may_vote_for(self, last_log_index: int) -> bool:
        """The fresh-start rules (Config.fresh_vote_hold_ticks) on a real vote: none during
        the hold, then only for an empty-log candidate until caught up; a joining node
        (Config.join_existing) none at all until caught up."""
        if self._vote_hold:
            return False
        if self._joining:
            return self._caught_up()
        return last_log_index == 0 or self._caught_up()

    def _sits_out(self) -> bool:
        """Whether this node may not campaign yet: it started with nothing durable, and
        its hold is not over or a leader is catching it up (a joining node: until a
        leader has caught it up)."""
        if self._vote_hold:
            return True
        if self._joining:
            return not self._caught_up()
        return self._catch_up_to is not None and not self._caught_up()

    def _caught_up(self) -> bool:
        """Whether a node that started with nothing durable has since been brought up to
        what the first leader it heard from had committed. Until then it votes only for
        a candidate with an empty log (a brand-new group): its disk may have been
        replaced, and with its empty log its vote could elect a node that lacks entries
        it acknowledged before."""
        if not self._unsynced:
            return True
        target = self._catch_up_to
        if target is not None and self._log.last_index() >= target:
            self._unsynced = False
            self._catch_up_to = None
            self._joining = False
            return True
        return False

    # ------------------------------------------------------------------ helpers

    def _send_persisted(
        self, dst: int, msg: VoteResponse | AppendResponse | SnapshotResponse
    ) -> None:
        self._persisted_msgs.append(Envelope(self._id, dst, msg))

    def status(self) -> dict[str, object]:
        """A snapshot of the node's state for debugging and the CLI."""
        log = self._log
        status: dict[str, object] = {
            "id": self._id,
            "role": self._role.value,
            "term": self._term,
            "vote": self._vote,
            "leader": self._leader,
            "commit": self._commit,
            "applied": self._applied,
            "first_index": log.first_index(),
            "last_index": log.last_index(),
            "durable_index": log.durable_index(),
            "election_elapsed": self._election_elapsed,
            "vote_hold": self._vote_hold,
            "catch_up_to": self._catch_up_to,
            "synced": self.synced,
            "joining": self._joining,
        }
        if self._role is _LEADER:
            status["transferee"] = self._transferee
            status["progress"] = {peer: pr.describe() for peer, pr in self._progress.items()}
        return status


def _term(log: LogStore, index: int) -> int:
    term = log.term_at(index)
    assert term is not None, f"no term known at {index}"
    return term
