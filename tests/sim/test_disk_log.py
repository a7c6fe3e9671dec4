"""SimDiskLog keeps what a crash would keep: the synced image, plus a random prefix of
the unsynced writes, the first one that did not land whole possibly torn."""

from __future__ import annotations

import random

from raft.messages import Entry
from sim.disk_log import SimDiskLog


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, f"e{i}t{term}".encode()) for i in range(lo, hi + 1)]


class Scripted:
    """A PRNG stand-in that returns the given values (clamped into range)."""

    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        value = self.values.pop(0)
        assert stop is not None
        return max(start, min(stop - 1, value))


def test_synced_entries_survive_a_crash_and_unsynced_ones_may_not() -> None:
    log = SimDiskLog()
    log.append(entries(1, 3))
    log.sync()
    log.append(entries(4, 6))
    assert log.durable_index() == 3
    lost = log.crash(Scripted(0, 0))  # nothing landed, the first write torn to nothing
    assert lost == 1
    assert log.last_index() == 3
    assert log.durable_index() == 3


def test_a_torn_append_keeps_a_prefix_of_its_entries() -> None:
    log = SimDiskLog()
    log.append(entries(1, 2))
    log.sync()
    log.append(entries(3, 6))
    log.crash(Scripted(0, 2))  # the append was torn after two of its four entries
    assert [e.index for e in log.all_entries()] == [1, 2, 3, 4]
    assert log.durable_index() == 4


def test_unsynced_writes_land_in_order_up_to_the_torn_one() -> None:
    log = SimDiskLog()
    log.append(entries(1, 1))
    log.append(entries(2, 2))
    log.append(entries(3, 3))
    log.crash(Scripted(2, 0))  # two writes landed, the third lost
    assert log.last_index() == 2


def test_an_unsynced_truncation_can_be_undone_by_a_crash() -> None:
    log = SimDiskLog()
    log.append(entries(1, 4, term=1))
    log.sync()
    log.truncate_suffix(3)
    log.append(entries(3, 3, term=2))
    assert log.durable_index() == 2
    log.crash(Scripted(0))  # the truncation never reached the disk
    assert [(e.index, e.term) for e in log.all_entries()] == [(1, 1), (2, 1), (3, 1), (4, 1)]


def test_an_fsync_covers_only_the_writes_issued_before_it_began() -> None:
    log = SimDiskLog()
    log.append(entries(1, 2))
    token = log.begin_sync()
    log.append(entries(3, 4))
    log.finish_sync(token)
    assert log.durable_index() == 2
    log.crash(Scripted(0, 0))
    assert log.last_index() == 2


def test_durable_index_stops_at_a_pending_truncation() -> None:
    log = SimDiskLog()
    log.append(entries(1, 4, term=1))
    token = log.begin_sync()
    log.truncate_suffix(3)
    log.append(entries(3, 3, term=2))
    log.finish_sync(token)
    assert log.durable_index() == 2
    log.sync()
    assert log.durable_index() == 3
    assert log.term_at(3) == 2


def test_random_crashes_leave_the_synced_image_plus_a_prefix_of_the_later_writes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        log = SimDiskLog()
        image: list[Entry] = []
        pending: list[tuple[str, object]] = []
        term = 1
        for _ in range(rng.randrange(1, 12)):
            action = rng.random()
            if action < 0.5:
                last = log.last_index()
                batch = entries(last + 1, last + rng.randrange(1, 4), term)
                log.append(batch)
                pending.append(("append", batch))
            elif action < 0.7 and log.last_index() > 0:
                term += 1
                at = rng.randrange(1, log.last_index() + 1)
                log.truncate_suffix(at)
                pending.append(("truncate", at))
            else:
                log.sync()
                image = log.all_entries()
                pending = []
        log.crash(rng)
        after = log.all_entries()
        # Every state a crash may leave: the image, then each pending write in turn,
        # including every torn prefix of an append.
        possible = [list(image)]
        state = list(image)
        for kind, arg in pending:
            if kind == "append":
                assert isinstance(arg, list)
                possible += [state + arg[:k] for k in range(1, len(arg))]
                state = state + arg
            else:
                assert isinstance(arg, int)
                state = state[: arg - 1]
            possible.append(list(state))
        assert after in possible
        assert log.durable_index() == log.last_index()


def test_a_reset_is_durable_only_with_its_sync() -> None:
    log = SimDiskLog()
    log.append(entries(1, 3))
    log.sync()
    log.reset(10, 4)
    assert (log.first_index(), log.last_index(), log.term_at(10)) == (11, 10, 4)
    log.crash(Scripted(1))  # even when the PRNG would let it land, an unsynced reset does not
    assert (log.first_index(), log.last_index()) == (1, 3)
    log.reset(10, 4)
    log.append([Entry(5, 11, b"after")])
    log.sync()
    log.crash(Scripted(0))
    assert (log.first_index(), log.last_index(), log.term_at(10)) == (11, 11, 4)


def test_compaction_drops_the_prefix_from_both_pictures() -> None:
    log = SimDiskLog()
    log.append(entries(1, 5))
    log.sync()
    log.compact(3, 1)
    assert (log.first_index(), log.term_at(3), log.term_at(2)) == (4, 1, None)
    log.append(entries(6, 6))
    log.crash(Scripted(0, 0))
    assert (log.first_index(), log.last_index()) == (4, 5)
