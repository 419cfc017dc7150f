"""Atomic writes and staged output folders: a failure never leaves half-written data behind."""

import pytest

from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json, staged_dir, write_json


def test_atomic_open_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write('{"v": 2')
        raise RuntimeError("crash mid-write")
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_json(bad)
    with pytest.raises(UserError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")


def test_staged_dir_refuses_non_empty_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as stage:
        (stage / "x.txt").write_text("one")
    assert (out / "x.txt").read_text() == "one"
    with pytest.raises(UserError, match="not empty"), staged_dir(out):
        pass
    with pytest.raises(ValueError), staged_dir(out, overwrite=True) as stage:
        (stage / "x.txt").write_text("two")
        raise ValueError("failed half way")
    assert (out / "x.txt").read_text() == "one"  # the old folder survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_dir(out, overwrite=True) as stage:
        (stage / "y.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["y.txt"]


def test_written_files_get_usual_permissions(tmp_path):
    write_json(tmp_path / "a.json", {})
    with staged_dir(tmp_path / "d") as stage:
        (stage / "x").write_text("")
    assert (tmp_path / "a.json").stat().st_mode & 0o044 == 0o044  # readable by others (umask 022)
    assert (tmp_path / "d").stat().st_mode & 0o055 == 0o055
