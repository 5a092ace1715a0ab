"""The run directory's one writer: whole files only, readable like any file the user writes."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from pytest_gemdirect.rundir import atomic_write_bytes, atomic_write_text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_files_follow_the_umask_not_tempfiles_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "frame.png", b"png")
        atomic_write_text(tmp_path / "run-summary.json", "{}\n")
    finally:
        os.umask(previous)
    for name in ("frame.png", "run-summary.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_concurrent_writers_leave_one_whole_file_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    threads = [threading.Thread(target=atomic_write_bytes, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_text_keeps_its_line_ends(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "run-summary.txt", "a\nb\n")
    assert (tmp_path / "run-summary.txt").read_bytes() == b"a\nb\n"
