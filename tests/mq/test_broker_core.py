"""Three BrokerCores over an in-memory network: the write path, redirects, idempotence,
leader changes, replicated topics, crashes and restarts. No sockets, no clock."""

from __future__ import annotations

import zlib

import pytest

from mq.broker import core as core_module
from mq.broker.core import RoleChanged, TopicsChanged
from mq.protocol import ErrorCode, Frame, RequestCode, request
from storage.errors import StorageError
from storage.record import MessageRecord, decode_message_header
from tests.mq.broker_cluster import CoreCluster, message_body, send_request


def frames_of(body: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "little")
        out.append(body[pos : pos + size])
        pos += size
    return out


def bodies_of(frame: Frame) -> list[bytes]:
    out = []
    for raw in frames_of(bytes(frame.body)):
        head = decode_message_header(raw)
        out.append(raw[head.body_span[0] : head.body_span[1]])
    return out


def all_bodies(cluster: CoreCluster, node: int, topic: str, queue_id: int = 0) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while True:
        response = cluster.pull(node, topic, queue_id, offset, max_count=1024)
        if response.fields["status"] != "FOUND":
            return out
        out += bodies_of(response)
        offset = response.fields["next_offset"]


@pytest.fixture
def cluster() -> CoreCluster:
    return CoreCluster()


def test_leader_commits_a_batch_and_every_node_serves_it(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    response = cluster.request(leader, send_request("orders", [b"a", b"b", b"c"]))
    assert response.ok, response.remark
    assert response.fields["queue_offset"] == 0
    assert response.fields["duplicate"] is False
    assert len(response.fields["msg_ids"]) == 3
    cluster.settle()
    for node in cluster.ids:
        pulled = cluster.pull(node, "orders")
        assert pulled.fields["status"] == "FOUND"
        assert pulled.fields["queue_offsets"] == [0, 1, 2]
        assert bodies_of(pulled) == [b"a", b"b", b"c"]
        heads = [decode_message_header(f) for f in frames_of(bytes(pulled.body))]
        assert all(h.store_timestamp_ms > 0 for h in heads), "the leader stamps store time"
    again = cluster.request(leader, send_request("orders", [b"d"]))
    assert again.fields["queue_offset"] == 3


def test_replicas_hold_byte_identical_commit_logs_and_queues(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    for i in range(20):
        cluster.request(leader, send_request("t", [b"x" * i] * (i % 3 + 1), queue_id=i % 4))
    cluster.settle()
    views = []
    for node in cluster.ids:
        core = cluster.cores[node]
        log = core.commit_log
        views.append(
            (
                bytes(log.read(0, log.max_offset)),
                [
                    [
                        (u.commit_offset, u.size)
                        for u in core.store.queues.get("t", q).get_range(0, 99)
                    ]
                    for q in range(4)
                ],
            )
        )
    assert views[0] == views[1] == views[2]


def test_a_follower_redirects_writes_to_the_leader(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    follower = cluster.followers()[0]
    response = cluster.request(follower, send_request("orders", [b"a"]))
    assert response.error == ErrorCode.NOT_LEADER
    assert response.fields == {"leader": f"127.0.0.1:{20_000 + leader}", "group": "g1"}
    create = cluster.request(follower, request(RequestCode.CREATE_TOPIC, {"topic": "x"}))
    assert create.error == ErrorCode.NOT_LEADER


def test_an_idempotent_retry_returns_the_original_result_and_stores_once(
    cluster: CoreCluster,
) -> None:
    leader = cluster.elect()
    cluster.request(leader, send_request("orders", [b"before"]))
    first = cluster.request(
        leader, send_request("orders", [b"a", b"b"], producer_id="p1", seq=1, prefix="x")
    )
    assert first.fields["duplicate"] is False
    retry = cluster.request(
        leader, send_request("orders", [b"a", b"b"], producer_id="p1", seq=1, prefix="x")
    )
    assert retry.ok
    assert retry.fields["duplicate"] is True
    for key in ("msg_ids", "queue_id", "queue_offset", "commit_offset"):
        assert retry.fields[key] == first.fields[key], key
    # Two copies proposed before either is applied: the log holds both, one is stored.
    a = cluster.call(leader, send_request("orders", [b"c"], producer_id="p1", seq=2))
    b = cluster.call(leader, send_request("orders", [b"c"], producer_id="p1", seq=2))
    cluster.run()
    cluster.settle()
    ra, rb = cluster.reply(a), cluster.reply(b)
    assert ra is not None and rb is not None
    assert (ra.fields["duplicate"], rb.fields["duplicate"]) == (False, True)
    assert ra.fields["queue_offset"] == rb.fields["queue_offset"] == 3
    for node in cluster.ids:
        assert all_bodies(cluster, node, "orders") == [b"before", b"a", b"b", b"c"]


def test_pending_sends_fail_with_not_leader_when_leadership_is_lost_and_retries_store_once(
    cluster: CoreCluster,
) -> None:
    old = cluster.elect()
    cluster.request(old, send_request("orders", [b"first"]))
    cluster.settle()
    # The entry reaches the followers but their acknowledgements are lost, then the
    # old leader is cut off: it cannot commit, and steps down at its next quorum check.
    cluster.drop = lambda src, dst, frame: (
        dst == old and frame.fields.get("type") == "AppendResponse"
    )
    lost = cluster.call(old, send_request("orders", [b"second"], producer_id="p", seq=7))
    cluster.run()
    assert cluster.reply(lost) is None
    cluster.drop = None
    cluster.isolate(old)
    for _ in range(200):
        cluster.tick()
        if cluster.reply(lost) is not None and cluster.leader() not in (None, old):
            break
    response = cluster.reply(lost)
    assert response is not None and response.error == ErrorCode.NOT_LEADER
    new = cluster.leader()
    assert new is not None and new != old
    retry = cluster.request(new, send_request("orders", [b"second"], producer_id="p", seq=7))
    assert retry.ok
    assert retry.fields["duplicate"] is True, "the new leader committed the old entry"
    assert retry.fields["queue_offset"] == 1
    cluster.heal()
    cluster.elect()
    cluster.settle(20)
    for node in cluster.ids:
        assert all_bodies(cluster, node, "orders") == [b"first", b"second"]


def test_a_send_lost_with_its_leader_is_stored_once_when_retried(cluster: CoreCluster) -> None:
    old = cluster.elect()
    cluster.isolate(old)  # the entry never leaves the old leader
    lost = cluster.call(old, send_request("orders", [b"only"], producer_id="p", seq=1))
    for _ in range(300):
        cluster.tick()
        if cluster.leader() not in (None, old) and cluster.reply(lost) is not None:
            break
    assert cluster.reply(lost).error == ErrorCode.NOT_LEADER  # type: ignore[union-attr]
    new = cluster.leader()
    assert new is not None
    retry = cluster.request(new, send_request("orders", [b"only"], producer_id="p", seq=1))
    assert retry.ok and retry.fields["duplicate"] is False
    cluster.heal()
    cluster.settle(30)
    for node in cluster.ids:
        assert all_bodies(cluster, node, "orders") == [b"only"], node


def test_topic_creation_is_replicated(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    create = request(
        RequestCode.CREATE_TOPIC, {"topic": "payments", "read_queues": 2, "write_queues": 2}
    )
    assert cluster.request(leader, create).ok
    cluster.settle()
    for node in cluster.ids:
        topics = cluster.request(node, request(RequestCode.GET_ALL_TOPICS)).fields["topics"]
        assert topics == {"payments": {"read_queues": 2, "write_queues": 2, "perm": 6}}
    assert any(isinstance(e, TopicsChanged) for _, e in cluster.events)
    bad_queue = cluster.request(leader, send_request("payments", [b"a"], queue_id=2))
    assert bad_queue.error == ErrorCode.NO_ROUTE  # a stale route: the sender may retry
    assert bad_queue.fields["write_queues"] == 2


def test_auto_create_can_be_turned_off() -> None:
    cluster = CoreCluster(auto_create_topics=False)
    leader = cluster.elect()
    response = cluster.request(leader, send_request("nope", [b"a"]))
    assert response.error == ErrorCode.TOPIC_NOT_EXIST


def test_auto_created_topics_get_the_default_queues(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    assert cluster.request(leader, send_request("auto", [b"a"], queue_id=7)).ok
    topics = cluster.request(leader, request(RequestCode.GET_ALL_TOPICS)).fields["topics"]
    assert topics["auto"]["write_queues"] == 8
    assert cluster.request(leader, send_request("other", [b"a"], queue_id=8)).error == (
        ErrorCode.NO_ROUTE
    )


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda f: {**f, "count": 2}, ErrorCode.INVALID_REQUEST),
        (lambda f: {**f, "topic": "other"}, ErrorCode.INVALID_REQUEST),
        (lambda f: {**f, "topic": "bad topic"}, ErrorCode.INVALID_TOPIC),
        (lambda f: {**f, "queue_id": "0"}, ErrorCode.INVALID_REQUEST),
    ],
)
def test_malformed_sends_are_refused(cluster: CoreCluster, mutate, error) -> None:  # type: ignore[no-untyped-def]
    leader = cluster.elect()
    good = send_request("orders", [b"a"])
    bad = request(RequestCode.SEND_BATCH, mutate(dict(good.fields)), good.body)
    assert cluster.request(leader, bad).error == error


def test_a_corrupted_message_frame_is_refused(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    good = send_request("orders", [b"abc"])
    body = bytearray(good.body)
    body[-1] ^= 0xFF
    response = cluster.request(leader, request(RequestCode.SEND_BATCH, good.fields, bytes(body)))
    assert response.error == ErrorCode.INVALID_REQUEST
    assert "crc" in response.remark


@pytest.mark.parametrize(
    "props", [b"\xff\xfe\x01\x02", b"p\x02v\x02", b"pv\x01x", b"\x01v\x02\x02"]
)
def test_a_message_whose_properties_do_not_decode_is_refused_even_with_a_good_crc(
    cluster: CoreCluster, props: bytes
) -> None:
    """Stored, it would make every pull of its queue fail in the consumer's decode."""
    leader = cluster.elect()
    fields = {"topic": "orders", "queue_id": 0, "count": 1}
    good = request(
        RequestCode.SEND_BATCH, fields, message_body("orders", 0, [b"abc"], properties={"p": "v"})
    )
    body = bytearray(good.body)
    at = body.index(b"p\x01v\x02")
    body[at : at + 4] = props
    body[8:12] = zlib.crc32(body[12:]).to_bytes(4, "little")
    decode_message_header(body)  # only the properties are wrong
    response = cluster.request(leader, request(RequestCode.SEND_BATCH, good.fields, bytes(body)))
    assert response.error == ErrorCode.INVALID_REQUEST
    assert "propert" in response.remark
    assert cluster.request(leader, good).ok  # the intact message is accepted


def test_sends_past_the_pending_bound_get_system_busy() -> None:
    cluster = CoreCluster(pending_requests_max=2)
    leader = cluster.elect()
    cluster.isolate(leader)
    ids = [cluster.call(leader, send_request("t", [b"x"])) for _ in range(3)]
    busy = cluster.reply(ids[2])
    assert busy is not None and busy.error == ErrorCode.SYSTEM_BUSY
    assert cluster.reply(ids[0]) is None


def test_a_send_that_cannot_commit_times_out() -> None:
    cluster = CoreCluster(send_timeout_ms=50, election_ms=1000, heartbeat_ms=100)
    leader = cluster.elect()
    cluster.isolate(leader)
    pending = cluster.call(leader, send_request("t", [b"x"]))
    cluster.tick(4)
    assert cluster.reply(pending) is None
    cluster.tick(2)
    response = cluster.reply(pending)
    assert response is not None and response.error == ErrorCode.REPLICATION_TIMEOUT


def test_a_long_poll_is_answered_when_messages_arrive(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    follower = cluster.followers()[0]
    poll = cluster.call(
        follower,
        request(
            RequestCode.PULL_MESSAGE,
            {"topic": "t", "queue_id": 0, "offset": 0, "suspend_ms": 5_000},
        ),
    )
    cluster.tick(3)
    assert cluster.reply(poll) is None
    cluster.request(leader, send_request("t", [b"late"]))
    cluster.settle()
    response = cluster.reply(poll)
    assert response is not None and response.fields["status"] == "FOUND"
    assert bodies_of(response) == [b"late"]
    empty = cluster.call(
        follower,
        request(
            RequestCode.PULL_MESSAGE, {"topic": "t", "queue_id": 1, "offset": 0, "suspend_ms": 100}
        ),
    )
    cluster.tick(9)
    assert cluster.reply(empty) is None
    cluster.tick(2)
    assert cluster.reply(empty).fields["status"] == "NO_NEW_MSG"  # type: ignore[union-attr]


def test_a_pull_budget_over_the_limit_is_lowered_so_the_answer_fits_a_frame(
    cluster: CoreCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer asking for 64 MiB at once (more than a 16 MiB frame holds) gets
    PULL_BYTES_MAX's worth and goes on, instead of FRAME_TOO_LARGE at that offset for good."""
    monkeypatch.setattr(core_module, "PULL_BYTES_MAX", 3_000)
    leader = cluster.elect()
    for i in range(5):
        assert cluster.request(leader, send_request("big", [bytes([i]) * 1_000])).ok
    seen: list[bytes] = []
    offset = 0
    while len(seen) < 5:
        response = cluster.pull(leader, "big", 0, offset, max_count=32, max_bytes=64 << 20)
        assert response.fields["status"] == "FOUND"
        assert len(response.body) <= 3_000
        seen += bodies_of(response)
        offset = response.fields["next_offset"]
    assert seen == [bytes([i]) * 1_000 for i in range(5)]


def test_reads_by_offset_key_id_and_time(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    sent = cluster.request(leader, send_request("t", [b"a", b"b"]))
    cluster.settle()
    node = cluster.followers()[0]

    def ask(code: RequestCode, **fields: object) -> Frame:
        return cluster.request(node, request(code, fields))

    assert ask(RequestCode.GET_MAX_OFFSET, topic="t", queue_id=0).fields == {"offset": 2}
    assert ask(RequestCode.GET_MIN_OFFSET, topic="t", queue_id=0).fields == {"offset": 0}
    assert ask(
        RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, topic="t", queue_id=0, timestamp_ms=0
    ).fields == {"offset": 0}
    msg_id = sent.fields["msg_ids"][1]
    view = ask(RequestCode.VIEW_MESSAGE_BY_ID, topic="t", msg_id=msg_id)
    assert decode_message_header(bytes(view.body)).msg_id == msg_id
    missing = ask(RequestCode.VIEW_MESSAGE_BY_ID, topic="t", msg_id="nope")
    assert missing.error == ErrorCode.QUERY_NOT_FOUND
    status = ask(RequestCode.GET_BROKER_STATUS).fields
    assert status["role"] == "follower" and status["leader"] == f"127.0.0.1:{20_000 + leader}"
    assert status["commit_index"] == status["applied_index"] >= 2


def test_a_crashed_follower_recovers_and_catches_up(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    for i in range(5):
        cluster.request(leader, send_request("t", [b"%d" % i], producer_id="p", seq=i))
    victim = cluster.followers()[0]
    cluster.crash(victim)
    for i in range(5, 10):
        cluster.request(leader, send_request("t", [b"%d" % i], producer_id="p", seq=i))
    cluster.start(victim)
    cluster.settle(20)
    expected = [b"%d" % i for i in range(10)]
    assert all_bodies(cluster, victim, "t") == expected
    # Its producer table was rebuilt: as leader it recognises a retry.
    cluster.crash(leader)
    new = cluster.elect()
    retry = cluster.request(new, send_request("t", [b"9"], producer_id="p", seq=9))
    assert retry.fields["duplicate"] is True and retry.fields["queue_offset"] == 9
    assert all_bodies(cluster, new, "t") == expected


def test_acknowledged_sends_survive_a_leader_crash(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    acked = []
    for i in range(8):
        response = cluster.request(leader, send_request("t", [b"%d" % i]))
        assert response.ok
        acked.append(b"%d" % i)
    cluster.crash(leader)
    new = cluster.elect()
    assert all_bodies(cluster, new, "t") == acked
    cluster.start(leader)
    cluster.settle(20)
    assert all_bodies(cluster, leader, "t") == acked


def test_every_node_restarts_cleanly_with_its_state(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    cluster.request(leader, request(RequestCode.CREATE_TOPIC, {"topic": "kept", "write_queues": 3}))
    cluster.request(leader, send_request("kept", [b"v"], producer_id="p", seq=3))
    cluster.settle()
    for node in cluster.ids:
        cluster.stop(node)
    for node in cluster.ids:
        core = cluster.start(node)
        assert core.topics["kept"].write_queues == 3
        assert core.store.recovery.clean
    new = cluster.elect()
    retry = cluster.request(new, send_request("kept", [b"v"], producer_id="p", seq=3))
    assert retry.fields["duplicate"] is True and retry.fields["queue_offset"] == 0


def test_state_is_rebuilt_from_snapshot_plus_log_after_a_crash() -> None:
    cluster = CoreCluster(checkpoint_interval_ms=20, state_snapshot_interval_ms=20)
    leader = cluster.elect()
    cluster.request(leader, send_request("a", [b"1"], producer_id="p", seq=1))
    cluster.settle(10)  # checkpoints and snapshots happen
    cluster.request(leader, send_request("b", [b"2"], producer_id="q", seq=1))
    cluster.settle(1)
    for node in cluster.ids:
        cluster.crash(node)
    for node in cluster.ids:
        cluster.start(node)
    new = cluster.elect()
    cluster.settle()
    for node in cluster.ids:
        assert set(cluster.cores[node].topics) == {"a", "b"}
        assert all_bodies(cluster, node, "a") == [b"1"]
        assert all_bodies(cluster, node, "b") == [b"2"]
    for pid in ("p", "q"):
        retry = cluster.request(
            new, send_request("a" if pid == "p" else "b", [b"?"], producer_id=pid, seq=1)
        )
        assert retry.fields["duplicate"] is True, pid


def test_role_changes_are_reported(cluster: CoreCluster) -> None:
    leader = cluster.elect()
    roles = {src: event.role for src, event in cluster.events if isinstance(event, RoleChanged)}
    assert roles[leader] == "leader"
    assert all(roles[n] == "follower" for n in cluster.followers())


def test_a_single_node_group_commits_on_its_own() -> None:
    cluster = CoreCluster(size=1)
    leader = cluster.elect()
    response = cluster.request(leader, send_request("t", [b"solo"]))
    assert response.ok
    assert all_bodies(cluster, leader, "t") == [b"solo"]


def test_async_flush_mode_acknowledges_and_replicates() -> None:
    cluster = CoreCluster(flush="async", flush_interval_ms=30)
    leader = cluster.elect()
    assert cluster.request(leader, send_request("t", [b"a"])).ok
    cluster.settle(5)
    for node in cluster.ids:
        log = cluster.cores[node].commit_log
        assert log.flushed_offset == log.max_offset, "the periodic flush ran"
        assert all_bodies(cluster, node, "t") == [b"a"]


def test_commands_after_the_state_snapshot_are_replayed_on_restart() -> None:
    # Checkpoints move the store's dispatched point past commands no snapshot has seen:
    # only the replay of the log between snapshot and checkpoint brings them back.
    cluster = CoreCluster(checkpoint_interval_ms=20, state_snapshot_interval_ms=10_000_000)
    leader = cluster.elect()
    cluster.request(leader, request(RequestCode.CREATE_TOPIC, {"topic": "made", "write_queues": 2}))
    cluster.request(leader, send_request("auto", [b"1"], producer_id="p", seq=5))
    cluster.settle(10)
    for node in cluster.ids:
        assert cluster.cores[node].store.recovery is not None
        cluster.crash(node)
    for node in cluster.ids:
        core = cluster.start(node)
        assert core.store.dispatcher.dispatched_offset > 0, "the checkpoint covered the commands"
        assert set(core.topics) == {"made", "auto"}
        assert core._state.last_send("p") is not None


def test_raft_messages_wait_while_an_fsync_is_in_flight(cluster: CoreCluster) -> None:
    # Stepping a message could truncate the log under the fsync in flight, so the core
    # holds messages back between ready() and advance().
    leader = cluster.elect()
    follower = cluster.followers()[0]
    core = cluster.cores[follower]
    cluster.call(leader, send_request("t", [b"a"]))
    cluster.process(leader)
    appends = [m for m in cluster.network if m[1] == follower]
    cluster.network.clear()
    assert appends
    cluster.deliver(*appends[0])
    work = core.ready(cluster.now_ms)
    assert work is not None and work.plan is not None, "the append needs an fsync"
    last = core.log.last_index()
    cluster.call(leader, send_request("t", [b"b"]))
    cluster.process(leader)
    for message in [m for m in cluster.network if m[1] == follower]:
        cluster.deliver(*message)
    assert core.log.last_index() == last, "held back while the fsync runs"
    work.run()
    core.advance(work, cluster.now_ms)
    assert core.log.last_index() > last, "stepped once the fsync is reported"
    cluster.network.clear()
    cluster.settle()
    assert all_bodies(cluster, follower, "t") == [b"a", b"b"]


def test_a_leader_hands_over_to_the_most_caught_up_node_and_loses_nothing(
    cluster: CoreCluster,
) -> None:
    leader = cluster.elect()
    for i in range(5):
        frame = send_request("handover", [f"m{i}".encode()], prefix=f"p{i}-")
        assert cluster.request(leader, frame).ok
    term = cluster.cores[leader].raft.term
    target = cluster.cores[leader].hand_over()
    assert target is not None and target != leader
    # While the transfer runs, sends are refused, naming the node taking over.
    reply_id = cluster.call(leader, send_request("handover", [b"late"], prefix="late-"))
    refused = cluster.reply(reply_id)
    assert refused is not None and refused.error == ErrorCode.NOT_LEADER
    assert refused.fields["leader"] == cluster.cores[target].address
    cluster.run()
    assert cluster.leader() == target
    assert cluster.cores[target].raft.term == term + 1  # one election, no split vote
    assert cluster.request(target, send_request("handover", [b"after"])).ok
    cluster.settle()
    for node in cluster.ids:
        pulled = cluster.pull(node, "handover", 0, 0)
        assert pulled.fields["status"] == "FOUND"
        bodies = [MessageRecord.decode(f).body for f in _frames(pulled.body)]
        assert bodies == [b"m0", b"m1", b"m2", b"m3", b"m4", b"after"]


def _frames(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "little")
        out.append(body[pos : pos + size])
        pos += size
    return out


def test_only_a_leader_with_peers_hands_over() -> None:
    cluster = CoreCluster(size=1)
    leader = cluster.elect()
    assert cluster.cores[leader].hand_over() is None
    three = CoreCluster()
    leader = three.elect()
    assert three.cores[three.followers()[0]].hand_over() is None


def test_an_entry_larger_than_a_segment_is_refused_and_the_group_goes_on() -> None:
    cluster = CoreCluster(segment_bytes=64 << 10)
    leader = cluster.elect()
    too_big = cluster.request(leader, send_request("orders", [bytes(40_000)] * 2))
    assert too_big.error == ErrorCode.MESSAGE_TOO_LARGE
    assert "does not fit a 65536-byte segment" in too_big.remark
    entries = [[f"a-long-topic-name-{i:05d}", 0, 10**6, 0] for i in range(4000)]  # > 64 KiB
    commit = request(RequestCode.UPDATE_CONSUMER_OFFSET, {"group": "g", "offsets": entries})
    refused = cluster.request(leader, commit)
    assert refused.error == ErrorCode.INVALID_REQUEST and "send fewer entries" in refused.remark
    assert cluster.request(leader, send_request("orders", [b"fits"])).ok


def test_a_restart_takes_the_committed_entries_from_the_sealed_index() -> None:
    """Checkpoints seal the committed entries into `raft-index/`: a start after a crash
    (and after a clean stop) loads them and walks only the entries after them, and
    every node still serves every message."""
    cluster = CoreCluster(checkpoint_interval_ms=20, raft_index_chunk_entries=4)
    leader = cluster.elect()
    sent = [b"%d" % i for i in range(15)]
    for i, body in enumerate(sent):
        assert cluster.request(leader, send_request("t", [body], producer_id="p", seq=i)).ok
    cluster.settle(10)  # checkpoints seal what is committed
    for node in cluster.ids:
        cluster.crash(node) if node != leader else cluster.stop(node)
    for node in cluster.ids:
        core = cluster.start(node)
        last = core.entry_log.last_index()
        assert core.entry_log.opened_from_index == last - last % 4 >= 12, node
        assert core.entry_log.opened_by_scan == last % 4
    cluster.elect()
    cluster.settle()
    for node in cluster.ids:
        assert all_bodies(cluster, node, "t") == sent


def test_a_node_whose_hard_state_is_gone_but_log_is_not_joins_instead_of_voting() -> None:
    """Its vote of the current term is forgotten: voting again could elect a second
    leader of that term. It waits, as a node on a replaced disk does, until a leader
    caught it up."""
    cluster = CoreCluster()
    leader = cluster.elect()
    assert cluster.request(leader, send_request("t", [b"kept"])).ok
    cluster.settle()
    node = cluster.followers()[0]
    cluster.stop(node)
    cluster.fss[node].remove(f"/n{node}/hardstate")
    restarted = cluster.start(node)
    assert restarted.raft.term == 0 and restarted.raft.joining
    assert cluster.request(leader, send_request("t", [b"after"])).ok
    cluster.settle(20)
    assert not cluster.cores[node].raft.joining  # caught up by the leader
    assert cluster.cores[node].raft.term == cluster.cores[leader].raft.term
    assert all_bodies(cluster, node, "t") == [b"kept", b"after"]


def test_a_fresh_node_with_no_hard_state_and_no_log_votes_as_usual() -> None:
    cluster = CoreCluster()
    assert not any(core.raft.joining for core in cluster.cores.values())
    cluster.elect()


def test_a_node_whose_consume_queue_files_were_lost_refuses_to_start() -> None:
    """It would hand out queue offsets the other replicas gave to other messages: the
    newest segment snapshot says how many units each queue had, and a queue holding
    fewer stops the start with an error naming it."""
    cluster = CoreCluster(segment_bytes=64 << 10)
    leader = cluster.elect()
    for i in range(12):
        assert cluster.request(leader, send_request("t", [bytes([i]) * 8000])).ok
    cluster.settle()
    node = cluster.followers()[0]
    assert cluster.cores[node].commit_log.max_offset > 64 << 10  # past a segment boundary
    cluster.stop(node)
    fs = cluster.fss[node]
    directory = f"/n{node}/store/consumequeue/t/0"
    for name in fs.listdir(directory):
        fs.remove(f"{directory}/{name}")
    with pytest.raises(StorageError, match=r"ConsumeQueue t/0 .* lost or damaged"):
        cluster.start(node)
