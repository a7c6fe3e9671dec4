"""The file layer's contract, held against both implementations."""

from __future__ import annotations

import errno
import os
import random
import struct
from collections.abc import Iterator

import pytest

from storage import files
from storage.files import (
    ClosedSegmentError,
    DiskFullError,
    FileSystem,
    RealFileSystem,
    SimFileSystem,
)


@pytest.fixture(params=["real", "real-trash", "sim"])
def fs_and_dir(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[FileSystem, str]]:
    if request.param == "real":
        yield RealFileSystem(), str(tmp_path)
    elif request.param == "real-trash":
        (tmp_path / "data").mkdir()
        yield RealFileSystem(trash_dir=str(tmp_path / "trash")), str(tmp_path / "data")
    else:
        fs = SimFileSystem(random.Random(1))
        fs.makedirs("/d")
        yield fs, "/d"


def test_new_segment_reads_zeros_and_has_fixed_capacity(fs_and_dir):
    fs, d = fs_and_dir
    seg = fs.open_segment(f"{d}/00000000000000000000", 4096)
    assert seg.capacity == 4096
    assert bytes(seg.read(0, 4096)) == bytes(4096)


def test_writes_are_visible_and_survive_reopen_after_sync(fs_and_dir):
    fs, d = fs_and_dir
    path = f"{d}/seg"
    seg = fs.open_segment(path, 1024)
    seg.write(10, b"hello")
    assert bytes(seg.read(10, 5)) == b"hello"
    seg.sync()
    seg.close()
    again = fs.open_segment(path, 1024)
    assert bytes(again.read(8, 9)) == b"\0\0hello\0\0"
    again.close()


def test_out_of_range_access_is_rejected(fs_and_dir):
    fs, d = fs_and_dir
    seg = fs.open_segment(f"{d}/seg", 64)
    with pytest.raises(ValueError):
        seg.write(60, b"12345")
    with pytest.raises(ValueError):
        seg.read(-1, 2)


def test_closed_segment_cannot_be_used(fs_and_dir):
    fs, d = fs_and_dir
    seg = fs.open_segment(f"{d}/seg", 64)
    seg.close()
    with pytest.raises(ClosedSegmentError):
        seg.write(0, b"x")


def test_small_files_are_replaced_atomically_and_listed(fs_and_dir):
    fs, d = fs_and_dir
    assert fs.read_bytes(f"{d}/checkpoint") is None
    fs.write_atomic(f"{d}/checkpoint", b"one")
    fs.write_atomic(f"{d}/checkpoint", b"two")
    assert fs.read_bytes(f"{d}/checkpoint") == b"two"
    fs.open_segment(f"{d}/seg", 16).close()
    assert fs.listdir(d) == ["checkpoint", "seg"]
    fs.remove(f"{d}/seg")
    assert fs.listdir(d) == ["checkpoint"]
    assert not fs.exists(f"{d}/seg")


def test_crash_drops_unsynced_writes_without_tearing():
    fs = SimFileSystem(random.Random(7))
    seg = fs.open_segment("/seg", 32)
    seg.write(0, b"durable!")
    seg.sync()
    seg.write(8, b"volatile")
    fs.crash(tear=False)
    with pytest.raises(ClosedSegmentError):
        seg.read(0, 1)
    again = fs.open_segment("/seg", 32)
    assert bytes(again.read(0, 16)) == b"durable!" + bytes(8)


def test_crash_tears_unsynced_writes_at_a_chosen_byte():
    outcomes = set()
    for seed in range(50):
        fs = SimFileSystem(random.Random(seed))
        seg = fs.open_segment("/seg", 16)
        seg.write(0, b"abcdefgh")
        fs.crash()
        survived = bytes(fs.open_segment("/seg", 16).read(0, 8))
        cut = len(survived.rstrip(b"\0"))
        assert survived == b"abcdefgh"[:cut] + bytes(8 - cut)
        outcomes.add(cut)
    assert 0 in outcomes and 8 in outcomes and len(outcomes) > 3


def test_full_disk_refuses_new_segments_but_keeps_old_ones_readable():
    fs = SimFileSystem(random.Random(1), capacity_bytes=100)
    seg = fs.open_segment("/a", 64)
    seg.write(0, b"kept")
    with pytest.raises(DiskFullError):
        fs.open_segment("/b", 64)
    assert bytes(seg.read(0, 4)) == b"kept"
    fs.remove("/a")
    fs.open_segment("/b", 64)


def test_real_segment_read_is_a_zero_copy_view(tmp_path):
    seg = RealFileSystem().open_segment(str(tmp_path / "seg"), 64)
    view = seg.read(0, 4)
    seg.write(0, b"abcd")
    assert bytes(view) == b"abcd"
    del view
    seg.close()


def test_real_makedirs_syncs_each_new_directory_into_its_parent(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(files, "_fsync_dir", synced.append)
    fs = RealFileSystem()
    fs.makedirs(f"{tmp_path}/a/b/c")
    assert os.path.isdir(f"{tmp_path}/a/b/c")
    assert synced == [str(tmp_path), f"{tmp_path}/a", f"{tmp_path}/a/b"]
    synced.clear()
    fs.makedirs(f"{tmp_path}/a/b/c")
    fs.makedirs(f"{tmp_path}/a/b/d")
    assert synced == [f"{tmp_path}/a/b"]


@pytest.mark.parametrize("sparse", [False, True])
def test_a_sparse_segment_keeps_the_contract_for_reads_writes_and_reopening(fs_and_dir, sparse):
    fs, d = fs_and_dir
    path = f"{d}/cq"
    seg = fs.open_segment(path, 3 * 4096, sparse=sparse)
    assert bytes(seg.read(0, 3 * 4096)) == bytes(3 * 4096)
    view = seg.read(4090, 12)
    seg.write(4090, b"across pages")
    seg.pack_into(struct.Struct("<QI"), 20, 7, 9)
    assert bytes(seg.read(4090, 12)) == b"across pages"
    assert struct.unpack_from("<QI", seg.read(20, 12)) == (7, 9)
    if not isinstance(fs, SimFileSystem):
        assert bytes(view) == b"across pages", "real reads are views of the page cache"
    del view
    seg.sync()
    seg.close()
    again = fs.open_segment(path, 3 * 4096, sparse=sparse)
    assert bytes(again.read(4090, 12)) == b"across pages"
    again.close()


def test_a_sparse_real_segment_takes_blocks_only_where_written(tmp_path):
    fs = RealFileSystem()
    dense = fs.open_segment(str(tmp_path / "dense"), 6_000_000)
    sparse = fs.open_segment(str(tmp_path / "sparse"), 6_000_000, sparse=True)
    dense.write(0, b"unit")
    sparse.write(0, b"unit")
    assert os.stat(tmp_path / "sparse").st_size == 6_000_000
    assert os.stat(tmp_path / "sparse").st_blocks * 512 <= 64 * 1024
    assert os.stat(tmp_path / "dense").st_blocks * 512 >= 6_000_000
    dense.close()
    sparse.close()


def test_a_sparse_real_segment_on_a_full_disk_raises_disk_full(tmp_path, monkeypatch):
    seg = RealFileSystem().open_segment(str(tmp_path / "cq"), 4096, sparse=True)

    def no_space(fd: int, data: object, pos: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(DiskFullError):
        seg.write(0, b"unit")
    with pytest.raises(DiskFullError):
        seg.pack_into(struct.Struct("<Q"), 8, 1)
    monkeypatch.undo()
    seg.write(0, b"unit")
    assert bytes(seg.read(0, 4)) == b"unit"
    seg.close()


def test_a_sparse_sim_segment_takes_room_page_by_page_and_refuses_what_does_not_fit():
    fs = SimFileSystem(random.Random(1))
    seg = fs.open_segment("/cq", 6_000_000, sparse=True)
    assert fs.used_bytes() == 0
    seg.write(0, b"unit")
    assert fs.used_bytes() == files.SIM_PAGE_BYTES
    fs.capacity_bytes = fs.used_bytes() + 100
    seg.write(4000, b"x" * 96)  # within the first page
    with pytest.raises(DiskFullError):
        seg.write(4090, b"across pages")
    assert bytes(seg.read(4090, 12)) == b"x" * 6 + bytes(6), "nothing written"
    with pytest.raises(DiskFullError):
        fs.open_segment("/dense", 4096)
    fs.capacity_bytes = None
    seg.write(4090, b"across pages")
    assert fs.used_bytes() == 2 * files.SIM_PAGE_BYTES


def test_names_made_without_durability_vanish_in_a_crash_until_their_directory_is_synced():
    fs = SimFileSystem(random.Random(1))
    fs.makedirs("/r/kept")
    fs.makedirs("/r/new/q", durable=False)
    fs.open_segment("/r/new/q/a", 64, durable=False).write(0, b"x")
    fs.open_segment("/r/kept/b", 64, durable=False).sync()
    fs.open_segment("/r/kept/c", 64).sync()
    fs.sync_dir("/r/kept")  # b's name is durable now; new/ and new/q/ are not
    fs.crash()
    assert fs.exists("/r/kept/b") and fs.exists("/r/kept/c")
    assert not fs.exists("/r/new") and not fs.exists("/r/new/q/a")
    fs.makedirs("/r/new/q", durable=False)
    fs.open_segment("/r/new/q/a", 64, durable=False).sync()
    for d in ("/r", "/r/new", "/r/new/q"):
        fs.sync_dir(d)
    fs.crash()
    assert fs.exists("/r/new/q/a")


def test_real_names_made_without_durability_sync_no_directory_until_asked(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(files, "_fsync_dir", synced.append)
    fs = RealFileSystem()
    fs.makedirs(f"{tmp_path}/a/b", durable=False)
    fs.open_segment(f"{tmp_path}/a/b/seg", 64, sparse=True, durable=False).close()
    assert synced == [] and os.path.exists(f"{tmp_path}/a/b/seg")
    fs.sync_dir(f"{tmp_path}/a")
    assert synced == [f"{tmp_path}/a"]


def test_makedirs_names_the_directories_that_got_a_new_entry(fs_and_dir):
    fs, d = fs_and_dir
    assert fs.makedirs(f"{d}/x/y", durable=False) == [d, f"{d}/x"]
    assert fs.makedirs(f"{d}/x/y/z") == [f"{d}/x/y"]
    assert fs.makedirs(f"{d}/x/y") == []


def test_running_out_of_file_descriptors_is_reported_like_a_full_disk(tmp_path, monkeypatch):
    """EMFILE / ENFILE pass (connections close), so whatever needed the file waits and
    retries, as on a full disk, instead of the node stopping."""
    fs = RealFileSystem()
    fs.write_atomic(str(tmp_path / "kept"), b"before")
    real_open = os.open

    for code in (errno.EMFILE, errno.ENFILE):

        def no_fd(path: str, flags: int, mode: int = 0o777, code: int = code) -> int:
            raise OSError(code, os.strerror(code), path)

        monkeypatch.setattr(os, "open", no_fd)
        for call in (
            lambda: fs.open_segment(str(tmp_path / "seg"), 4096),
            lambda: fs.write_atomic(str(tmp_path / "kept"), b"after"),
            lambda: fs.sync_dir(str(tmp_path)),
            lambda: fs.read_bytes(str(tmp_path / "kept")),
        ):
            with pytest.raises(files.OutOfFilesError) as caught:
                call()
            assert isinstance(caught.value, DiskFullError)
            assert caught.value.errno == code and "too many open files" in str(caught.value)
        monkeypatch.setattr(os, "open", real_open)
    assert fs.read_bytes(str(tmp_path / "kept")) == b"before"
    assert not os.path.exists(tmp_path / "seg")
