"""The fault schedule: which faults happen, when, to whom, and for how long.

Faults arrive one after another at exponentially distributed gaps (`mean_gap_ns`); each
picks a kind among the enabled ones (weighted by `WEIGHTS`), acts, and schedules its own
end. They overlap freely. At the end of the run `heal_all` ends every fault at once:
crashed nodes restart, paused ones resume, clocks run true and the network is calm,
which is where the liveness check starts its clock.

The kinds (the `--faults` names):

* drop, dup, delay, reorder: network episodes of 0.2-3 s (sim/network.py knobs).
* partition: symmetric (often isolating the leader), one-way, or bridge (two sides that
  cannot talk, one node that talks to both), for 0.1-4 s.
* crash: one of
  - a node (the leader half the time) crashes and restarts after 1-50 ms or 0.1-3 s;
  - a power cut: a majority, or every node, crashes at the same instant;
  - crash after voting: the leader crashes to force an election, and for the next 2 s a
    node that grants a vote crashes right after sending it and restarts within 5 ms
    (a node that forgets its vote then votes twice in one term);
  - crash in fsync: for the next 2 s, when a follower starts an fsync of new entries,
    every node loses power before the fsync completes (a node that acknowledged before
    its fsync then loses entries the leader counted).
  A crash loses every unsynced write, except a random prefix that lands, the first
  write that did not land whole being torn (sim/disk_log.py).
* pause: a node (the leader half the time) stops ticking and receiving for 50 ms-2 s,
  then resumes with the stale view it had (a GC pause, SIGSTOP, a VM migration).
* drift: a node's clock runs at 0.5x-2x speed (its ticks come that much faster or
  slower) for 1-10 s.
* full (broker simulation only): a node's disk fills (the leader half the time) but for
  less than two CommitLog segments: often no new segment, ConsumeQueue or index file
  fits, for 0.2-3 s; a quarter of the time not even a small file (hard state,
  checkpoint, state snapshot). The node must refuse, drop or postpone what does not
  fit, and lose nothing.
* lag (broker simulation only): a follower falls far behind: it is down (crashed) or
  cut off alone for 3-6 s, longer than the brokers' retention keeps the entries it
  needs next, so it catches up through a snapshot install; a third of the time its
  disk is full (under 1 KiB left: room for a hard state, often not for a snapshot) from
  then until 0.2-1.5 s after it is back, so the install (or a start) may die of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from raft.node import Role
from sim.cluster import Cluster
from sim.events import NS_PER_MS, NS_PER_S
from sim.node_host import NodeHost
from sim.process import TICK_NS

FAULTS: dict[str, str] = {
    "drop": "messages are lost (episodes of 5-40% loss)",
    "dup": "messages are delivered twice (episodes of 5-30%)",
    "delay": "some messages are held back 20-400 ms (episodes of 5-30%)",
    "reorder": "links stop being FIFO: later messages overtake earlier ones",
    "partition": "symmetric, one-way and bridge partitions, healed after 0.1-4 s",
    "crash": "crash and restart: one node, a power cut of many, right after a vote, "
    "in the middle of an fsync; unsynced writes lost, the last one torn",
    "pause": "a node stops ticking and receiving, then resumes with a stale view",
    "drift": "a node's clock runs at 0.5x-2x speed",
}
"""The faults of `mq sim raft`."""

BROKER_FAULTS: dict[str, str] = FAULTS | {
    "full": "a node's disk fills: no new segment or file fits, for 0.2-3 s",
    "lag": "a follower is down or cut off for 3-6 s: it catches up by a snapshot",
}
"""The faults of `mq sim broker`: its nodes have real stores on simulated disks."""

OPT_IN_FAULTS: dict[str, str] = {
    "wipe": "a follower's disk is replaced: it restarts empty, and no process or "
    "partition fault comes until it holds what was committed (opt in: not in 'all')",
}
"""Broker faults that `all` leaves out: a wiped disk is a failure until the node has
caught up, and Raft promises nothing against a second one meanwhile, so this fault
holds the others back while it lasts and changes every schedule it is part of."""

BROKER_FAULTS_KNOWN: dict[str, str] = BROKER_FAULTS | OPT_IN_FAULTS
_NODE_FAULTS = frozenset({"crash", "pause", "lag", "partition", "wipe"})

WEIGHTS: dict[str, int] = {
    "drop": 1,
    "dup": 1,
    "delay": 1,
    "reorder": 1,
    "partition": 3,
    "crash": 4,
    "pause": 3,
    "drift": 1,
    "full": 2,
    "lag": 2,
    "wipe": 2,
}


def parse_faults(text: str, known: Mapping[str, str] = FAULTS) -> tuple[str, ...]:
    """`"drop,crash"` -> ("drop", "crash") in canonical order; "all" or "" -> every kind
    `known` but the opt-in ones; "none" -> no faults."""
    text = text.strip() or "all"
    if text == "none":
        return ()
    names = {part.strip() for part in text.split(",") if part.strip()}
    if "all" in names:  # "all,wipe": every kind, and an opt-in one
        names.discard("all")
        names |= {name for name in known if name not in OPT_IN_FAULTS}
    unknown = sorted(names - known.keys())
    if unknown:
        raise ValueError(f"unknown faults: {', '.join(unknown)} (known: {', '.join(known)})")
    return tuple(name for name in known if name in names)


class FaultSchedule:
    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        enabled: Iterable[str],
        mean_gap_ns: int = 700 * NS_PER_MS,
    ) -> None:
        self.cluster = cluster
        self._rng = rng
        self._loop = cluster.loop
        self._trace = cluster.trace
        self._net = cluster.network
        self.enabled = tuple(name for name in BROKER_FAULTS_KNOWN if name in set(enabled))
        self._choices = [name for name in self.enabled for _ in range(WEIGHTS[name])]
        self.mean_gap_ns = mean_gap_ns
        self.end_ns = 0
        self._gen = 0
        self.active = False
        self.watch_votes = False
        self.watch_persist = False
        self.watch_leaders = False
        self.watch_commits = False
        self._votes_until_ns = 0
        self._persist_until_ns = 0
        self._churn_until_ns = 0
        self._knob_tokens: dict[str, int] = {}
        self._partition_token = 0
        self.counts: dict[str, int] = {name: 0 for name in BROKER_FAULTS_KNOWN}
        # The node whose disk was replaced, until it holds the commit index of then.
        self._wiped: NodeHost | None = None
        self._wiped_commit = 0
        # The most room a `full` disk leaves: two CommitLog segments' worth (the broker
        # run sets it from its segment size), so half the time not even one fits.
        self.full_room_max = 64 * 1024
        cluster.faults = self

    # -- schedule

    def start(self, end_ns: int) -> None:
        self.end_ns = end_ns
        self.active = bool(self._choices)
        self.watch_commits = "crash" in self.enabled
        if self.active:
            self._later(self._gap(), self._fire)

    def _gap(self) -> int:
        return 1 + int(self._rng.expovariate(1.0) * self.mean_gap_ns)

    def _later(self, delay_ns: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Schedule a fault action that a `heal_all` in the meantime cancels."""
        self._loop.after(delay_ns, self._guarded, (self._gen, fn, arg))

    def _heal_after(self, delay_ns: int) -> None:
        """Heal the partition just installed after `delay_ns`, unless another one has
        replaced it by then (that one heals on its own schedule)."""
        self._partition_token += 1
        token = self._partition_token

        def heal(_: Any) -> None:
            if self._partition_token == token:
                self._net.heal()

        self._later(delay_ns, heal)

    def _guarded(self, item: tuple[int, Callable[[Any], None], Any]) -> None:
        gen, fn, arg = item
        if gen == self._gen:
            fn(arg)

    def _fire(self, _: Any = None) -> None:
        if not self.active or self._loop.now_ns >= self.end_ns:
            return
        kind = self._rng.choice(self._choices)
        if not (kind in _NODE_FAULTS and self._wipe_in_progress()):
            self.counts[kind] += 1
            getattr(self, "_" + kind)()
        self._later(self._gap(), self._fire)

    def _wipe_in_progress(self) -> bool:
        """Whether a wiped node has yet to catch up (then no second failure may come)."""
        host = self._wiped
        if host is None:
            return False
        node = host.node
        if host.up and node is not None and node.applied_index >= self._wiped_commit:
            self._trace.emit(f"FAULT n{host.id} caught up after its disk was replaced")
            self._wiped = None
            return False
        return True

    def _wipe(self) -> None:
        """A follower's disk is replaced, in a calm moment: every node up, a leader, no
        partition, no armed crash. It restarts on an empty disk after 0.1-2 s."""
        hosts = [self.cluster.hosts[i] for i in self.cluster.node_ids]
        leader = self.cluster.leader()
        calm = (
            leader is not None
            and all(h.up and not h.paused and h.node is not None for h in hosts)
            and not self._net.blocked
            and not (self.watch_votes or self.watch_persist or self.watch_leaders)
        )
        if not calm:
            return
        host = self._rng.choice([h for h in hosts if h is not leader])
        self._wiped_commit = max(h.node.commit_index for h in hosts if h.node is not None)
        self._wiped = host
        self._trace.emit(f"FAULT n{host.id} disk replaced (commit was {self._wiped_commit})")
        self.crash(host, "disk replaced", self._duration(100 * NS_PER_MS, 2 * NS_PER_S))
        host.replace_disk()

    def _duration(self, lo_ns: int, hi_ns: int) -> int:
        return self._rng.randrange(lo_ns, hi_ns + 1)

    def _short_or_long(self, short_ns: tuple[int, int], long_ns: tuple[int, int]) -> int:
        """Half the time short, half the time long: short faults race the election
        timeout (the interesting case), long ones outlast it."""
        return self._duration(*(short_ns if self._rng.random() < 0.5 else long_ns))

    def _pick(self, leader_p: float = 0.5) -> NodeHost | None:
        """A live node: the leader with probability `leader_p`, else any."""
        live = [h for h in self.cluster.live_hosts() if not h.paused]
        if not live:
            return None
        leader = self.cluster.leader()
        if leader is not None and self._rng.random() < leader_p:
            return leader
        return self._rng.choice(live)

    # -- network episodes

    def _knob(self, name: str, value: Any, off: Any) -> None:
        token = self._knob_tokens.get(name, 0) + 1
        self._knob_tokens[name] = token
        setattr(self._net, name, value)
        self._trace.emit(f"FAULT {name}={value}")

        def end(_: Any) -> None:
            if self._knob_tokens.get(name) == token:
                setattr(self._net, name, off)
                self._trace.emit(f"FAULT {name} ends")

        self._later(self._duration(200 * NS_PER_MS, 3 * NS_PER_S), end)

    def _drop(self) -> None:
        self._knob("drop_p", round(self._rng.uniform(0.05, 0.4), 3), 0.0)

    def _dup(self) -> None:
        self._knob("dup_p", round(self._rng.uniform(0.05, 0.3), 3), 0.0)

    def _delay(self) -> None:
        self._knob("delay_p", round(self._rng.uniform(0.05, 0.3), 3), 0.0)

    def _reorder(self) -> None:
        self._knob("reorder", True, False)

    def _partition(self) -> None:
        rng = self._rng
        if rng.random() < 0.4:
            self._churn()
            return
        ids = list(self.cluster.node_ids)
        shape = rng.choice(("symmetric", "symmetric", "one_way", "bridge"))
        leader = self.cluster.leader()
        if shape == "symmetric":
            if leader is not None and rng.random() < 0.5:
                side = [leader.id]
            else:
                side = rng.sample(ids, rng.randrange(1, len(ids) // 2 + 1))
            self._net.symmetric(side)
        elif shape == "one_way":
            victim = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            others = [n for n in ids if n != victim]
            if rng.random() < 0.5:
                links = [(victim, n) for n in others]  # it cannot reach anyone
            else:
                links = [(n, victim) for n in others]  # nobody can reach it
            self._net.one_way(links)
        else:
            rng.shuffle(ids)
            bridge_node = ids[0]
            rest = ids[1:]
            cut = len(rest) // 2
            self._net.bridge(sorted(rest[:cut]), bridge_node, sorted(rest[cut:]))
        self._heal_after(
            self._short_or_long((100 * NS_PER_MS, 400 * NS_PER_MS), (400 * NS_PER_MS, 4 * NS_PER_S))
        )

    def _churn(self) -> None:
        """Leader churn, the history of the paper's Figure 8: for 3 s every new leader is
        cut off alone the moment it is elected (before its first appends leave) for
        20-300 ms, half the time; with crashes enabled, a leader whose commit index
        advances crashes right after, a fifth of the time. Logs then diverge across
        several terms, and a leader that commits an entry of an older term by counting
        replicas is caught in the act."""
        self._churn_until_ns = self._loop.now_ns + 4 * NS_PER_S
        self.watch_leaders = True
        self._trace.emit("FAULT armed: leader churn")

    def on_leader_elected(self, host: NodeHost) -> None:
        """Called by a host the moment its node becomes leader."""
        if self._wipe_in_progress():
            return
        if self._loop.now_ns > self._churn_until_ns:
            self.watch_leaders = False
            return
        if self._rng.random() < 0.6:
            self._net.symmetric([host.id])
            self._heal_after(self._duration(20 * NS_PER_MS, 300 * NS_PER_MS))

    def on_leader_commit(self, host: NodeHost, first_in_term: bool) -> None:
        """Called by a host when its node, a leader, advanced its commit index.

        A new leader's first commit is the moment of Figure 8: it commits the entries of
        earlier terms it inherited. Crashing right then, a sixth of the time, is always on
        with crashes; during leader churn any commit of a leader crashes it, a fifth of
        the time."""
        if self._wipe_in_progress():
            return
        p = 0.0
        if first_in_term:
            p = 1 / 6
        if self._loop.now_ns <= self._churn_until_ns:
            p = 0.9 if first_in_term else 0.1
        if p and self._rng.random() < p:
            self.crash(
                host, "crash right after commit", self._duration(50 * NS_PER_MS, 500 * NS_PER_MS)
            )

    # -- process faults

    def _crash(self) -> None:
        roll = self._rng.random()
        if roll < 0.35:
            host = self._pick()
            if host is not None:
                short = self._rng.random() < 0.5
                downtime = (
                    self._duration(NS_PER_MS, 50 * NS_PER_MS)
                    if short
                    else self._duration(100 * NS_PER_MS, 3 * NS_PER_S)
                )
                self.crash(host, "crash", downtime)
        elif roll < 0.5:
            self._power_cut("power cut", majority_only=self._rng.random() < 0.5)
        elif roll < 0.75:
            # The old leader comes back just as the others time out, so it can be asked
            # for its vote by two candidates of one term.
            self.watch_votes = True
            self._votes_until_ns = self._loop.now_ns + 2 * NS_PER_S
            self._trace.emit("FAULT armed: crash right after voting")
            leader = self.cluster.leader()
            if leader is not None:
                self.crash(
                    leader,
                    "crash to force an election",
                    self._duration(80 * NS_PER_MS, 300 * NS_PER_MS),
                )
        else:
            self.watch_persist = True
            self._persist_until_ns = self._loop.now_ns + 2 * NS_PER_S
            self._trace.emit("FAULT armed: power cut during a follower's fsync")

    def _power_cut(self, reason: str, majority_only: bool) -> None:
        live = self.cluster.live_hosts()
        if majority_only:
            count = len(self.cluster.node_ids) // 2 + 1
            victims = self._rng.sample(live, min(count, len(live)))
        else:
            victims = live
        for host in sorted(victims, key=lambda h: h.id):
            downtime = self._duration(NS_PER_MS, 500 * NS_PER_MS)
            self.crash(host, reason, downtime)

    def crash(self, host: NodeHost, reason: str, downtime_ns: int) -> None:
        host.crash(reason)
        token = host.crashes

        def restart(_: Any) -> None:
            if not host.up and host.crashes == token:
                host.start()

        self._later(downtime_ns, restart)

    def on_vote_granted(self, host: NodeHost) -> None:
        """Called by a host right after it sent a granted vote (persisted first)."""
        if self._wipe_in_progress():
            return
        if self._loop.now_ns > self._votes_until_ns:
            self.watch_votes = False
            return
        self._trace.emit(f"FAULT n{host.id} crashes right after voting")
        downtime = self._duration(NS_PER_MS // 20, 2 * NS_PER_MS)
        self._later(0, lambda _: self.crash(host, "crash after voting", downtime))

    def on_persist_start(self, host: NodeHost, latency_ns: int, syncs_log: bool) -> None:
        """Called by a host when it starts a persist (fsync) of `latency_ns`."""
        if self._wipe_in_progress():
            return
        if self._loop.now_ns > self._persist_until_ns:
            self.watch_persist = False
            return
        node = host.node
        if not syncs_log or node is None or node.role is Role.LEADER:
            return
        self.watch_persist = False
        at = self._rng.randrange(latency_ns // 4, latency_ns)
        self._trace.emit(f"FAULT power cut in {at // 1000}us, during n{host.id}'s fsync")
        self._later(at, lambda _: self._power_cut("power cut during fsync", majority_only=False))

    def _pause(self) -> None:
        host = self._pick(leader_p=0.7)
        if host is None:
            return
        host.pause()
        token = host.crashes

        def resume(_: Any) -> None:
            if host.crashes == token:
                host.resume()

        self._later(
            self._short_or_long(
                (150 * NS_PER_MS, 600 * NS_PER_MS), (600 * NS_PER_MS, 2 * NS_PER_S)
            ),
            resume,
        )

    def _drift(self) -> None:
        host = self._rng.choice([self.cluster.hosts[n] for n in self.cluster.node_ids])
        factor = self._rng.uniform(0.5, 2.0)
        tick_ns = int(TICK_NS / factor)
        host.set_tick(tick_ns)
        self._trace.emit(f"FAULT n{host.id} clock runs at {factor:.2f}x (tick {tick_ns // 1000}us)")

        def end(_: Any) -> None:
            if host.tick_ns == tick_ns:
                host.set_tick(TICK_NS)
                self._trace.emit(f"FAULT n{host.id} clock runs true")

        self._later(self._duration(NS_PER_S, 10 * NS_PER_S), end)

    def _full(self) -> None:
        host = self._pick()
        if host is None:
            return
        # A quarter of the time not a byte: hard state, checkpoint and state snapshot
        # writes fail too; else room for small files, not for new segments.
        room = 0 if self._rng.random() < 0.25 else self._rng.randrange(0, self.full_room_max)
        if not host.fill_disk(room):
            return
        self._trace.emit(f"FAULT n{host.id} disk full ({room} bytes left)")
        token = host.disk_fills

        def end(_: Any) -> None:
            if host.disk_fills == token:
                host.free_disk()
                self._trace.emit(f"FAULT n{host.id} disk has room again")

        self._later(self._duration(200 * NS_PER_MS, 3 * NS_PER_S), end)

    def _lag(self) -> None:
        """A follower is away long enough that the leader's retention deletes the
        entries it needs next (the brokers' retention_ms is a few seconds): down or cut
        off alone for 3-6 s. A third of the time its disk is full (or nearly) from then
        until 0.2-1.5 s after it is back, which a snapshot install meets: the process
        dies of it (sim/broker_host.py) and is started again."""
        leader = self.cluster.leader()
        live = [h for h in self.cluster.live_hosts() if not h.paused and h is not leader]
        if not live:
            return
        rng = self._rng
        host = rng.choice(live)
        away = self._duration(3 * NS_PER_S, 6 * NS_PER_S)
        if rng.random() < 0.5:
            self._trace.emit(f"FAULT n{host.id} falls behind: down")
            self.crash(host, "crash for long", away)
        else:
            self._trace.emit(f"FAULT n{host.id} falls behind: cut off")
            self._net.symmetric([host.id])
            self._heal_after(away)
        if rng.random() < 1 / 3:
            # Full from now on (no matter if another fault brings it back early) until
            # a while after it is back.
            room = rng.randrange(0, 1024)
            if host.fill_disk(room):
                self._trace.emit(f"FAULT n{host.id} disk full ({room} bytes left)")
                fills = host.disk_fills

                def end(_: Any) -> None:
                    if host.disk_fills == fills:
                        host.free_disk()
                        self._trace.emit(f"FAULT n{host.id} disk has room again")

                self._later(away + self._duration(200 * NS_PER_MS, 1500 * NS_PER_MS), end)

    # -- the end of the run

    def heal_all(self) -> None:
        """End every fault now: restart, resume, run clocks true, calm the network."""
        self._gen += 1
        self.active = False
        self.watch_votes = self.watch_persist = False
        self.watch_leaders = self.watch_commits = False
        self._net.calm()
        for node_id in self.cluster.node_ids:
            host = self.cluster.hosts[node_id]
            host.set_tick(TICK_NS)
            host.free_disk()
            if not host.up:
                host.start()
            elif host.paused:
                host.resume()
        self._trace.emit("HEAL all faults")
