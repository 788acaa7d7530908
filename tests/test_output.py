"""Outputs are written to a temporary path and moved into place; nothing is destroyed on failure."""

from __future__ import annotations

import pytest

from miprun.errors import MiprunError
from miprun.output import write_atomically


def test_complete_directory_appears_only_at_the_end(tmp_path):
    target = tmp_path / "out"

    def fill(tmp):
        assert not target.exists()
        (tmp / "a.txt").write_text("new")

    write_atomically(target, fill, overwrite=False)
    assert (target / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_non_empty_target_is_refused_and_kept(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(MiprunError, match="not empty; choose another --output or pass --overwrite"):
        write_atomically(target, lambda tmp: None, overwrite=False)
    assert (target / "keep.txt").read_text() == "old"


def test_failure_while_writing_keeps_the_old_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")

    def fill(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(target, fill, overwrite=True)
    assert (target / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    write_atomically(target, lambda tmp: (tmp / "new.txt").write_text("new"), overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
