"""`mq demo storage`: a short tour of what the message store does, on real files."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from storage.files import RealFileSystem
from storage.message_store import MessageStore, StoreConfig
from storage.record import MessageRecord


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="short tours of the system")
    tours = demo.add_subparsers(dest="tour", metavar="TOUR", required=True)
    storage = tours.add_parser("storage", help="append, dispatch, pull, query, crash and recover")
    storage.add_argument("--dir", help="store directory (default: a new temp dir)")
    storage.set_defaults(handler=run_storage_demo)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def run_storage_demo(args: argparse.Namespace) -> int:
    root = args.dir or tempfile.mkdtemp(prefix="mq-demo-")
    config = StoreConfig(
        segment_bytes=64 << 10, cq_units_per_segment=64, index_slots=1024, index_entries_max=4096
    )
    fs = RealFileSystem()
    store = MessageStore(fs, root, config)
    print(f"store at {root} (64 KiB CommitLog segments for the demo; production default is 1 GiB)")

    now = _now_ms()
    records = [
        MessageRecord(
            topic="orders" if i % 3 else "payments",
            queue_id=i % 2,
            body=f"order #{i}".encode(),
            tags="paid" if i % 2 else "new",
            keys=f"order-{i}",
            msg_id=f"demo-{i:04d}",
            born_timestamp_ms=now,
            store_timestamp_ms=now,
            born_host="127.0.0.1:0",
        )
        for i in range(200)
    ]
    offsets = store.put_messages(records)
    print(f"appended {len(offsets)} messages to the CommitLog, offsets {offsets[0]}..{offsets[-1]}")
    dispatched = store.dispatch()
    print(f"dispatched {len(dispatched)} messages into ConsumeQueues and the IndexFile")
    store.flush(_now_ms())

    got = store.get_messages("orders", 1, 0, max_count=3)
    print(
        f"pull orders/1 from offset 0: {got.status.name}, next offset {got.next_offset}, queue max {got.max_offset}"
    )
    for queue_offset, frame in got.messages:
        record = MessageRecord.decode(frame)
        print(
            f"  [{queue_offset}] {record.msg_id} tags={record.tags} body={record.body.decode()!r}"
        )
    hits = store.query_by_key("orders", "order-7")
    print(f"query by key order-7: {[r.msg_id for r in hits]}")

    print("appending 5 more messages and 'crashing' (no clean close)...")
    store.put_messages(records[:5])
    store.dispatch()
    del store  # the abort marker stays: the next open recovers
    store = MessageStore(fs, root, config)
    rec = store.recovery
    print(
        f"recovered: clean={rec.clean} commitlog max={rec.commitlog_max} "
        f"truncated={rec.truncated_bytes} bytes, re-dispatched={rec.redispatched}"
    )
    print(
        f"orders/1 now holds queue offsets {store.min_offset('orders', 1)}..{store.max_offset('orders', 1)}"
    )
    store.close(_now_ms())
    print("files on disk:")
    for dirpath, _dirs, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            print(f"  {os.path.relpath(path, root):60s} {os.path.getsize(path):>10d} bytes")
    return 0
