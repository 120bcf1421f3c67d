"""atomic_write: the one writer of the project."""

from __future__ import annotations

import pytest

from resnet_multi.errors import UserError
from resnet_multi.files import atomic_write


def test_writes_bytes_text_and_through_a_callable(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write(tmp_path / "a.txt", "h\u00e9").read_text(encoding="utf-8") == "h\u00e9"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"via callable")

    atomic_write(tmp_path / "b.weights.h5", write, suffix=".weights.h5")
    assert (tmp_path / "b.weights.h5").read_bytes() == b"via callable"
    assert seen[0].parent == tmp_path and seen[0].name.endswith(".weights.h5") and seen[0] != tmp_path / "b.weights.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.txt", "b.weights.h5"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "keep.txt", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_missing_folder_and_directory_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        atomic_write(tmp_path / "nope" / "x.txt", "x")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        atomic_write(tmp_path / "d", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and not any((tmp_path / "d").iterdir())


def test_a_nul_in_the_name_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="NUL"):
        atomic_write(str(tmp_path / "a\x00b"), "x")
    assert not any(tmp_path.iterdir())
