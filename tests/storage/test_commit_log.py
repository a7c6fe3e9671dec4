"""CommitLog: appends, segment roll-over, reads, truncation, flush, recovery, retention."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest

from storage.commit_log import WRITE_LIMIT_FILE, CommitLog
from storage.errors import (
    CorruptRecordError,
    DiskFullError,
    FrameTooLargeError,
    LogLayoutError,
    OffsetOutOfRangeError,
    StorageError,
)
from storage.files import FileSystem, RealFileSystem, SimFileSystem
from storage.record import (
    BLANK_HEADER_BYTES,
    MAGIC_BLANK,
    MAGIC_ENTRY,
    MAGIC_MESSAGE,
    MessageRecord,
    decode_message_header,
    encode_frame,
    encode_messages,
    frame_size_and_magic,
)

SEG = 256
D = "/data/commitlog"


def frame(size: int, seed: int = 0) -> bytes:
    """An entry frame of exactly `size` bytes with recognisable contents."""
    rng = random.Random(seed)
    return encode_frame(MAGIC_ENTRY, bytes(rng.randrange(256) for _ in range(size - 12)))


def sim(capacity_bytes: int | None = None, seed: int = 1) -> SimFileSystem:
    return SimFileSystem(random.Random(seed), capacity_bytes=capacity_bytes)


def frames_of(log: CommitLog) -> list[tuple[int, bytes]]:
    return [(off, bytes(view)) for off, view in log.iter_frames()]


def reopen(fs: FileSystem, from_offset: int = 0, directory: str = D) -> CommitLog:
    log = CommitLog(fs, directory, segment_bytes=SEG)
    log.recover(from_offset)
    return log


def segment_files(fs: FileSystem, directory: str = D) -> list[str]:
    return [name for name in fs.listdir(directory) if name.isdigit()]


def raw(fs: SimFileSystem, start: int) -> bytes:
    return bytes(fs.open_segment(f"{D}/{start:020d}", SEG).read(0, SEG))


@pytest.fixture(params=["real", "sim"])
def fs_dir(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[FileSystem, str]]:
    if request.param == "real":
        yield RealFileSystem(), str(tmp_path / "commitlog")
    else:
        yield sim(), D


# --------------------------------------------------------------------------- append / read


def test_appended_frames_read_back_identically_at_increasing_offsets(fs_dir):
    fs, d = fs_dir
    log = CommitLog(fs, d, segment_bytes=SEG)
    frames = [frame(20 + i, i) for i in range(5)]
    offsets = log.append(frames)
    assert offsets == [0, 20, 41, 63, 86]
    assert log.max_offset == 110
    for off, f in zip(offsets, frames, strict=True):
        assert bytes(log.read(off, len(f))) == f
        view, nxt = log.frame_at(off)
        assert bytes(view) == f and nxt == off + len(f)
    assert frames_of(log) == list(zip(offsets, frames, strict=True))
    log.close()


def test_append_buffer_takes_what_the_batch_encoder_returns(fs_dir):
    fs, d = fs_dir
    log = CommitLog(fs, d, segment_bytes=4096)
    records = [MessageRecord(topic="T", body=bytes([i]) * 100, queue_id=i) for i in range(10)]
    buf, sizes = encode_messages(records)
    offsets = log.append_buffer(buf, sizes)
    assert offsets[1:] == [o + s for o, s in zip(offsets[:-1], sizes[:-1], strict=True)]
    for off, record in zip(offsets, records, strict=True):
        assert MessageRecord.decode(log.frame_at(off)[0]) == record
        assert (
            decode_message_header(log.frame_at(off)[0], verify_crc=False).queue_id
            == record.queue_id
        )
    log.close()


def test_frame_that_does_not_fit_goes_to_next_segment_after_a_blank_filler():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    offsets = log.append([frame(200), frame(100), frame(30)])
    assert offsets == [0, SEG, SEG + 100]
    assert frame_size_and_magic(raw(fs, 0)[200:]) == (SEG - 200, MAGIC_BLANK)
    view, nxt = log.frame_at(200)
    assert frame_size_and_magic(view) == (SEG - 200, MAGIC_BLANK) and nxt == SEG
    assert [off for off, _ in log.iter_frames()] == offsets
    assert log.segments() == [(0, SEG), (SEG, SEG + 130)]


def test_roll_over_inside_one_batch_and_across_several_segments():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    frames = [frame(150, i) for i in range(5)]
    offsets = log.append(frames)
    assert offsets == [0, SEG, 2 * SEG, 3 * SEG, 4 * SEG]
    assert frames_of(log) == list(zip(offsets, frames, strict=True))
    assert segment_files(fs) == [f"{i * SEG:020d}" for i in range(5)]


def test_a_tail_too_short_for_a_blank_header_is_skipped_without_one():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(SEG - 5)])
    assert log.max_offset == SEG  # normalized: no frame can start in the last 5 bytes
    assert log.append([frame(12)]) == [SEG]
    assert raw(fs, 0)[SEG - 5 :] == bytes(5)
    assert [off for off, _ in log.iter_frames()] == [0, SEG]


def test_a_frame_may_fill_a_segment_exactly():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    assert log.append([frame(SEG), frame(SEG)]) == [0, SEG]
    assert log.max_offset == 2 * SEG


def test_oversized_frame_is_refused_and_nothing_is_written():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(40)])
    with pytest.raises(FrameTooLargeError, match="cannot fit a 256-byte segment"):
        log.append([frame(30), frame(SEG + 1)])
    assert log.max_offset == 40


def test_malformed_frames_are_refused_before_anything_is_written():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    good = frame(40)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1
    with pytest.raises(CorruptRecordError, match="crc"):
        log.append([good, bad_crc])
    with pytest.raises(CorruptRecordError, match="magic"):
        log.append([struct.pack("<II", 20, MAGIC_BLANK) + bytes(12)])
    with pytest.raises(CorruptRecordError, match="header says size"):
        log.append_buffer(good, [20, 20])
    with pytest.raises(ValueError, match="sizes add up"):
        log.append_buffer(good + b"x", [40])
    assert log.max_offset == 0
    # The leader's own freshly encoded buffers may skip the CRC pass; structure is still checked.
    assert log.append_buffer(bad_crc, [40], verify_crc=False) == [0]


def test_reads_outside_the_log_or_across_a_segment_end_are_rejected():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(200), frame(100)])
    for offset, size in [(-1, 1), (0, SEG + 101), (SEG + 100, 1), (SEG - 4, 8), (250, 10)]:
        with pytest.raises(OffsetOutOfRangeError):
            log.read(offset, size)
    with pytest.raises(OffsetOutOfRangeError):
        log.frame_at(SEG + 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.frame_at(SEG - 3)


def test_frame_at_a_non_boundary_is_reported_corrupt():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(100)])
    with pytest.raises(CorruptRecordError):
        log.frame_at(3)


# --------------------------------------------------------------------------- flush


def test_flush_syncs_only_dirty_segments_in_order_and_advances_flushed_offset():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200), frame(200), frame(200)])
    assert log.flushed_offset == 0 and log.dirty_segments == [0, SEG, 2 * SEG]
    assert log.flush() == log.max_offset == log.flushed_offset
    assert fs.syncs == 3
    log.append([frame(20)])
    assert log.dirty_segments == [2 * SEG]
    log.flush()
    assert fs.syncs == 4
    log.flush()
    assert fs.syncs == 4


def test_failed_sync_keeps_the_segment_dirty_and_flushed_offset_honest():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200)])
    log.flush()
    log.append([frame(200)])
    fs.sync_error = OSError(5, "EIO")
    with pytest.raises(OSError):
        log.flush()
    # Segment 0 got the blank filler, so it is dirty too; nothing past 200 is durable.
    assert log.flushed_offset == 200 and log.dirty_segments == [0, SEG]
    fs.sync_error = None
    assert log.flush() == log.max_offset


# --------------------------------------------------------------------------- truncate


def test_truncate_then_reappend_reuses_offsets_and_zero_fills_the_dropped_bytes():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    offsets = log.append([frame(100, 1), frame(100, 2), frame(100, 3), frame(100, 4)])
    assert offsets == [0, 100, SEG, SEG + 100]
    log.truncate(100)
    assert log.max_offset == log.flushed_offset == 100
    assert segment_files(fs) == [f"{0:020d}"]
    assert raw(fs, 0)[100:] == bytes(SEG - 100)
    again = log.append([frame(60, 9), frame(50, 10)])
    assert again == [100, 160]
    assert frames_of(log) == [(0, frame(100, 1)), (100, frame(60, 9)), (160, frame(50, 10))]


def test_truncate_to_a_segment_start_deletes_that_segment():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200), frame(200), frame(200)])
    log.truncate(SEG)
    assert log.max_offset == SEG
    assert segment_files(fs) == [f"{0:020d}"]
    assert log.append([frame(50)]) == [SEG]


def test_truncate_to_min_offset_empties_the_log_but_keeps_its_start():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(200), frame(200)])
    log.delete_first_segment()
    log.truncate(SEG)
    assert log.min_offset == log.max_offset == SEG
    assert log.append([frame(30)]) == [SEG]


def test_truncate_refuses_offsets_that_are_not_frame_boundaries():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(100), frame(100)])
    with pytest.raises(ValueError, match="frame boundary"):
        log.truncate(50)
    with pytest.raises(OffsetOutOfRangeError):
        log.truncate(201)
    log.truncate(200)  # == max_offset: nothing to drop
    assert log.max_offset == 200


def test_truncated_frames_are_never_resurrected_by_recovery():
    # Same-size replacement frames end exactly where a stale one began: only the
    # zero-fill stops recovery from walking on into it.
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(50, 1), frame(50, 2), frame(50, 3)])
    log.flush()
    log.truncate(50)
    log.append([frame(50, 7)])
    log.flush()
    fs.crash()
    log = reopen(fs)
    assert frames_of(log) == [(0, frame(50, 1)), (50, frame(50, 7))]


def test_truncate_is_durable_when_it_returns():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(50, 1), frame(50, 2)])
    log.flush()
    log.truncate(50)
    fs.crash()
    assert frames_of(reopen(fs)) == [(0, frame(50, 1))]


# --------------------------------------------------------------------------- recovery


def test_existing_log_must_be_recovered_before_use():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(40)])
    log.flush()
    log.close()
    again = CommitLog(fs, D, segment_bytes=SEG)
    assert not again.recovered
    with pytest.raises(StorageError, match="recover"):
        again.append([frame(40)])
    with pytest.raises(StorageError, match="recover"):
        again.read(0, 1)
    report = again.recover(0)
    assert not report.truncated and report.frames_validated == 1
    assert again.max_offset == again.flushed_offset == 40


@pytest.mark.parametrize("seed", range(40))
def test_torn_tail_is_truncated_and_everything_synced_survives_byte_identical(seed: int):
    fs = sim(seed=seed)
    rng = random.Random(seed)
    log = CommitLog(fs, D, segment_bytes=SEG)
    synced = []
    for i in range(6):
        f = frame(rng.randrange(12, 120), i)
        synced.append((log.append([f])[0], f))
    log.flush()
    checkpoint = log.flushed_offset
    unsynced = []
    for i in range(6, 12):
        f = frame(rng.randrange(12, 120), i)
        unsynced.append((log.append([f])[0], f))
    fs.crash(tear=True)
    log = CommitLog(fs, D, segment_bytes=SEG)
    report = log.recover(checkpoint - (checkpoint % SEG))
    got = frames_of(log)
    assert got[: len(synced)] == synced
    # Whatever survived past the checkpoint is a prefix of what was written; never a torn frame.
    assert got[len(synced) :] == unsynced[: len(got) - len(synced)]
    assert report.valid_until == log.max_offset == log.flushed_offset
    # The log accepts appends right where recovery cut it.
    f = frame(40, 99)
    off = log.append([f])[0]
    assert off >= report.valid_until and frames_of(log)[-1] == (off, f)


def test_recovery_deletes_segments_that_a_lost_write_cut_off():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200, 1)])
    log.flush()
    log.append([frame(200, 2)])  # blank filler in segment 0, frame in segment 1
    log.flush()
    # Corrupt the blank filler: the chain to segment 1 is broken, so segment 1 must go.
    fs.flip_byte(f"{D}/{0:020d}", 200)
    log = reopen(fs)
    assert frames_of(log) == [(0, frame(200, 1))]
    assert segment_files(fs) == [f"{0:020d}"]


def test_every_flipped_byte_truncates_at_its_frame_and_recovery_never_raises():
    sizes = [40, 100, 90, 40, 60, 30]  # 40+100+90 leaves a 26-byte blank in segment 0

    def build() -> tuple[SimFileSystem, list[int]]:
        fs = sim()
        log = CommitLog(fs, D, segment_bytes=SEG)
        offsets = log.append([frame(s, i) for i, s in enumerate(sizes)])
        log.flush()
        log.close()
        return fs, offsets

    fs, offsets = build()
    assert offsets == [0, 40, 140, SEG, SEG + 40, SEG + 100]
    spans = [(o, o + s) for o, s in zip(offsets, sizes, strict=True)]
    spans.append((230, 230 + BLANK_HEADER_BYTES))  # the blank filler's header
    for start, end in spans:
        for pos in range(start, end):
            fs, _ = build()
            fs.flip_byte(f"{D}/{pos - pos % SEG:020d}", pos % SEG)
            log = CommitLog(fs, D, segment_bytes=SEG)
            report = log.recover(0)
            # A bad first frame of segment 1 takes the filler that made room for it
            # along: the log ends where it did before that append.
            expect = 230 if start == SEG else start
            assert report.valid_until == expect, (pos, report)
            assert [o for o, _ in frames_of(log)] == [o for o in offsets if o < start]


def test_recovery_from_a_checkpoint_trusts_frames_before_it():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    offsets = log.append([frame(100, 1), frame(100, 2), frame(100, 3)])
    log.flush()
    fs.flip_byte(f"{D}/{0:020d}", 5)  # inside the first frame, before the checkpoint
    log = CommitLog(fs, D, segment_bytes=SEG)
    report = log.recover(offsets[1])
    assert report.scanned_from == offsets[1] and report.frames_validated == 2
    assert offsets == [0, 100, SEG] and log.max_offset == SEG + 100


def test_recovery_clamps_a_checkpoint_beyond_the_files():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(100)])
    log.flush()
    log = CommitLog(fs, D, segment_bytes=SEG)
    report = log.recover(10 * SEG)
    assert report.scanned_from == SEG and log.max_offset == SEG


def test_recovery_of_an_empty_directory_is_trivial():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    report = log.recover(0)
    assert (report.valid_until, report.truncated) == (0, False)


def test_stale_bytes_beyond_a_torn_frame_are_zero_filled_by_recovery():
    # A disk may write back a later page before an earlier one; the later page's
    # frame must not survive behind the torn one.
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(50, 1), frame(50, 2), frame(50, 3)])
    log.flush()
    fs.flip_byte(f"{D}/{0:020d}", 60)  # inside frame 2
    log = reopen(fs)
    assert log.max_offset == 50
    assert raw(fs, 0)[50:] == bytes(SEG - 50)
    log.append([frame(50, 8)])
    log.flush()
    fs.crash()
    assert frames_of(reopen(fs)) == [(0, frame(50, 1)), (50, frame(50, 8))]


def test_recovery_syncs_what_it_validated():
    # A killed process can leave valid frames only in the page cache.
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(50, 1)])
    log = CommitLog(fs, D, segment_bytes=SEG)  # "restart" without a crash: bytes still cached
    log.recover(0)
    assert log.flushed_offset == 50
    fs.crash(tear=False)
    assert frames_of(reopen(fs)) == [(0, frame(50, 1))]


def test_real_files_flipped_byte_is_truncated_on_recovery(tmp_path):
    d = str(tmp_path / "cl")
    fs = RealFileSystem()
    log = CommitLog(fs, d, segment_bytes=4096)
    frames = [frame(300, i) for i in range(20)]
    offsets = log.append(frames)
    log.flush()
    log.close()
    victim = offsets[15]
    seg_start = victim - victim % 4096
    with open(f"{d}/{seg_start:020d}", "r+b") as f:
        f.seek(victim % 4096 + 100)
        b = f.read(1)
        f.seek(victim % 4096 + 100)
        f.write(bytes([b[0] ^ 0x5A]))
    log = CommitLog(fs, d, segment_bytes=4096)
    report = log.recover(0)
    assert report.valid_until == victim and report.stopped_because == "crc mismatch"
    assert frames_of(log) == list(zip(offsets[:15], frames[:15], strict=True))
    assert log.append([frames[15]]) == [victim]
    log.flush()
    log.close()
    log = CommitLog(fs, d, segment_bytes=4096)
    log.recover(seg_start)
    assert [o for o, _ in frames_of(log)] == offsets[:16]
    log.close()


def write_limit(fs: FileSystem, directory: str = D) -> int:
    raw_limit = fs.read_bytes(f"{directory}/{WRITE_LIMIT_FILE}")
    assert raw_limit is not None
    return int.from_bytes(raw_limit[:8], "little")


def test_write_limit_is_made_durable_before_bytes_are_written_past_it():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=4096, write_reserve_bytes=500)
    log.append([frame(100)])
    assert write_limit(fs) == 600
    log.append([frame(400)])
    assert write_limit(fs) == 600  # still covered: no update
    log.append([frame(200)])
    assert write_limit(fs) == 700 + 500


def test_recovery_looks_for_stale_bytes_only_below_the_write_limit():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=4096, write_reserve_bytes=1000)
    log.append([frame(100, 1), frame(100, 2)])
    log.flush()
    fs.flip_byte(f"{D}/{0:020d}", 150)  # corrupt frame 2: recovery truncates at 100
    fs.flip_byte(f"{D}/{0:020d}", 3000)  # past the limit (1200): no write ever went there
    log = CommitLog(fs, D, segment_bytes=4096, write_reserve_bytes=1000)
    report = log.recover(0)
    assert report.valid_until == 100 and report.truncated_bytes == 100
    seg = fs.open_segment(f"{D}/{0:020d}", 4096)
    assert bytes(seg.read(100, 100)) == bytes(100)
    assert seg.read(3000, 1)[0] == 0xFF  # not scanned, not rewritten


def test_without_a_readable_write_limit_recovery_scans_the_whole_segment_tail():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=4096, write_reserve_bytes=1000)
    log.append([frame(100, 1)])
    log.flush()
    fs.flip_byte(f"{D}/{0:020d}", 3000)
    fs.write_atomic(f"{D}/{WRITE_LIMIT_FILE}", b"garbage-limit")
    log = CommitLog(fs, D, segment_bytes=4096, write_reserve_bytes=1000)
    report = log.recover(0)
    assert report.valid_until == 100 and report.truncated_bytes == 2901
    assert bytes(fs.open_segment(f"{D}/{0:020d}", 4096).read(100, 3996)) == bytes(3996)
    log.append([frame(100, 2)])
    assert write_limit(fs) == 1200


# --------------------------------------------------------------------------- full disk


def test_disk_full_leaves_the_log_unchanged_readable_and_appendable_after_freeing_space():
    fs = sim(capacity_bytes=2 * SEG + 64)  # two segments and the write-limit file
    log = CommitLog(fs, D, segment_bytes=SEG)
    first = log.append([frame(200, 1), frame(200, 2)])
    log.flush()
    before = (log.max_offset, log.dirty_segments, segment_files(fs))
    with pytest.raises(DiskFullError):
        log.append([frame(40, 3), frame(100, 4)])  # frame 3 fits; frame 4 needs a third segment
    assert (log.max_offset, log.dirty_segments, segment_files(fs)) == before
    assert frames_of(log) == [(first[0], frame(200, 1)), (first[1], frame(200, 2))]
    assert log.delete_first_segment()
    assert log.append([frame(40, 3), frame(100, 4)]) == [SEG + 200, 2 * SEG]
    log.flush()
    fs.crash()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.recover(log.min_offset)
    assert [f for _, f in frames_of(log)] == [frame(200, 2), frame(40, 3), frame(100, 4)]


# --------------------------------------------------------------------------- layout / retention


def test_segment_files_are_named_by_their_20_digit_start_offset():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200), frame(200)])
    assert segment_files(fs) == ["00000000000000000000", "00000000000000000256"]


def test_a_gap_between_segments_is_a_layout_error():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200), frame(200), frame(200)])
    fs.remove(f"{D}/{SEG:020d}")
    with pytest.raises(LogLayoutError, match="does not follow"):
        CommitLog(fs, D, segment_bytes=SEG)


def test_opening_with_another_segment_size_is_a_layout_error():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200), frame(200)])
    with pytest.raises(LogLayoutError):
        CommitLog(fs, D, segment_bytes=2 * SEG)


def test_foreign_files_in_the_directory_are_ignored():
    fs = sim()
    fs.makedirs(D)
    fs.write_atomic(f"{D}/checkpoint", b"x")
    log = CommitLog(fs, D, segment_bytes=SEG)
    assert log.recovered and log.segments() == []


def test_retention_deletes_old_segments_but_never_the_last():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200, i) for i in range(3)])
    assert log.segments() == [(0, SEG), (SEG, 2 * SEG), (2 * SEG, 2 * SEG + 200)]
    assert log.delete_first_segment()
    assert log.min_offset == SEG and log.flushed_offset >= SEG
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 10)
    assert log.delete_first_segment()
    assert not log.delete_first_segment()
    assert log.segments() == [(2 * SEG, 2 * SEG + 200)]
    assert frames_of(log) == [(2 * SEG, frame(200, 2))]


def test_reset_drops_every_segment_and_the_log_reopens_empty_at_the_new_offset(fs_dir):
    fs, d = fs_dir
    log = CommitLog(fs, d, segment_bytes=SEG)
    log.append([frame(200, i) for i in range(3)])
    log.delete_first_segment()
    log.reset(5 * SEG)
    assert segment_files(fs, d) == [f"{5 * SEG:020d}"]
    assert (log.min_offset, log.max_offset, log.flushed_offset) == (5 * SEG,) * 3
    assert log.segments() == [(5 * SEG, 5 * SEG)] and frames_of(log) == []
    log.close()
    for from_offset in (0, 5 * SEG):  # the store passes at most the last segment start
        again = CommitLog(fs, d, segment_bytes=SEG)
        assert (again.min_offset, again.max_offset) == (5 * SEG, 5 * SEG)
        report = again.recover(from_offset)
        assert (report.valid_until, report.truncated) == (5 * SEG, False)
        assert (again.min_offset, again.max_offset) == (5 * SEG, 5 * SEG)
        again.close()
    again = reopen(fs, directory=d)
    assert again.append([frame(200, 1), frame(100, 2)]) == [5 * SEG, 6 * SEG]
    again.flush()
    again.close()
    assert frames_of(reopen(fs, directory=d)) == [
        (5 * SEG, frame(200, 1)),
        (6 * SEG, frame(100, 2)),
    ]


def test_reset_into_the_old_log_keeps_none_of_its_frames():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(200, i) for i in range(4)])
    log.flush()
    log.reset(SEG)
    fs.crash()
    again = reopen(fs, SEG)
    assert (again.min_offset, again.max_offset) == (SEG, SEG) and frames_of(again) == []
    assert raw(fs, SEG) == bytes(SEG)


def test_reset_refuses_an_offset_that_is_no_segment_start_and_changes_nothing():
    fs = sim()
    log = CommitLog(fs, D, segment_bytes=SEG)
    log.append([frame(50)])
    for bad in (SEG + 8, -SEG):
        with pytest.raises(ValueError):
            log.reset(bad)
    assert frames_of(log) == [(0, frame(50))]
    log.reset(0)
    assert (log.min_offset, log.max_offset) == (0, 0) and raw(fs, 0) == bytes(SEG)


@pytest.mark.parametrize("seed", range(8))
def test_appends_after_a_reset_past_the_write_limit_recover_from_a_torn_crash(seed):
    fs = sim(seed=seed)
    log = CommitLog(fs, D, segment_bytes=SEG, write_reserve_bytes=SEG)
    log.append([frame(100, 1)])
    log.reset(8 * SEG)  # past the durable write limit (SEG + 100)
    log.append([frame(60, 2)])
    log.flush()
    log.append([frame(60, 3), frame(60, 4)])
    fs.crash()
    again = reopen(fs, 8 * SEG)
    got = frames_of(again)
    assert got[0] == (8 * SEG, frame(60, 2))
    assert got == [(8 * SEG + 60 * i, frame(60, 2 + i)) for i in range(len(got))]
    assert again.max_offset == 8 * SEG + 60 * len(got)


def test_closed_log_refuses_work():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    log.append([frame(40)])
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append([frame(40)])
    log.close()


def test_messages_and_entries_share_the_log():
    log = CommitLog(sim(), D, segment_bytes=SEG)
    message = encode_messages([MessageRecord(topic="T", body=b"hi")])[0]
    offsets = log.append([bytes(message), frame(30)])
    kinds = [frame_size_and_magic(v)[1] for _, v in log.iter_frames()]
    assert kinds == [MAGIC_MESSAGE, MAGIC_ENTRY] and len(offsets) == 2
