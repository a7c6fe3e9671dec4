"""The broker process: `BrokerCore` behind a trio TCP server, peer links, ticks, registration.

Thin on purpose: request decoding and connection handling live in `mq.rpc`, the logic
in the core. This driver supplies the clock (trio's, so tests run on a MockClock), the
threads for fsyncs, and the sockets:

* one listener (`serve_tcp`) for clients and for the other nodes' RAFT_MESSAGE frames;
* the Raft loop: `core.ready()` -> send -> `work.run()` (in a worker thread on real
  files) -> `core.advance()` -> send, woken by any input; the run + advance part is
  shielded from cancellation, so a shutdown never leaves an fsync half-reported;
* a tick task (every `tick_ms`), which also expires timed-out requests and long polls;
* one outgoing link per peer: a bounded queue drained onto an `mq.rpc.client`
  connection, reconnecting with backoff. When the peer is down or slow the queue
  fills and further messages are dropped — Raft resends — so a peer never blocks us;
* one registration task per NameServer: every `register_interval_ms`, and at once
  when the role, term, leader or topic table changes;
* one task per client connection that sent a HEARTBEAT: the core knows it by an int
  token; the task drains a bounded queue of the core's `Notify` frames onto it (full:
  dropped — consumers also rebalance on a timer — so a slow or dead client never
  blocks the core), and reports the connection closed to the core when it ends.

Shutdown (cancel the nursery, e.g. on SIGTERM) closes the store cleanly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

from mq.broker.config import BrokerConfig
from mq.broker.core import BrokerCore, Notify, PeerMessage, Reply, RoleChanged, TopicsChanged
from mq.protocol import Frame, ProtocolError, RequestCode, request
from mq.rpc.address import format_address, parse_address
from mq.rpc.client import connect
from mq.rpc.errors import TransportError
from mq.rpc.server import Peer, listener_port, serve_tcp
from storage.files import FileSystem, RealFileSystem

PEER_QUEUE_FRAMES_MAX = 4096
"""Raft frames queued for one peer; past it they are dropped (Raft resends)."""
NOTIFY_QUEUE_FRAMES_MAX = 64
"""Notifications queued for one client connection; past it they are dropped."""
IN_FLIGHT_PER_CONNECTION_MAX = 1024
"""Requests one client connection may have outstanding (pipelined sends)."""
RECONNECT_BACKOFF_S_MIN = 0.05
RECONNECT_BACKOFF_S_MAX = 1.0
REGISTER_TIMEOUT_S = 3.0
PEER_WRITE_FRAMES_MAX = 64
"""Raft frames to one peer that share a write (the writer sends big bodies on their own)."""
UNREGISTER_TIMEOUT_S = 1.0
RELEASE_GRACE_S = 0.5
"""How long a planned stop waits for the answers to released long polls to go out."""
TRASH_DIR = "trash"
"""Under data_dir: files deleted by retention wait here for a background thread to
unlink them (storage/trash.py); a start empties it."""

_log = structlog.get_logger("mq.broker")


@dataclass(slots=True)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    frame: Frame | None = None


@dataclass(slots=True)
class _Client:
    """A client connection the core knows by `token` (it sent a HEARTBEAT)."""

    token: int
    notifications: trio.MemorySendChannel[Frame]


class BrokerServer:
    """One broker node. `serve` runs it until cancelled."""

    def __init__(
        self,
        config: BrokerConfig,
        fs: FileSystem | None = None,
        *,
        io_in_thread: bool | None = None,
    ) -> None:
        """`fs` defaults to the real file system; `io_in_thread` (default: only on real
        files) runs a leader's fsyncs in a worker thread instead of on the trio thread
        (a follower's always run on the trio thread; see `_raft_loop`)."""
        self.config = config
        self.fs: FileSystem = (
            fs if fs is not None else RealFileSystem(trash_dir=f"{config.data_dir}/{TRASH_DIR}")
        )
        self.io_in_thread = (
            isinstance(self.fs, RealFileSystem) if io_in_thread is None else io_in_thread
        )
        self.host, self.port = split_listen(config.listen)
        self._core: BrokerCore | None = None
        self._reply_ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._wakeup = trio.Event()
        self._peers: dict[int, trio.MemorySendChannel[Frame]] = {}
        self._register_events: list[trio.Event] = []
        self._nursery: trio.Nursery | None = None
        self._client_tokens = itertools.count(1)
        self._clients: dict[Peer, _Client] = {}
        self._held_pulls: dict[Peer, dict[int, tuple[str, int]]] = {}
        """Per connection, its long polls the core may be holding: reply id -> queue."""
        self._clients_by_token: dict[int, _Client] = {}
        self.dropped_peer_frames = 0
        self.dropped_notifications = 0
        self._role_changed = trio.Event()
        self.registrations = 0

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def core(self) -> BrokerCore:
        assert self._core is not None, "the broker is not running"
        return self._core

    def now_ms(self) -> int:
        """trio's monotonic clock: immune to wall-clock jumps, virtual under MockClock."""
        return int(trio.current_time() * 1000)

    # ------------------------------------------------------------------ lifecycle

    async def serve(
        self, *, task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the store, listen, join the group; run until cancelled, then close."""
        config = self.config
        lock = _lock_data_dir(config.data_dir) if isinstance(self.fs, RealFileSystem) else None
        try:
            now = self.now_ms()
            core = BrokerCore(
                config,
                self.fs,
                now,
                wall_offset_ms=int(time.time() * 1000) - now,
                pid=os.getpid(),
            )
            self._core = core
            try:
                async with trio.open_nursery() as nursery:
                    await self._start(nursery, core)
                    task_status.started(self)
            finally:
                with trio.CancelScope(shield=True):
                    await self._unregister()
                    self._close(core)
        finally:
            if lock is not None:
                lock.close()

    async def _start(self, nursery: trio.Nursery, core: BrokerCore) -> None:
        config = self.config
        self._nursery = nursery
        listeners = await nursery.start(
            partial(
                serve_tcp,
                self._handle,
                self.host,
                self.port,
                in_flight_max=IN_FLIGHT_PER_CONNECTION_MAX,
                inline=self._handle_inline,
                # However many clients hold connections, the group's own links get in.
                admit_over_limit=_is_raft_message,
            )
        )
        self.port = listener_port(listeners)
        core.address = self.address
        core.voters[config.node_id] = self.address
        for node_id, address in sorted(core.voters.items()):
            if node_id == config.node_id:
                continue
            send, receive = trio.open_memory_channel[Frame](PEER_QUEUE_FRAMES_MAX)
            self._peers[node_id] = send
            nursery.start_soon(self._peer_loop, node_id, address, receive)
        nursery.start_soon(self._raft_loop, core)
        nursery.start_soon(self._tick_loop, core)
        for address in config.namesrv:
            event = trio.Event()
            self._register_events.append(event)
            nursery.start_soon(self._register_loop, core, address, len(self._register_events) - 1)
        _log.info(
            "broker_listening",
            address=self.address,
            cluster=config.cluster,
            group=config.group,
            node_id=config.node_id,
            peers={str(k): v for k, v in core.voters.items()},
            data_dir=config.data_dir,
            flush=config.flush.value,
            namesrv=list(config.namesrv),
        )

    async def hand_over(self) -> bool:
        """Before a planned stop: if this node leads, hand leadership to the most
        caught-up other node and wait until it has (or the transfer was given up, after
        an election timeout). True when this node does not lead any more."""
        core = self._core
        if core is None or core.hand_over() is None:
            return core is None or not core.is_leader
        self._after_input()
        with trio.move_on_after(2 * self.config.election_ms / 1000):
            while core.is_leader:
                await self._role_changed.wait()
        handed = not core.is_leader
        _log.info("leadership_handed_over" if handed else "leadership_hand_over_failed")
        return handed

    async def release_held_pulls(self) -> None:
        """Before a planned stop: answer every long poll now, and let the answers go out
        while the connections are open (`close` after the cancel has nothing left to
        carry them). Bounded: a connection that cannot take its answer is closed anyway."""
        core = self._core
        if core is None:
            return
        core.release_held_pulls()
        self._after_input()
        with trio.move_on_after(RELEASE_GRACE_S):
            # Each answered pull's handler takes its frame, then writes it.
            while any(waiter.done.is_set() for waiter in self._waiters.values()):
                await trio.lowlevel.checkpoint()
            for _ in range(2):  # the writer's gathering pause, then its send
                await trio.lowlevel.checkpoint()

    async def _unregister(self) -> None:
        """Tell every NameServer we are going, so clients stop routing to us at once
        (best effort, bounded: a NameServer that is down expires us instead)."""
        if self.port == 0:
            return
        fields = {
            "group": self.config.group,
            "node_id": self.config.node_id,
            "address": self.address,
        }

        async def one(address: str) -> None:
            with trio.move_on_after(UNREGISTER_TIMEOUT_S):
                try:
                    async with connect(address, timeout=UNREGISTER_TIMEOUT_S) as conn:
                        await conn.request(
                            request(RequestCode.UNREGISTER_BROKER, fields),
                            timeout=UNREGISTER_TIMEOUT_S,
                        )
                except (TransportError, OSError) as exc:
                    _log.info("unregister_failed", namesrv=address, reason=str(exc))

        async with trio.open_nursery() as nursery:
            for address in self.config.namesrv:
                nursery.start_soon(one, address)

    def _close(self, core: BrokerCore) -> None:
        try:
            core.close(self.now_ms())
            _log.info("broker_closed", node_id=self.config.node_id)
        except Exception:
            _log.exception("broker_close_failed", node_id=self.config.node_id)

    # ------------------------------------------------------------------ requests

    def _handle_inline(self, request: Frame, peer: Peer) -> bool:
        """Raft messages are stepped on the connection's reading task, in the order the
        peer sent them, without a task each (they come several per send)."""
        if request.code != RequestCode.RAFT_MESSAGE:
            return False
        self.core.receive_raft(request)
        self._after_input()
        return True

    async def _handle(self, request: Frame, peer: Peer) -> Frame | None:
        if self._handle_inline(request, peer):
            return None  # a Raft message sent as a request (peers send them one-way)
        core = self.core
        # Only a HEARTBEAT's member is tied to its connection (and notified through it).
        heartbeat = request.code == RequestCode.HEARTBEAT
        connection = self._connection_token(peer) if heartbeat else None
        reply_id = next(self._reply_ids)
        waiter = _Waiter()
        self._waiters[reply_id] = waiter
        held: dict[int, tuple[str, int]] | None = None
        try:
            response = core.handle(request, reply_id, self.now_ms(), connection=connection)
            self._after_input()
            if response is not None or request.is_oneway:
                return response
            if request.code == RequestCode.PULL_MESSAGE:
                held = self._held_pulls_of(peer)
                if held is not None:
                    held[reply_id] = (request.fields["topic"], request.fields["queue_id"])
            await waiter.done.wait()
            return waiter.frame
        finally:
            del self._waiters[reply_id]
            if held is not None:
                held.pop(reply_id, None)

    def _held_pulls_of(self, peer: Peer) -> dict[int, tuple[str, int]] | None:
        """The long polls held for `peer`'s connection, and a task that answers them when
        the client hangs up (so they free their `held_pulls_max` slots at once); None if
        it is closing."""
        held = self._held_pulls.get(peer)
        if held is None and self._nursery is not None and not peer.closed:
            held = self._held_pulls[peer] = {}
            self._nursery.start_soon(self._release_held_on_hang_up, peer, held)
        return held

    async def _release_held_on_hang_up(self, peer: Peer, held: dict[int, tuple[str, int]]) -> None:
        try:
            await peer.wait_input_closed()
        finally:
            del self._held_pulls[peer]
        if held:
            self.core.release_held([(reply, *queue) for reply, queue in held.items()])
            self._after_input()

    def _connection_token(self, peer: Peer) -> int | None:
        """The core's token for `peer`'s connection: a new one (and the task that
        serves it) if it has none yet; None if it is closing."""
        client = self._clients.get(peer)
        if client is not None:
            return client.token
        if peer.closed or self._nursery is None:
            return None
        send, receive = trio.open_memory_channel[Frame](NOTIFY_QUEUE_FRAMES_MAX)
        client = _Client(next(self._client_tokens), send)
        self._clients[peer] = client
        self._clients_by_token[client.token] = client
        self._nursery.start_soon(self._client_loop, peer, client, receive)
        return client.token

    async def _client_loop(
        self, peer: Peer, client: _Client, notifications: trio.MemoryReceiveChannel[Frame]
    ) -> None:
        """Push the connection's notifications until it closes (or a push fails), then
        tell the core, so the consumers on it leave their groups."""

        async def push() -> None:
            async for frame in notifications:
                try:
                    await peer.send_oneway(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                    return

        try:
            # Input, not the whole connection: requests still running on it (a held
            # pull) must not keep a consumer that hung up in its group meanwhile.
            await _first_of(peer.wait_input_closed, push)
        finally:
            del self._clients[peer]
            del self._clients_by_token[client.token]
            notifications.close()
            self.core.connection_closed(client.token, self.now_ms())
            self._after_input()

    def _after_input(self) -> None:
        self._dispatch_outputs()
        self._wakeup.set()

    def _dispatch_outputs(self) -> None:
        for out in self.core.take_outputs():
            if isinstance(out, Reply):
                waiter = self._waiters.get(out.reply_to)
                if waiter is not None:  # else the requester left
                    waiter.frame = out.frame
                    waiter.done.set()
            elif isinstance(out, PeerMessage):
                channel = self._peers.get(out.node_id)
                if channel is None:
                    continue
                try:
                    channel.send_nowait(out.frame)
                except trio.WouldBlock:
                    self.dropped_peer_frames += 1
            elif isinstance(out, Notify):
                client = self._clients_by_token.get(out.connection)
                if client is None:
                    continue  # closed meanwhile; the core hears of it from its task
                try:
                    client.notifications.send_nowait(out.frame)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self.dropped_notifications += 1
            elif isinstance(out, RoleChanged | TopicsChanged):
                for event in self._register_events:
                    event.set()
                if isinstance(out, RoleChanged):
                    self._role_changed.set()
                    self._role_changed = trio.Event()

    # ------------------------------------------------------------------ loops

    async def _raft_loop(self, core: BrokerCore) -> None:
        while True:
            work = core.ready(self.now_ms())
            self._dispatch_outputs()
            if work is None:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            with trio.CancelScope(shield=True):
                # A leader fsyncs in a worker thread, so it goes on taking sends (they
                # share the next fsync). A follower has nothing to do meanwhile but
                # queue the next append, so it fsyncs on this thread: the hop to a
                # worker and back cost it ~13 % of its CPU (mq bench notes, 2026-11-27).
                # A checkpoint (once a second: a dozen fsyncs, 5-45 ms here) goes to the
                # worker on every node, so pulls and heartbeats are answered meanwhile.
                off_loop = core.is_leader or work.checkpoint is not None
                if work.blocking and self.io_in_thread and off_loop:
                    await trio.to_thread.run_sync(work.run)
                else:
                    work.run()
                core.advance(work, self.now_ms())
            self._dispatch_outputs()
            await trio.lowlevel.checkpoint()

    async def _tick_loop(self, core: BrokerCore) -> None:
        interval_s = self.config.tick_ms / 1000
        while True:
            due = trio.current_time() + interval_s
            await trio.sleep(interval_s)
            now_ms = self.now_ms()
            core.record_loop_lag(now_ms, (trio.current_time() - due) * 1000)
            core.tick(now_ms)
            self._after_input()

    async def _peer_loop(
        self, node_id: int, address: str, frames: trio.MemoryReceiveChannel[Frame]
    ) -> None:
        log = _log.bind(peer=node_id, peer_address=address)
        backoff_s = RECONNECT_BACKOFF_S_MIN
        connected_before = False
        while True:
            try:
                async with connect(address, timeout=1.0) as conn:
                    log.info("peer_connected")
                    connected_before = True
                    backoff_s = RECONNECT_BACKOFF_S_MIN
                    async for frame in frames:
                        # What the raft loop queued meanwhile (appends, commit updates)
                        # leaves in the same write.
                        batch = [frame]
                        with contextlib.suppress(trio.WouldBlock):
                            while len(batch) < PEER_WRITE_FRAMES_MAX:
                                batch.append(frames.receive_nowait())
                        await conn.send_oneway_many(batch)
            except (TransportError, OSError) as exc:
                if connected_before:
                    log.info("peer_disconnected", reason=str(exc))
                    connected_before = False
                else:
                    log.debug("peer_unreachable", reason=str(exc))
            # What queued while the link was down is stale: Raft will resend what matters.
            with contextlib.suppress(trio.WouldBlock):
                while True:
                    frames.receive_nowait()
                    self.dropped_peer_frames += 1
            await trio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_S_MAX)

    async def _register_loop(self, core: BrokerCore, address: str, slot: int) -> None:
        log = _log.bind(namesrv=address)
        interval_s = self.config.register_interval_ms / 1000
        while True:
            try:
                async with connect(address, timeout=REGISTER_TIMEOUT_S) as conn:
                    while True:
                        self._register_events[slot] = trio.Event()
                        registration = core.registration()
                        await conn.request(
                            request(RequestCode.REGISTER_BROKER, registration.to_fields()),
                            timeout=REGISTER_TIMEOUT_S,
                        )
                        self.registrations += 1
                        log.debug(
                            "registered", role=registration.role.value, term=registration.term
                        )
                        with trio.move_on_after(interval_s):
                            await _first_of(self._register_events[slot].wait, conn.wait_closed)
                        if conn.closed:
                            # The NameServer went away (restarted, most likely: it then
                            # knows no routes): reconnect and register at once, not in
                            # up to `register_interval_ms`.
                            log.info("namesrv_connection_closed")
                            break
            except (TransportError, OSError) as exc:
                log.warning("register_failed", reason=str(exc))
            # A change meanwhile (role, term, topics) cuts the wait short, but one that
            # happened before this failure must not: the next registration carries it
            # anyway, and a refused connect fails at once, so the loop would spin.
            self._register_events[slot] = trio.Event()
            with trio.move_on_after(min(interval_s, RECONNECT_BACKOFF_S_MAX)):
                await self._register_events[slot].wait()

    def status(self) -> dict[str, Any]:
        status = self.core.status()
        status.update(self.core.stats())
        status["dropped_peer_frames"] = self.dropped_peer_frames
        status["dropped_notifications"] = self.dropped_notifications
        return status


def _is_raft_message(frame: Frame) -> bool:
    return frame.code == RequestCode.RAFT_MESSAGE


async def _first_of(*waits: Callable[[], Awaitable[None]]) -> None:
    """Run the waits side by side; return when the first one returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


def split_listen(listen: str) -> tuple[str, int]:
    """host and port of a listen address; port 0 (pick a free one) is allowed here."""
    if listen.endswith(":0"):
        host, _port = parse_address(listen[:-2] + ":1")
        return host, 0
    return parse_address(listen)


class DataDirLockedError(RuntimeError):
    """Another broker process holds the data directory."""


class _DirLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def close(self) -> None:
        os.close(self._fd)


def _lock_data_dir(data_dir: str) -> _DirLock:
    """An exclusive flock on `<data_dir>/lock`: two processes on one store would corrupt it."""
    import fcntl

    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(os.path.join(data_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirLockedError(f"{data_dir} is in use by another broker") from None
    return _DirLock(fd)


async def run_broker(
    config: BrokerConfig,
    *,
    fs: FileSystem | None = None,
    io_in_thread: bool | None = None,
    task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one broker node until cancelled. With `nursery.start(run_broker, config)` the
    caller gets the running `BrokerServer` (its `address` has the bound port)."""
    server = BrokerServer(config, fs, io_in_thread=io_in_thread)
    await server.serve(task_status=task_status)
