"""IndexFile / IndexService: key lookup by hash chains, rolling, truncation, recovery."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.files import DiskFullError, RealFileSystem, SimFileSystem
from storage.index_file import (
    ENTRY_BYTES,
    HEADER_BYTES,
    INDEX_DIR,
    IndexService,
    file_bytes,
    file_name,
    index_key,
    key_hash,
)

ROOT = "/store"
DIR = f"{ROOT}/{INDEX_DIR}"
T0 = 1_700_000_000_000  # a store timestamp, ms
ALL_TIME = (0, 2**63)
COLLIDING = ("T#k7", "T#k22763470")  # two keys with the same CRC-32


def sim_fs(seed: int = 1, capacity_bytes: int | None = None) -> SimFileSystem:
    return SimFileSystem(random.Random(seed), capacity_bytes)


def service(fs, slots: int = 8, entries: int = 16) -> IndexService:
    return IndexService(fs, ROOT, slot_count=slots, entry_count_max=entries)


def query(
    index: IndexService, key: str, begin_ms: int = 0, end_ms: int = 2**63, max_count: int = 1000
):
    return index.query(key, begin_ms, end_ms, max_count)


class Model:
    """Brute force: every put in order, matched by hash as the index matches."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, int, int]] = []

    def query(self, key: str, begin_ms: int, end_ms: int, max_count: int) -> list[int]:
        h = key_hash(key)
        hits = [
            co for k, co, ts in reversed(self.puts) if key_hash(k) == h and begin_ms <= ts <= end_ms
        ]
        return hits[:max_count]


# ---------------------------------------------------------------- put and query


def test_key_hash_is_crc32_of_the_utf8_key_and_keys_carry_their_topic():
    assert index_key("TopicA", "order-1") == "TopicA#order-1"
    assert key_hash("TopicA#order-1") == 810776176
    assert key_hash("T#ключ") == key_hash("T#ключ")


def test_query_returns_commit_offsets_newest_first():
    index = service(sim_fs())
    for i in range(6):
        index.put(f"T#k{i % 2}", 100 * i, T0 + i)
    assert query(index, "T#k0") == [400, 200, 0]
    assert query(index, "T#k1") == [500, 300, 100]
    assert query(index, "T#missing") == []
    assert index.last_commit_offset == 500


def test_keys_sharing_a_slot_are_told_apart_by_their_hash():
    index = service(sim_fs(), slots=1)
    index.put("T#a", 0, T0)
    index.put("T#b", 10, T0)
    index.put("T#a", 20, T0)
    assert query(index, "T#a") == [20, 0]
    assert query(index, "T#b") == [10]
    assert index.files()[0].used_slot_count == 1


def test_colliding_hashes_return_both_candidates_for_the_caller_to_check():
    assert key_hash(COLLIDING[0]) == key_hash(COLLIDING[1])
    index = service(sim_fs())
    index.put(COLLIDING[0], 0, T0)
    index.put(COLLIDING[1], 10, T0)
    assert query(index, COLLIDING[0]) == [10, 0]


def test_time_range_filters_entries_and_max_count_limits_them():
    index = service(sim_fs())
    for i in range(10):
        index.put("T#k", 100 * i, T0 + 1_000 * i)
    assert query(index, "T#k", T0 + 2_000, T0 + 4_000) == [400, 300, 200]
    assert query(index, "T#k", T0 + 2_001, T0 + 3_999) == [300]
    assert query(index, "T#k", max_count=2) == [900, 800]
    assert query(index, "T#k", max_count=0) == []
    assert query(index, "T#k", 0, T0 - 1) == []


def test_rolls_to_a_new_file_when_full_and_queries_span_files():
    fs = sim_fs()
    index = service(fs, entries=4)
    for i in range(10):
        index.put("T#k", 100 * i, T0 + i)
    assert fs.listdir(DIR) == [file_name(0), file_name(400), file_name(800)]
    assert fs.file_size(f"{DIR}/{file_name(0)}") == file_bytes(8, 4)
    assert query(index, "T#k") == [100 * i for i in reversed(range(10))]
    assert query(index, "T#k", T0 + 2, T0 + 5) == [500, 400, 300, 200]
    assert query(index, "T#k", max_count=5) == [900, 800, 700, 600, 500]


def test_file_names_stay_increasing_when_one_message_has_more_keys_than_a_file():
    fs = sim_fs()
    index = service(fs, entries=2)
    for i in range(5):
        index.put(f"T#k{i}", 1_000, T0)
    assert fs.listdir(DIR) == [file_name(1_000), file_name(1_001), file_name(1_002)]
    assert [f.begin_commit_offset for f in index.files()] == [1_000] * 3
    assert query(index, "T#k4") == [1_000]
    index.flush()
    again = service(fs, entries=2)
    assert [query(again, f"T#k{i}") for i in range(5)] == [[1_000]] * 5


def test_a_time_delta_that_does_not_fit_rolls_the_file():
    fs = sim_fs()
    index = service(fs)
    index.put("T#k", 0, T0)
    index.put("T#k", 10, T0 + 2**32)  # 49.7 days later
    assert len(index.files()) == 2
    assert query(index, "T#k", T0 + 2**32, T0 + 2**32) == [10]
    assert query(index, "T#k", T0, T0) == [0]


def test_a_clock_that_went_back_is_indexed_at_the_file_begin_time():
    index = service(sim_fs())
    index.put("T#k", 0, T0)
    index.put("T#k", 10, T0 - 5_000)
    assert query(index, "T#k", T0, T0) == [10, 0]
    assert query(index, "T#k", T0 - 5_000, T0 - 1) == []


def test_disk_full_when_rolling_indexes_nothing_and_can_be_retried():
    fs = sim_fs(capacity_bytes=file_bytes(8, 2) + 10)
    index = service(fs, entries=2)
    index.put("T#a", 0, T0)
    index.put("T#a", 1, T0)
    with pytest.raises(DiskFullError):
        index.put("T#a", 2, T0)
    assert query(index, "T#a") == [1, 0]
    fs.capacity_bytes = None
    index.put("T#a", 2, T0)
    assert query(index, "T#a") == [2, 1, 0]


# ---------------------------------------------------------------- truncation


def test_truncate_restores_each_slot_to_its_previous_chain():
    fs = sim_fs()
    index = service(fs, slots=2)
    model = Model()
    for i in range(12):
        key = f"T#k{i % 5}"
        index.put(key, 100 * i, T0 + i)
        model.puts.append((key, 100 * i, T0 + i))
    index.truncate_to_commit_offset(650)
    model.puts = model.puts[:7]
    for k in range(5):
        assert query(index, f"T#k{k}") == model.query(f"T#k{k}", *ALL_TIME, 1000)
    assert index.last_commit_offset == 600
    index.put("T#k0", 700, T0 + 20)
    model.puts.append(("T#k0", 700, T0 + 20))
    assert query(index, "T#k0") == model.query("T#k0", *ALL_TIME, 1000)
    reopened = service(fs, slots=2)
    for k in range(5):
        assert query(reopened, f"T#k{k}") == model.query(f"T#k{k}", *ALL_TIME, 1000)


def test_truncate_deletes_whole_files_beyond_and_can_empty_the_index():
    fs = sim_fs()
    index = service(fs, entries=4)
    for i in range(10):
        index.put("T#k", 100 * i, T0 + i)
    index.truncate_to_commit_offset(500)
    assert fs.listdir(DIR) == [file_name(0), file_name(400)]
    assert query(index, "T#k") == [400, 300, 200, 100, 0]
    index.truncate_to_commit_offset(400)
    assert fs.listdir(DIR) == [file_name(0)]
    index.truncate_to_commit_offset(0)
    assert fs.listdir(DIR) == []
    assert index.last_commit_offset is None
    index.put("T#k", 0, T0)
    assert query(index, "T#k") == [0]


def test_clear_deletes_every_file_and_a_failed_delete_can_be_retried(monkeypatch):
    fs = sim_fs()
    index = service(fs, entries=4)
    for i in range(10):
        index.put("T#k", 100 * i, T0 + i)

    def failing_remove(path: str) -> None:
        raise OSError("EIO")

    monkeypatch.setattr(fs, "remove", failing_remove)
    with pytest.raises(OSError):
        index.clear()
    monkeypatch.undo()
    assert len(fs.listdir(DIR)) == 3
    index.clear()
    assert fs.listdir(DIR) == [] and index.files() == []
    assert index.last_commit_offset is None
    index.put("T#k", 50_000, T0)
    assert query(index, "T#k") == [50_000]
    index.flush()
    assert query(service(fs, entries=4), "T#k") == [50_000]


# ---------------------------------------------------------------- recovery


def test_reopen_after_flush_restores_every_entry():
    fs = sim_fs()
    index = service(fs, entries=4)
    for i in range(7):
        index.put(f"T#k{i % 3}", 100 * i, T0 + i)
    index.flush()
    index.close()
    again = service(fs, entries=4)
    assert query(again, "T#k0") == [600, 300, 0]
    assert [f.entry_count for f in again.files()] == [4, 3]
    again.put("T#k0", 700, T0 + 7)
    assert query(again, "T#k0") == [700, 600, 300, 0]


def test_reopen_with_other_geometry_keeps_reading_old_files():
    fs = sim_fs()
    index = service(fs, slots=8, entries=4)
    for i in range(3):
        index.put("T#k", i, T0)
    index.flush()
    again = service(fs, slots=64, entries=32)
    assert query(again, "T#k") == [2, 1, 0]


def test_real_files_round_trip(tmp_path):
    fs = RealFileSystem()
    index = IndexService(fs, str(tmp_path), slot_count=8, entry_count_max=4)
    for i in range(6):
        index.put("T#k", i, T0 + i)
    index.flush()
    index.close()
    again = IndexService(fs, str(tmp_path), slot_count=8, entry_count_max=4)
    assert query(again, "T#k") == [5, 4, 3, 2, 1, 0]
    again.close()


def test_unflushed_entries_that_landed_are_adopted_and_torn_ones_dropped():
    outcomes = set()
    for seed in range(60):
        fs = sim_fs(seed)
        index = service(fs, slots=4, entries=64)
        model = Model()
        for i in range(8):
            model.puts.append((f"T#k{i % 3}", 10 * i, T0 + i))
            index.put(*model.puts[-1])
        index.flush()
        for i in range(8, 20):
            model.puts.append((f"T#k{i % 3}", 10 * i, T0 + i))
            index.put(*model.puts[-1])
        fs.crash()
        again = service(fs, slots=4, entries=64)
        kept = again.files()[0].entry_count
        assert 8 <= kept <= 20
        outcomes.add(kept)
        model.puts = model.puts[:kept]
        for k in range(3):
            assert query(again, f"T#k{k}") == model.query(f"T#k{k}", *ALL_TIME, 1000)
        assert again.last_commit_offset == model.puts[-1][1]
    assert len(outcomes) > 3


def test_interrupted_truncation_leaves_a_consistent_index():
    for seed in range(40):
        fs = sim_fs(seed)
        index = service(fs, slots=3)
        model = Model()
        for i in range(14):
            model.puts.append((f"T#k{i % 4}", 10 * i, T0 + i))
            index.put(*model.puts[-1])
        index.flush()
        fs.sync_error = OSError("EIO")  # the truncation's syncs fail: its writes stay unsynced
        with pytest.raises(OSError):
            index.truncate_to_commit_offset(50)
        fs.sync_error = None
        fs.crash()
        again = service(fs, slots=3)
        kept = again.files()[0].entry_count
        assert 5 <= kept <= 14
        model.puts = model.puts[:kept]
        for k in range(4):
            assert query(again, f"T#k{k}") == model.query(f"T#k{k}", *ALL_TIME, 1000)


def test_a_newest_file_without_entries_is_removed_on_open():
    fs = sim_fs()
    index = service(fs, entries=2)
    for i in range(3):
        index.put("T#k", i, T0)
    fs.crash(tear=False)  # the third entry, alone in the new file, never synced
    again = service(fs, entries=2)
    assert fs.listdir(DIR) == [file_name(0)]
    assert query(again, "T#k") == [1, 0]


def test_flipped_bytes_never_crash_a_query_or_an_open():
    for seed in range(40):
        rng = random.Random(seed)
        fs = sim_fs(seed)
        index = service(fs, slots=4, entries=32)
        for i in range(40):
            index.put(f"T#k{i % 6}", 10 * i, T0 + i)
        index.flush()
        for _ in range(rng.randrange(1, 12)):
            path = f"{DIR}/{rng.choice(fs.listdir(DIR))}"
            pos = rng.choice([rng.randrange(0, HEADER_BYTES), rng.randrange(0, fs.file_size(path))])
            fs.flip_byte(path, pos)
        for idx in (index, service(fs, slots=4, entries=32)):
            for k in range(7):
                hits = idx.query(f"T#k{k}", T0, T0 + 1_000, 100)
                assert len(hits) <= 100
                assert all(isinstance(h, int) for h in hits)


def test_a_slot_pointing_past_the_entries_is_ignored_by_query_and_put():
    fs = sim_fs()
    index = service(fs, slots=1, entries=1)
    index.put("T#k", 0, T0)
    index.put("T#k", 10, T0)
    sealed = f"{DIR}/{file_name(0)}"
    fs.flip_byte(sealed, HEADER_BYTES + 3)  # slot 0 of the sealed file -> entry 0xFF000001
    assert query(index, "T#k") == [10]
    # Cutting the newer file away makes the damaged one the newest: its first put loads
    # the damaged slot and must not chain to it.
    index.truncate_to_commit_offset(10)
    index.put("T#k", 20, T0)
    assert query(index, "T#k") == [20]


def test_slots_pointing_past_the_entries_are_rebuilt_on_open():
    fs = sim_fs()
    index = service(fs, slots=1)
    index.put("T#k", 0, T0)
    index.put("T#k", 10, T0)
    index.flush()
    fs.flip_byte(f"{DIR}/{file_name(0)}", HEADER_BYTES + 3)
    again = service(fs, slots=1)
    assert again.files()[0].used_slot_count == 1
    assert query(again, "T#k") == [10, 0]


def test_a_header_count_ahead_of_the_entries_is_searched_back():
    fs = sim_fs()
    index = service(fs, entries=64)
    for i in range(5):
        index.put("T#k", i, T0)
    index.flush()
    fs.flip_byte(f"{DIR}/{file_name(0)}", 16)  # entry_count 5 -> 250
    again = service(fs, entries=64)
    assert again.files()[0].entry_count == 5
    assert query(again, "T#k") == [4, 3, 2, 1, 0]
    assert ENTRY_BYTES == 20


# ---------------------------------------------------------------- retention


def test_retention_deletes_old_files_but_never_the_newest():
    fs = sim_fs()
    index = service(fs, entries=4)
    for i in range(10):
        index.put("T#k", 100 * i, T0 + i)
    assert index.delete_before_commit_offset(400) == 1
    assert fs.listdir(DIR) == [file_name(400), file_name(800)]
    assert index.delete_before_commit_offset(10**9) == 1
    assert fs.listdir(DIR) == [file_name(800)]
    assert query(index, "T#k") == [900, 800]


# ---------------------------------------------------------------- property

KEYS = [f"T#k{i}" for i in range(5)] + list(COLLIDING)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.one_of(
            st.tuples(
                st.just("put"),
                st.integers(0, len(KEYS) - 1),
                st.integers(0, 3),
                st.integers(0, 5_000),
            ),
            st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
            st.tuples(st.just("crash"), st.just(0), st.just(0), st.just(0)),
            st.tuples(st.just("truncate"), st.just(0), st.integers(0, 100), st.just(0)),
        ),
        max_size=40,
    ),
    queries=st.lists(
        st.tuples(
            st.integers(0, len(KEYS) - 1),
            st.integers(0, 60_000),
            st.integers(0, 60_000),
            st.integers(1, 8),
        ),
        max_size=8,
    ),
)
def test_queries_equal_a_brute_force_model_through_rolls_crashes_and_truncation(seed, ops, queries):
    fs = sim_fs(seed)
    index = service(fs, slots=3, entries=5)
    model = Model()
    co, ts, flushed = 0, T0, 0
    for op, key, step, dt in ops:
        if op == "put":
            co += step
            ts += dt
            index.put(KEYS[key], co, ts)
            model.puts.append((KEYS[key], co, ts))
        elif op == "flush":
            index.flush()
            flushed = len(model.puts)
        elif op == "crash":
            fs.crash()
            index = service(fs, slots=3, entries=5)
            kept = sum(f.entry_count for f in index.files())
            assert flushed <= kept <= len(model.puts)
            model.puts = model.puts[:kept]
            flushed = kept
        else:
            cut = step * len(model.puts) // 100
            if cut < len(model.puts):
                index.truncate_to_commit_offset(model.puts[cut][1])
                model.puts = [p for p in model.puts if p[1] < model.puts[cut][1]]
                flushed = min(flushed, len(model.puts))
        if model.puts:
            co = max(co, model.puts[-1][1])
    for key, a, b, max_count in queries:
        begin, end = T0 + min(a, b), T0 + max(a, b)
        assert index.query(KEYS[key], begin, end, max_count) == model.query(
            KEYS[key], begin, end, max_count
        )
    for key in KEYS:
        assert query(index, key) == model.query(key, *ALL_TIME, 1000)
