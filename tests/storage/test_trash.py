"""RealFileSystem with a trash directory: `remove` renames, a background thread unlinks
(storage/trash.py). The name is gone at once, the space comes back soon after, and the
disk usage counts it as free meanwhile."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from storage.files import RealFileSystem
from storage.trash import Trash

MIB = 1 << 20


def _file(path: Path, mib: int = 1) -> str:
    path.write_bytes(os.urandom(mib * MIB))
    return str(path)


def test_remove_renames_into_the_trash_and_the_reaper_unlinks(tmp_path: Path) -> None:
    fs = RealFileSystem(trash_dir=str(tmp_path / "trash"))
    assert fs.trash is not None
    path = _file(tmp_path / "segment")
    fs.remove(path)
    assert not os.path.exists(path)
    assert fs.trash.drain(10.0)
    assert os.listdir(tmp_path / "trash") == []
    assert fs.trash.pending_bytes == 0
    fs.remove(path)  # gone already: nothing to do, as without a trash


def test_space_on_its_way_back_counts_as_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    unlink = os.unlink

    def held_unlink(path: str) -> None:
        assert gate.wait(10.0)
        unlink(path)

    monkeypatch.setattr(os, "unlink", held_unlink)
    fs = RealFileSystem(trash_dir=str(tmp_path / "trash"))
    assert fs.trash is not None
    path = _file(tmp_path / "segment", mib=8)
    fs.remove(path)
    assert not os.path.exists(path) and len(os.listdir(tmp_path / "trash")) == 1
    assert fs.trash.pending_bytes >= 8 * MIB
    plain = RealFileSystem().usage_ratio(str(tmp_path))  # still sees the 8 MiB used
    assert fs.usage_ratio(str(tmp_path)) < plain
    gate.set()
    assert fs.trash.drain(10.0) and os.listdir(tmp_path / "trash") == []


def test_what_a_crash_left_in_the_trash_is_unlinked_by_the_next_process(tmp_path: Path) -> None:
    (tmp_path / "trash").mkdir()
    for name in ("a-00000000000000000000", "b-index"):
        _file(tmp_path / "trash" / name)
    trash = Trash(str(tmp_path / "trash"))
    assert trash.drain(10.0)
    assert os.listdir(tmp_path / "trash") == []


def test_a_file_on_another_file_system_is_unlinked_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src)

    fs = RealFileSystem(trash_dir=str(tmp_path / "trash"))
    monkeypatch.setattr(os, "rename", cross_device)
    path = _file(tmp_path / "segment")
    fs.remove(path)
    assert not os.path.exists(path) and os.listdir(tmp_path / "trash") == []


def test_the_reaper_survives_a_file_it_cannot_unlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlink = os.unlink
    failures = [PermissionError(errno.EACCES, "denied")]

    def flaky_unlink(path: str) -> None:
        if failures:
            raise failures.pop()
        unlink(path)

    monkeypatch.setattr(os, "unlink", flaky_unlink)
    fs = RealFileSystem(trash_dir=str(tmp_path / "trash"))
    assert fs.trash is not None
    fs.remove(_file(tmp_path / "first"))
    assert fs.trash.drain(10.0)  # given up on: the next process tries again
    fs.remove(_file(tmp_path / "second"))
    assert fs.trash.drain(10.0)
    assert len(os.listdir(tmp_path / "trash")) == 1  # only the one it could not unlink


def test_no_room_for_the_trash_directory_means_an_unlink_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = RealFileSystem(trash_dir=str(tmp_path / "trash"))
    assert not (tmp_path / "trash").exists(), "a node on a full disk must still start"

    def full(path: str, exist_ok: bool = False) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(os, "makedirs", full)
    path = _file(tmp_path / "segment")
    fs.remove(path)
    assert not os.path.exists(path) and not (tmp_path / "trash").exists()
