"""Process helpers against real processes: trees ended, deadlines kept, logs read back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pytest_gemdirect.processes import (
    CompletedRun,
    child_env,
    kill_tree,
    launch_logged,
    log_tail,
    resolve_command,
    run_with_deadline,
    strip_ansi,
)

# A child that starts a grandchild, writes both pids to a file, then sleeps.
PARENT_SCRIPT = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(sys.argv[1]).write_text(f"{grandchild.pid}\\n", encoding="utf-8")
    print("started grandchild", grandchild.pid, flush=True)
    time.sleep(120)
    """
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _wait_for_file(path: Path, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(encoding="utf-8").strip():
            return path.read_text(encoding="utf-8").strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written within {timeout} s")


def _gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_tree(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    script = _write(tmp_path, "parent.py", PARENT_SCRIPT)
    pid_file = tmp_path / "grandchild.pid"
    popen = launch_logged(
        [sys.executable, str(script), str(pid_file)],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "tree.log",
    )
    return popen, int(_wait_for_file(pid_file))


def test_launch_logged_writes_output_and_forces_utf8(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "child.log"
    code = (
        "import os, sys; e = os.environ;"
        "print(e['PYTHONUTF8'], e['PYTHONIOENCODING'], e['X_EXTRA']);"
        "print('caf\\u00e9 \\u2713'); print('to stderr', file=sys.stderr);"
        "print('REMOVED_GONE' if 'X_REMOVED' not in e else 'still there')"
    )
    os.environ["X_REMOVED"] = "1"
    try:
        popen = launch_logged(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env_overrides={"X_EXTRA": "extra", "X_REMOVED": None},
            log_path=log,
        )
    finally:
        del os.environ["X_REMOVED"]
    assert popen.wait(timeout=30) == 0
    text = log.read_text(encoding="utf-8")
    assert "1 utf-8 extra" in text
    assert "café ✓" in text
    assert "to stderr" in text
    assert "REMOVED_GONE" in text


def test_launch_logged_missing_program_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        launch_logged(
            ["no-such-program-gemdirect"], cwd=tmp_path, env_overrides={}, log_path=tmp_path / "x.log"
        )


def test_kill_tree_ends_child_and_grandchild(tmp_path: Path) -> None:
    popen, grandchild = _start_tree(tmp_path)
    assert not _gone(grandchild)
    ended = kill_tree(popen, grace_s=5.0)
    assert popen.pid in ended and grandchild in ended
    assert ended[-1] == popen.pid  # the root last
    assert popen.returncode is not None
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_kill_tree_by_pid(tmp_path: Path) -> None:
    popen, grandchild = _start_tree(tmp_path)
    ended = kill_tree(popen.pid, grace_s=5.0)
    assert set(ended) == {popen.pid, grandchild}
    popen.wait(timeout=5)
    assert _gone(grandchild)


def test_kill_tree_after_parent_died_still_ends_orphans(tmp_path: Path) -> None:
    popen, grandchild = _start_tree(tmp_path)
    # the parent dies on its own (killed directly, not through kill_tree): its child is orphaned
    popen.kill()
    popen.wait(timeout=10)
    assert not _gone(grandchild)
    ended = kill_tree(popen, grace_s=5.0)
    assert grandchild in ended
    assert popen.pid not in ended
    assert _gone(grandchild)


def test_kill_tree_on_finished_process_is_quiet(tmp_path: Path) -> None:
    popen = launch_logged(
        [sys.executable, "-c", "pass"], cwd=tmp_path, env_overrides={}, log_path=tmp_path / "q.log"
    )
    popen.wait(timeout=30)
    assert kill_tree(popen) == []
    assert kill_tree(popen.pid) == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handlers are a POSIX notion")
def test_kill_tree_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time; from pathlib import Path;"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f"Path({str(ready)!r}).write_text('1'); time.sleep(120)"
    )
    popen = launch_logged(
        [sys.executable, "-c", code], cwd=tmp_path, env_overrides={}, log_path=tmp_path / "t.log"
    )
    _wait_for_file(ready)
    started = time.monotonic()
    ended = kill_tree(popen, grace_s=0.5)
    assert ended == [popen.pid]
    assert popen.returncode == -9  # SIGKILL after the grace period
    assert time.monotonic() - started < 5


def test_run_with_deadline_normal_exit(tmp_path: Path) -> None:
    run = run_with_deadline(
        [sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "run.log",
        timeout_s=30,
    )
    assert isinstance(run, CompletedRun)
    assert run.exit_code == 3 and not run.timed_out
    assert run.log_path == tmp_path / "run.log"
    assert log_tail(run.log_path) == "hello"


def test_run_with_deadline_timeout_ends_the_whole_tree(tmp_path: Path) -> None:
    script = _write(tmp_path, "parent.py", PARENT_SCRIPT)
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    run = run_with_deadline(
        [sys.executable, str(script), str(pid_file)],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "slow.log",
        timeout_s=1.5,
    )
    assert run.timed_out and run.exit_code is None
    assert 1.5 <= run.duration_s < 10
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text(encoding="utf-8"))
    assert grandchild in run.ended_pids and run.pid in run.ended_pids
    assert _gone(grandchild) and _gone(run.pid)
    assert "started grandchild" in log_tail(run.log_path)


def test_run_with_deadline_ends_stragglers_after_a_normal_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "straggler.pid"
    code = (
        "import subprocess, sys; from pathlib import Path;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        f"Path({str(pid_file)!r}).write_text(str(p.pid))"
    )
    run = run_with_deadline(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "s.log",
        timeout_s=30,
    )
    assert run.exit_code == 0 and not run.timed_out
    straggler = int(pid_file.read_text(encoding="utf-8"))
    assert straggler in run.ended_pids
    assert _gone(straggler)


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    assert "does not exist" in log_tail(log)
    log.write_bytes(b"")
    assert log_tail(log) == "(the log is empty)"
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(100)) + b"\x1b[31mred\x1b[39m \xff\n\n")
    tail = log_tail(log, lines=3)
    assert tail == "line 98\nline 99\nred \ufffd"
    log.write_bytes(b"progress 10%\rprogress 100%\ndone\n")
    assert log_tail(log) == "progress 100%\ndone"


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[1m\x1b[32m✓\x1b[39m\x1b[22m ok") == "✓ ok"


def test_resolve_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_command("no-such-program-gemdirect") == "no-such-program-gemdirect"
    assert Path(resolve_command(Path(sys.executable).name, path=str(Path(sys.executable).parent))).is_file()
    rel = os.path.join("bin", "tool")
    assert resolve_command(rel) == rel


def test_resolve_command_prefers_cmd_shims_on_windows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pytest_gemdirect.processes as processes

    (tmp_path / "npx").write_text("#!/bin/sh\n", encoding="utf-8")
    (tmp_path / "npx.cmd").write_text("@echo off\n", encoding="utf-8")
    seen: list[str] = []

    def fake_which(cmd: str, path: str | None = None) -> str | None:
        seen.append(cmd)
        candidate = tmp_path / cmd
        return str(candidate) if candidate.exists() else None

    monkeypatch.setattr(processes, "IS_WINDOWS", True)
    monkeypatch.setattr(processes.shutil, "which", fake_which)
    assert resolve_command("npx") == str(tmp_path / "npx.cmd")
    assert resolve_command("NPM") == "NPM"  # not found anywhere: unchanged
    assert seen[0] == "npx.cmd"


def test_child_env_forces_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONUTF8", "0")
    env = child_env({"A": "1"})
    assert env["PYTHONUTF8"] == "1" and env["PYTHONIOENCODING"] == "utf-8" and env["A"] == "1"
