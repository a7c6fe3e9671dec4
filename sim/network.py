"""The simulated network between Raft nodes: latency, loss, duplication, delay, reordering
and partitions.

Every message gets a latency drawn from the base distribution (a LAN: `latency_min_ns`
to `latency_max_ns`, uniform). On top of it the fault schedule turns knobs:

* `drop_p`: a message is lost;
* `dup_p`: a message is delivered twice (the copy with its own latency);
* `delay_p`: a message is held back by `delay_min_ns..delay_max_ns` extra;
* `reorder`: links stop being FIFO and latencies get `jitter_ns` of spread, so later
  messages overtake earlier ones. With `reorder` off each directed link is FIFO, like a
  TCP connection: a delayed message holds back the ones behind it;
* partitions: a set of blocked directed links (`src`, `dst`). A message on a blocked link
  is lost, whether the block was there when it was sent or arrived while it was in
  flight. `symmetric`, `one_way` and `bridge` build the usual shapes; `heal` clears them.

A message writes one trace line when it is sent, with its arrival time(s), or when it is
lost; a delivery on time writes none (the send line already says when it happens).

The network knows nothing of crashes or pauses: the node host drops or holds messages
for a node that is down or paused.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from raft.messages import (
    AppendRequest,
    AppendResponse,
    Envelope,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from sim.events import NS_PER_MS, EventLoop
from sim.trace import Trace


def describe(msg: Message) -> str:
    """A short canonical text for a message (for the trace)."""
    return _DESCRIBE[type(msg)](msg)


def _vote_req(m: VoteRequest) -> str:
    kind = "PreVote" if m.pre_vote else "Vote"
    xfer = " xfer" if m.transfer else ""
    return f"{kind} t{m.term} last{m.last_log_index}/{m.last_log_term}{xfer}"


def _vote_resp(m: VoteResponse) -> str:
    kind = "PreVoteResp" if m.pre_vote else "VoteResp"
    return f"{kind} t{m.term} {'yes' if m.granted else 'no'}"


def _append_req(m: AppendRequest) -> str:
    e = m.entries
    span = f" [{e[0].index}..{e[-1].index}]" if e else ""
    return f"App t{m.term} prev{m.prev_index}/{m.prev_term} c{m.commit}{span}"


def _append_resp(m: AppendResponse) -> str:
    if m.success:
        return f"AppOk t{m.term} m{m.match_index}"
    return f"AppRej t{m.term} m{m.match_index} ci{m.conflict_index}/{m.conflict_term}"


def _snap_req(m: SnapshotRequest) -> str:
    done = " done" if m.done else ""
    return f"Snap t{m.term} {m.last_index}/{m.last_term} @{m.offset}+{len(m.data)}{done}"


def _snap_resp(m: SnapshotResponse) -> str:
    return f"SnapResp t{m.term} {m.last_index} @{m.next_offset} {'ok' if m.success else 'no'}"


def _timeout_now(m: TimeoutNow) -> str:
    return f"TimeoutNow t{m.term}"


_DESCRIBE: dict[type, Callable[[Message], str]] = {
    VoteRequest: _vote_req,  # type: ignore[dict-item]
    VoteResponse: _vote_resp,  # type: ignore[dict-item]
    AppendRequest: _append_req,  # type: ignore[dict-item]
    AppendResponse: _append_resp,  # type: ignore[dict-item]
    SnapshotRequest: _snap_req,  # type: ignore[dict-item]
    SnapshotResponse: _snap_resp,  # type: ignore[dict-item]
    TimeoutNow: _timeout_now,  # type: ignore[dict-item]
}


class Network:
    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        trace: Trace,
        node_ids: Sequence[int],
        receivers: dict[int, Callable[[Envelope], None]],
    ) -> None:
        """`receivers[dst]` is called with each message delivered to node `dst`."""
        self._loop = loop
        self._rng = rng
        self._trace = trace
        self._receivers = receivers
        self.node_ids = tuple(node_ids)
        self.latency_min_ns = NS_PER_MS // 2
        self.latency_max_ns = 2 * NS_PER_MS
        self._latency_span_ns = self.latency_max_ns - self.latency_min_ns
        self.drop_p = 0.0
        self.dup_p = 0.0
        self.delay_p = 0.0
        self.delay_min_ns = 20 * NS_PER_MS
        self.delay_max_ns = 400 * NS_PER_MS
        self.reorder = False
        self.jitter_ns = 20 * NS_PER_MS
        self.blocked: frozenset[tuple[int, int]] = frozenset()
        self._link_last_ns: dict[int, int] = {}
        self._msg_seq = 0
        self.dropped = 0
        self.duplicated = 0

    # -- sending

    @property
    def sent(self) -> int:
        return self._msg_seq

    def send(self, env: Envelope) -> None:
        self._msg_seq += 1
        mid = self._msg_seq
        src = env.src
        dst = env.dst
        random = self._rng.random
        if self.blocked and (src, dst) in self.blocked:
            self.dropped += 1
            self._trace.emit(f"drop#{mid} {src}>{dst} {describe(env.msg)} partitioned")
            return
        if self.drop_p and random() < self.drop_p:
            self.dropped += 1
            self._trace.emit(f"drop#{mid} {src}>{dst} {describe(env.msg)} lost")
            return
        link = src << 16 | dst
        loop = self._loop
        if self.delay_p or self.reorder:
            arrival = self._arrival(link)
        else:
            # _arrival, inlined for the common case: base latency on a FIFO link.
            arrival = loop.now_ns + self.latency_min_ns + int(random() * self._latency_span_ns)
            last = self._link_last_ns.get(link, 0)
            if arrival <= last:
                arrival = last + 1
            self._link_last_ns[link] = arrival
        loop.at(arrival, self._arrive, (mid, env))
        msg = env.msg
        if self.dup_p and random() < self.dup_p:
            self.duplicated += 1
            again = self._arrival(link)
            loop.at(again, self._arrive, (mid, env))
            self._trace.emit(
                f"send#{mid} {src}>{dst} {_DESCRIBE[type(msg)](msg)} "
                f"@{arrival // 1000},{again // 1000}"
            )
            return
        self._trace.emit(f"send#{mid} {src}>{dst} {_DESCRIBE[type(msg)](msg)} @{arrival // 1000}")

    def _arrival(self, link: int) -> int:
        random = self._rng.random
        arrival = self._loop.now_ns + self.latency_min_ns + int(random() * self._latency_span_ns)
        if self.delay_p and random() < self.delay_p:
            arrival += self.delay_min_ns + int(random() * (self.delay_max_ns - self.delay_min_ns))
        if self.reorder:
            return arrival + int(random() * self.jitter_ns)
        # FIFO link: never overtake the previous message on this link.
        last = self._link_last_ns.get(link, 0)
        if arrival <= last:
            arrival = last + 1
        self._link_last_ns[link] = arrival
        return arrival

    def _arrive(self, item: tuple[int, Envelope]) -> None:
        mid, env = item
        if self.blocked and (env.src, env.dst) in self.blocked:
            self.dropped += 1
            self._trace.emit(f"drop#{mid} partitioned in flight")
            return
        self._receivers[env.dst](env)

    # -- partitions

    def _install(self, blocked: set[tuple[int, int]], what: str) -> None:
        self.blocked = frozenset(blocked)
        links = " ".join(f"{s}>{d}" for s, d in sorted(blocked))
        self._trace.emit(f"partition {what}: {links}")

    def symmetric(self, side: Sequence[int]) -> None:
        """Split into `side` and the rest; nothing crosses in either direction."""
        a = set(side)
        b = [n for n in self.node_ids if n not in a]
        blocked = {(x, y) for x in sorted(a) for y in b} | {(y, x) for x in sorted(a) for y in b}
        self._install(blocked, f"symmetric {sorted(a)}|{b}")

    def one_way(self, links: Sequence[tuple[int, int]]) -> None:
        """Block only the given directions (`src` can no longer reach `dst`)."""
        self._install(set(links), "one-way")

    def bridge(self, left: Sequence[int], bridge_node: int, right: Sequence[int]) -> None:
        """`left` and `right` cannot talk; `bridge_node` talks to both."""
        blocked = {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
        self._install(blocked, f"bridge {sorted(left)}<{bridge_node}>{sorted(right)}")

    def heal(self) -> None:
        if self.blocked:
            self.blocked = frozenset()
            self._trace.emit("partition healed")

    def calm(self) -> None:
        """Turn every fault knob off (the end of a run heals the network)."""
        self.drop_p = self.dup_p = self.delay_p = 0.0
        self.reorder = False
        self.heal()
