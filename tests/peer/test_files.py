"""Atomic writes in the home (peer/home/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gossiplearn.peer.home.files import remove_temporaries, temporary_name, write_atomic


def test_write_atomic_creates_a_private_file_and_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    write_atomic(path, b"old")
    assert path.read_bytes() == b"old"
    assert path.stat().st_mode & 0o777 == 0o600
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["peers.json"]  # no temporary left


def test_write_atomic_takes_a_mode(tmp_path: Path) -> None:
    path = tmp_path / "out"
    old = os.umask(0o022)
    try:
        write_atomic(path, b"x", mode=0o644)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.glm"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert not temporary_name(path).exists()


def test_remove_temporaries_removes_only_that_files_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.glc"
    (tmp_path / ".checkpoint.glc.999.tmp").write_bytes(b"half")
    (tmp_path / ".model.glm.999.tmp").write_bytes(b"half")
    remove_temporaries(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.glm.999.tmp"]
