"""Flush policy and group commit (sans-IO: the tests play the driver)."""

from __future__ import annotations

import random

import pytest

from storage.commit_log import CommitLog
from storage.errors import TooManyWaitersError
from storage.files import SimFileSystem
from storage.flush import FlushMode, FlushPolicy, GroupCommit
from storage.record import MAGIC_ENTRY, encode_frame


def test_async_flush_waits_for_the_interval_and_enough_bytes():
    policy = FlushPolicy(FlushMode.ASYNC, interval_ms=500, bytes_min=1000)
    assert not policy.due(now_ms=1499, max_offset=5000, flushed_offset=0, last_flush_ms=1000)
    assert policy.due(now_ms=1500, max_offset=5000, flushed_offset=0, last_flush_ms=1000)
    assert not policy.due(now_ms=1500, max_offset=999, flushed_offset=0, last_flush_ms=1000)
    assert policy.deadline_ms(last_flush_ms=1000) == 1500


def test_async_flush_syncs_a_trickle_after_the_thorough_interval():
    policy = FlushPolicy(
        FlushMode.ASYNC, interval_ms=500, bytes_min=1000, thorough_interval_ms=10_000
    )
    assert not policy.due(now_ms=10_999, max_offset=1, flushed_offset=0, last_flush_ms=1000)
    assert policy.due(now_ms=11_000, max_offset=1, flushed_offset=0, last_flush_ms=1000)


def test_nothing_unflushed_is_never_due():
    for mode in FlushMode:
        policy = FlushPolicy(mode)
        assert not policy.due(now_ms=10**9, max_offset=5, flushed_offset=5, last_flush_ms=0)


def test_sync_flush_is_due_whenever_anything_is_unflushed():
    policy = FlushPolicy(FlushMode.SYNC)
    assert policy.due(now_ms=0, max_offset=1, flushed_offset=0, last_flush_ms=0)


def test_policy_defaults_and_validation():
    policy = FlushPolicy()
    assert (policy.mode, policy.interval_ms, policy.bytes_min) == (FlushMode.ASYNC, 500, 16384)
    with pytest.raises(ValueError):
        FlushPolicy(interval_ms=0)


def test_n_waiters_are_satisfied_by_one_fsync():
    fs = SimFileSystem(random.Random(3))
    log = CommitLog(fs, "/cl", segment_bytes=1 << 16)
    commit = GroupCommit()
    tickets = []
    for i in range(10):
        log.append([encode_frame(MAGIC_ENTRY, bytes([i]) * 50)])
        tickets.append(commit.request(log.max_offset))
    assert commit.target() == log.max_offset and commit.pending == 10
    syncs = fs.syncs
    flushed = log.flush()  # the driver: one flush covering everything appended so far
    assert fs.syncs == syncs + 1
    assert commit.complete(flushed) == tickets
    assert commit.target() is None and commit.pending == 0


def test_waiters_past_the_flushed_offset_keep_waiting_and_release_in_request_order():
    commit = GroupCommit()
    a = commit.request(300)
    b = commit.request(100)
    c = commit.request(200)
    assert commit.target() == 300
    assert commit.complete(250) == [b, c]
    assert commit.target() == 300 and commit.flushed_offset == 250
    assert commit.complete(300) == [a]
    assert commit.target() is None


def test_an_already_durable_offset_is_released_by_the_next_completion():
    commit = GroupCommit()
    commit.complete(500)
    t = commit.request(400)
    assert commit.complete(500) == [t]


def test_group_commit_is_bounded():
    commit = GroupCommit(waiters_max=2)
    commit.request(1)
    commit.request(2)
    with pytest.raises(TooManyWaitersError):
        commit.request(3)


def test_a_failed_flush_fails_every_waiter():
    commit = GroupCommit()
    tickets = [commit.request(o) for o in (10, 20, 30)]
    assert commit.fail_all() == tickets
    assert commit.target() is None and commit.pending == 0
