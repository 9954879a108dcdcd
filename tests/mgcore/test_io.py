"""The one atomic writer: complete files only, ordinary file modes, no temporary file left on failure, and
no other temp-file-then-rename writer in the packages."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from mgcore.io import atomic_save, atomic_write_bytes, atomic_writer, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_get_the_mode_open_would_give(tmp_path, umask_022):
    paths = [atomic_write_bytes(tmp_path / "a.bin", b"x"), atomic_save({"w": torch.ones(1)}, tmp_path / "b.pt")]
    (tmp_path / "plain.txt").write_text("x")
    assert {p.stat().st_mode & 0o777 for p in paths} == {(tmp_path / "plain.txt").stat().st_mode & 0o777} == {0o644}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "c.pt", b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_writer(target) as handle:
        handle.write(b"new, half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    with pytest.raises(ValueError, match="mode: expected 'wb' or 'w'"), atomic_writer(target, "a"):
        pass


def test_stale_temporaries_of_other_names_are_left_alone(tmp_path):
    for name in (".c.pt.1.tmp", "c.pt.2.tmp", ".d.pt.3.tmp", "c.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in remove_stale_temporaries(tmp_path, ["c.pt"])] == [".c.pt.1.tmp", "c.pt.2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.pt.3.tmp", "c.pt"]
    assert remove_stale_temporaries(tmp_path / "missing", ["c.pt"]) == []


def test_mgcore_io_is_the_only_temp_file_then_rename_writer():
    pattern = re.compile(r"os\.replace\(|os\.rename\(|mkstemp\(|NamedTemporaryFile\(")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("mgcore", "pde", "vision", "mgnet")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "mgcore" / "io.py" and pattern.search(path.read_text())
    ]
    assert offenders == []
