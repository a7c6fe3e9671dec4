"""The Raft log kept in the CommitLog: indexing, truncation, durability, reopen."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.commit_log import CommitLog
from storage.entry_log import EntryLog, EntryLogError, StoredEntry
from storage.errors import DiskFullError, LogLayoutError
from storage.files import SimFileSystem


def open_log(fs: SimFileSystem) -> EntryLog:
    log = CommitLog(fs, "/n/commitlog", 4096)
    if not log.recovered:
        log.recover(log.min_offset)
    return EntryLog(fs, log, "/n/raft-meta")


def entries(first: int, count: int, term: int) -> list[StoredEntry]:
    return [
        StoredEntry(term, i, 0, f"entry-{i}".encode() * 20) for i in range(first, first + count)
    ]


def test_append_read_back_across_segments_and_bound_by_bytes():
    log = open_log(SimFileSystem(random.Random(1)))
    log.append(entries(1, 60, term=1))
    assert (log.first_index(), log.last_index()) == (1, 60)
    assert [e.index for e in log.entries(1, 61, 1 << 20)] == list(range(1, 61))
    assert log.entries(5, 6, 1 << 20)[0] == entries(5, 1, term=1)[0]
    few = log.entries(1, 61, 600)
    assert 1 <= len(few) < 60 and log.span_end(1, 61, 600) == 1 + len(few)
    assert log.entries(7, 8, 0)[0].index == 7, "at least one entry, whatever the bound"
    assert log.term_at(0) == 0 and log.term_at(60) == 1 and log.term_at(61) is None


def test_append_must_be_contiguous():
    log = open_log(SimFileSystem(random.Random(1)))
    log.append(entries(1, 3, term=1))
    with pytest.raises(EntryLogError):
        log.append(entries(5, 1, term=1))


def test_only_synced_entries_survive_a_crash_and_reopen_rebuilds_the_index():
    fs = SimFileSystem(random.Random(3))
    log = open_log(fs)
    log.append(entries(1, 10, term=1))
    log.sync()
    assert log.durable_index() == 10
    log.append(entries(11, 10, term=2))
    assert log.durable_index() == 10
    fs.crash()
    again = open_log(fs)
    assert 10 <= again.last_index() <= 20
    assert [e.index for e in again.entries(1, 11, 1 << 20)] == list(range(1, 11))


def test_truncated_suffix_never_comes_back():
    fs = SimFileSystem(random.Random(4))
    log = open_log(fs)
    log.append(entries(1, 20, term=1))
    log.sync()
    log.truncate_suffix(8)
    log.append(entries(8, 2, term=3))
    log.sync()
    fs.crash()
    again = open_log(fs)
    assert again.last_index() == 9
    assert [again.term_at(i) for i in (7, 8, 9)] == [1, 3, 3]


def test_compaction_and_reset_persist_the_snapshot_boundary():
    fs = SimFileSystem(random.Random(5))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    log.compact(12, 2)
    assert (log.first_index(), log.term_at(12), log.term_at(11)) == (13, 2, None)
    again = open_log(fs)
    assert (again.first_index(), again.last_index()) == (13, 30)
    again.reset(100, 7)
    assert (again.first_index(), again.last_index(), again.term_at(100)) == (101, 100, 7)
    again.append(entries(101, 2, term=7))
    again.sync()
    third = open_log(fs)
    assert (third.first_index(), third.last_index()) == (101, 102)


def test_a_compaction_the_disk_has_no_room_for_changes_nothing():
    # Retention compacts the log before it deletes a segment; on a full disk the new
    # start cannot be written, and the log must stay as it was (it used to forget the
    # entries in memory first, while the file still named the old start).
    fs = SimFileSystem(random.Random(6))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    fs.capacity_bytes = fs.used_bytes()
    with pytest.raises(DiskFullError):
        log.compact(12, 2)
    assert (log.first_index(), log.last_index(), log.term_at(12)) == (1, 30, 2)
    assert [e.index for e in log.entries(1, 31, 1 << 20)] == list(range(1, 31))
    fs.capacity_bytes = None
    log.compact(12, 2)
    assert open_log(fs).first_index() == 13


def test_a_damaged_start_is_refused_not_read_as_an_uncompacted_log():
    # Read as "no compaction", a compacted log's first entry would be out of sequence
    # and the scan would cut every entry.
    fs = SimFileSystem(random.Random(9))
    log = open_log(fs)
    log.append(entries(1, 30, term=2))
    log.sync()
    log.compact(12, 2)
    meta = fs.read_bytes("/n/raft-meta")
    assert meta is not None
    fs.flip_byte("/n/raft-meta", 3)
    with pytest.raises(LogLayoutError, match="damaged"):
        open_log(fs)
    fs.write_atomic("/n/raft-meta", meta[:24])  # the format before the CRC still reads
    assert open_log(fs).first_index() == 13


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "truncate", "compact", "reopen"]),
            st.integers(1, 6),  # how many to append, or where to cut / compact (a share)
            st.integers(0, 2),  # how much the term grows before an append
        ),
        max_size=25,
    )
)
def test_terms_kept_as_runs_answer_as_one_term_per_entry(
    ops: list[tuple[str, int, int]],
) -> None:
    """term_at (kept as runs of equal terms), the entries read back and where each one
    ends, against a model holding every entry's term, through appends, truncations,
    compactions and reopens."""
    fs = SimFileSystem(random.Random(1))
    log = open_log(fs)
    model: dict[int, int] = {}
    base, base_term, term = 0, 0, 1
    for op, n, grow in ops:
        last = base + len(model)
        if op == "append":
            term += grow
            log.append(entries(last + 1, n, term))
            model.update((i, term) for i in range(last + 1, last + 1 + n))
        elif op == "truncate" and model:
            cut = base + 1 + (n * len(model)) // 7
            log.truncate_suffix(cut)
            model = {i: t for i, t in model.items() if i < cut}
        elif op == "compact" and model:
            upto = base + (n * len(model)) // 6
            if upto > base:
                base_term = model[upto]
                log.compact(upto, base_term)
                model = {i: t for i, t in model.items() if i > upto}
                base = upto
        elif op == "reopen":
            log.sync()
            log = open_log(fs)
        assert (log.first_index(), log.last_index()) == (base + 1, base + len(model))
        assert log.term_at(base) == (base_term if base else 0)
        for i in range(base + 1, base + len(model) + 2):
            assert log.term_at(i) == model.get(i), (i, ops)
        last = base + len(model)
        got = log.entries(base + 1, last + 1, 1 << 30) if model else []
        assert [(e.index, e.term) for e in got] == sorted(model.items())
        assert all(e.data == entries(e.index, 1, e.term)[0].data for e in got)
        for i in range(base + 1, last):  # an entry ends where the next begins, or a filler
            assert log.end_of(i) <= log.offset_of(i + 1) < log.end_of(i) + 4096
        if model:
            assert log.span_end(base + 1, last + 1, 1) == base + 2, "at least one entry"
