"""The whole store under random appends, flushes, truncates, crashes and recoveries.

After every recovery: every record at or below the last synced offset is there
byte-identical, nothing past a torn record is served, ConsumeQueue and IndexFile
agree with the CommitLog, and queue offsets are contiguous.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from storage.files import SimFileSystem
from storage.message_store import GetStatus, MessageStore, StoreConfig
from storage.record import MAGIC_MESSAGE, MessageRecord

TOPICS = ("orders", "audit")
KEYS = ("k1", "k2", "k3")
CONFIG = StoreConfig(
    segment_bytes=1024,
    cq_units_per_segment=4,
    index_slots=8,
    index_entries_max=12,
    retention_ms=10**12,
    disk_ratio_max=1.0,
)


def make_record(topic: str, queue_id: int, key: str, body: bytes, seq: int) -> MessageRecord:
    return MessageRecord(
        topic=topic,
        queue_id=queue_id,
        body=body,
        tags="tagA" if seq % 2 else "tagB",
        keys=key,
        msg_id=f"id{seq:06d}",
        born_timestamp_ms=1000 + seq,
        store_timestamp_ms=2000 + seq,
        born_host="127.0.0.1:1",
        properties={"seq": str(seq)},
    )


class StoreMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def open_store(self, seed: int) -> None:
        self.fs = SimFileSystem(random.Random(seed))
        self.store = MessageStore(self.fs, "/data", CONFIG)
        self.seq = 0
        # commit offset -> encoded frame bytes, for every record we appended and still expect
        self.written: dict[int, bytes] = {}
        self.flushed = 0
        self.now_ms = 10_000

    @rule(
        batch=st.lists(
            st.tuples(
                st.sampled_from(TOPICS),
                st.integers(0, 1),
                st.sampled_from(KEYS),
                st.binary(max_size=120),
            ),
            min_size=1,
            max_size=5,
        )
    )
    def append(self, batch: list[tuple[str, int, str, bytes]]) -> None:
        records = []
        for topic, queue_id, key, body in batch:
            self.seq += 1
            records.append(make_record(topic, queue_id, key, body, self.seq))
        offsets = self.store.put_messages(records)
        for offset in offsets:
            frame, _ = self.store.commit_log.frame_at(offset)
            self.written[offset] = bytes(frame)

    @rule()
    def dispatch(self) -> None:
        self.store.dispatch()

    @rule()
    def flush(self) -> None:
        self.now_ms += 10
        self.flushed = self.store.flush(self.now_ms)

    @precondition(
        lambda self: self.store.commit_log.max_offset > self.store.dispatcher.dispatched_offset
    )
    @rule(data=st.data())
    def truncate_undispatched_tail(self, data: st.DataObject) -> None:
        tail = sorted(o for o in self.written if o >= self.store.dispatcher.dispatched_offset)
        if not tail:
            return
        cut = data.draw(st.sampled_from(tail))
        self.store.truncate(cut)
        for offset in tail:
            if offset >= cut:
                del self.written[offset]
        self.flushed = min(self.flushed, cut)

    @rule(tear=st.booleans())
    def crash_and_recover(self, tear: bool) -> None:
        self.fs.crash(tear=tear)
        self.store = MessageStore(self.fs, "/data", CONFIG)
        log_max = self.store.commit_log.max_offset
        for offset, frame in sorted(self.written.items()):
            end = offset + len(frame)
            if end <= self.flushed:
                assert end <= log_max, f"synced record at {offset} lost (log max {log_max})"
            if end <= log_max:
                assert bytes(self.store.commit_log.read(offset, len(frame))) == frame
            else:
                del self.written[offset]
        self.flushed = min(self.flushed, log_max)

    @rule()
    def clean_restart(self) -> None:
        self.now_ms += 10
        self.store.close(self.now_ms)
        self.store = MessageStore(self.fs, "/data", CONFIG)
        assert self.store.recovery.clean
        self.flushed = self.store.commit_log.max_offset

    @invariant()
    def log_serves_only_whole_frames_we_wrote(self) -> None:
        cl = self.store.commit_log
        seen = []
        for offset, frame in cl.iter_frames(cl.min_offset, cl.max_offset):
            assert int.from_bytes(frame[4:8], "little") == MAGIC_MESSAGE
            assert self.written.get(offset) == bytes(frame), (
                f"frame at {offset} is not one we wrote"
            )
            seen.append(offset)
        assert seen == sorted(o for o in self.written if o < cl.max_offset)

    @invariant()
    def queues_and_index_agree_with_the_log(self) -> None:
        store = self.store
        dispatched = store.dispatcher.dispatched_offset
        expected: dict[tuple[str, int], list[int]] = {}
        by_key: dict[tuple[str, str], set[int]] = {}
        for offset in sorted(o for o in self.written if o < dispatched):
            record = MessageRecord.decode(self.written[offset])
            expected.setdefault((record.topic, record.queue_id), []).append(offset)
            by_key.setdefault((record.topic, record.keys), set()).add(offset)
        for topic in TOPICS:
            for queue_id in (0, 1):
                want = expected.get((topic, queue_id), [])
                assert store.max_offset(topic, queue_id) == len(want)
                got = store.get_messages(topic, queue_id, 0, max_count=1000, max_bytes=1 << 30)
                if not want:
                    assert got.status in (
                        GetStatus.NO_MATCHED_LOGIC_QUEUE,
                        GetStatus.NO_MESSAGE_IN_QUEUE,
                    )
                    continue
                assert got.status is GetStatus.FOUND
                assert [q for q, _ in got.messages] == list(range(len(want))), (
                    "queue offsets contiguous"
                )
                assert [bytes(f) for _, f in got.messages] == [self.written[o] for o in want]
        for (topic, key), offsets in by_key.items():
            found = {r.msg_id for r in store.query_by_key(topic, key, max_count=1000)}
            want = {MessageRecord.decode(self.written[o]).msg_id for o in offsets}
            assert found == want, f"{topic}#{key}: missing {want - found}, extra {found - want}"


TestStoreStateful = StoreMachine.TestCase
TestStoreStateful.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
