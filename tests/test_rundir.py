"""The run directory's one writer: whole files only, readable like any file the user writes."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_gemdirect import rundir
from pytest_gemdirect.rundir import REPLACE_RETRY_S, atomic_write_bytes, atomic_write_json, atomic_write_text


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


class HeldFile:
    """A ``replace`` that fails like Windows while OneDrive or Defender holds the file, ``times``
    times (None: for ever), then renames; ``sleep`` records the pauses instead of taking them."""

    def __init__(self, times: int | None) -> None:
        self.times = times
        self.tries = 0
        self.pauses: list[float] = []

    def replace(self, src: Path, dst: Path) -> None:
        self.tries += 1
        if self.times is None or self.tries <= self.times:
            raise PermissionError(13, "The process cannot access the file because it is being used", str(dst))
        os.replace(src, dst)

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_a_held_file_is_retried_with_growing_pauses_until_it_is_free(tmp_path: Path) -> None:
    target = tmp_path / "run-summary.json"
    target.write_text("old", encoding="utf-8")
    held = HeldFile(times=12)  # held for about 7 s of pauses: more than the old 1 s, less than 10 s
    assert atomic_write_bytes(target, b"new", replace=held.replace, sleep=held.sleep) is True
    assert target.read_bytes() == b"new"
    assert held.tries == 13
    assert held.pauses[:5] == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert max(held.pauses) == 1.0 and held.pauses == sorted(held.pauses)
    assert [p.name for p in tmp_path.iterdir()] == ["run-summary.json"]


def test_a_file_held_for_good_raises_after_about_ten_seconds(tmp_path: Path) -> None:
    target = tmp_path / "run-summary.json"
    target.write_text("old", encoding="utf-8")
    held = HeldFile(times=None)
    with pytest.raises(PermissionError):
        atomic_write_bytes(target, b"new", replace=held.replace, sleep=held.sleep)
    assert sum(held.pauses) == pytest.approx(REPLACE_RETRY_S)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run-summary.json"]  # no temp file left


def test_best_effort_leaves_the_old_file_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")
    held = HeldFile(times=None)
    written = atomic_write_bytes(target, b"new", best_effort=True, replace=held.replace, sleep=held.sleep)
    assert written is False
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert atomic_write_json(tmp_path / "ok.json", {"a": 1}, best_effort=True) is True


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.005)


def test_a_write_held_up_by_a_held_file_never_lands_after_a_later_one(tmp_path: Path) -> None:
    # The summary's last write wins: the first write waits for a held file while two more are
    # asked for; whichever of those gets the file first, the last one asked for is what stays.
    target = tmp_path / "run-summary.json"
    state = rundir._path_state(target)
    release = threading.Event()
    first_waiting = threading.Event()

    def held_once(src: Path, dst: Path) -> None:
        if not first_waiting.is_set():
            first_waiting.set()
            raise PermissionError(13, "held", str(dst))
        os.replace(src, dst)

    def pause(_seconds: float) -> None:
        assert release.wait(timeout=60)

    def write(data: bytes) -> threading.Thread:
        kwargs = {"replace": held_once, "sleep": pause}
        thread = threading.Thread(target=atomic_write_bytes, args=(target, data), kwargs=kwargs)
        thread.start()
        return thread

    threads = [write(b"first")]
    assert first_waiting.wait(timeout=60)
    for n, data in enumerate((b"second", b"third"), start=2):
        threads.append(write(data))
        _wait_until(lambda n=n: state.calls >= n, f"write {n} being asked for")  # type: ignore[misc]
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert target.read_bytes() == b"third"
    assert [p.name for p in tmp_path.iterdir()] == ["run-summary.json"]
