"""Where the run directory goes is checked at start-up (issue 22): a folder that is a file, one that
cannot be created or written, a full disk — each a usage error (exit 4) naming the setting and the
path, before any stage runs, and nothing left behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_gemdirect.rundir import RunPlaceError, check_run_place
from tests.outside import runpytest


def run_pipeline(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return runpytest(project, "-p", "no:cacheprovider", "-m", "e2e", *args)


def assert_usage_error(result: pytest.RunResult, *words: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    text = result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    for word in words:
        assert word in text, text


def test_a_run_dir_that_is_a_file(project: pytest.Pytester) -> None:
    (project.path / "taken").write_text("a file", encoding="utf-8")
    result = run_pipeline(project, "--run-dir=taken")
    assert_usage_error(result, "run_dir (from --run-dir)", str(project.path / "taken"), "is a file")
    assert not (project.path / "logs").exists()


def test_a_logs_dir_that_cannot_be_created(project: pytest.Pytester) -> None:
    (project.path / "plain").write_text("a file", encoding="utf-8")
    result = run_pipeline(project, "--logs-dir=plain/logs")
    assert_usage_error(result, "logs_dir (from --logs-dir)", "cannot be created", "is a file, not a folder")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root (or Windows) writes anywhere")
def test_a_logs_dir_that_cannot_be_written(project: pytest.Pytester) -> None:
    locked = project.path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run_pipeline(project, f"--logs-dir={locked}")
    finally:
        locked.chmod(0o755)
    assert_usage_error(result, "logs_dir (from --logs-dir)", str(locked), "cannot be written")
    assert list(locked.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, nearly full; only where it can be mounted (Linux, as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    tool = shutil.which("mount")
    if sys.platform != "linux" or tool is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs Linux and root")
    done = subprocess.run([tool, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.skip("tmpfs could not be mounted here")
    try:
        (mount / "fill").write_bytes(b"\0" * (1900 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_logs_dir_on_a_full_disk(project: pytest.Pytester, tiny_disk: Path) -> None:
    result = run_pipeline(project, f"--logs-dir={tiny_disk / 'logs'}")
    assert_usage_error(result, "logs_dir (from --logs-dir)", str(tiny_disk / "logs"), "the disk is full")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["fill"]  # the probe is gone too


# --- the check itself, with the disk's answers injected ------------------------------------------


def refuse(code: int) -> Callable[[Path, bytes], None]:
    def write(path: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code), str(path))

    return write


def test_the_check_names_a_full_disk_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RunPlaceError, match="the disk is full"):
        check_run_place(tmp_path / "logs", is_run_dir=False, write=refuse(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_the_check_names_a_read_only_folder(tmp_path: Path) -> None:
    with pytest.raises(RunPlaceError, match=f"cannot be written in: {os.strerror(errno.EROFS)}"):
        check_run_place(tmp_path, is_run_dir=True, write=refuse(errno.EROFS))


def test_the_check_wants_room_for_a_run(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(RunPlaceError, match="MB free; a run needs at least"):
        check_run_place(tmp_path / "run", is_run_dir=True, min_free=free + 2**30)
    check_run_place(tmp_path / "run", is_run_dir=True, min_free=0)  # a folder that takes files: no error
    assert list(tmp_path.iterdir()) == []  # nothing made, the probe removed
