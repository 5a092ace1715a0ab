"""Process helpers against real processes: trees ended, deadlines kept, logs read back; and the
Windows side (command lines, program lookup, Job Objects, sliced waits) through pure functions and
injected fakes, so it is checked on any machine."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import psutil
import pytest

from pytest_gemdirect.cmdline import (
    ProgramNotFound,
    cmd_exe_command_line,
    quote_cmd_arg,
    resolve_program,
)
from pytest_gemdirect.processes import (
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    CompletedRun,
    JobLimits,
    child_env,
    close_job,
    command_for,
    join_sliced,
    kill_on_close_job,
    kill_tree,
    launch_logged,
    log_tail,
    python_argv,
    run_captured,
    run_with_deadline,
    strip_ansi,
    wait_sliced,
)

ROOT = Path(__file__).resolve().parents[1]

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


def _tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant, as psutil sees them now (on Windows a venv's python.exe
    is a launcher whose child is the real interpreter: the tree, not a pid set, is what counts)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _still_running(procs: list[psutil.Process], timeout: float = 30.0) -> list[psutil.Process]:
    """The processes that are still running after waiting up to ``timeout`` for them to end (a
    zombie has ended; it only waits for a reaper)."""
    _gone_now, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if not _gone(p.pid)]


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
    tree = _tree(popen.pid)
    assert grandchild in {p.pid for p in tree}
    ended = kill_tree(popen, grace_s=5.0)
    assert ended[-1] == popen.pid  # the root last
    assert popen.returncode is not None
    assert _still_running(tree) == []


def test_kill_tree_by_pid(tmp_path: Path) -> None:
    popen, grandchild = _start_tree(tmp_path)
    tree = _tree(popen.pid)
    ended = kill_tree(popen.pid, grace_s=5.0)
    assert popen.pid in ended and grandchild in ended
    popen.wait(timeout=30)
    assert _still_running(tree) == []


def test_kill_tree_after_parent_died_still_ends_orphans(tmp_path: Path) -> None:
    popen, grandchild = _start_tree(tmp_path)
    tree = _tree(popen.pid)
    # the parent dies on its own (killed directly, not through kill_tree): its child is orphaned
    popen.kill()
    popen.wait(timeout=30)
    assert not _gone(grandchild)
    ended = kill_tree(popen, grace_s=5.0)
    assert grandchild in ended
    assert popen.pid not in ended
    assert _still_running(tree) == []


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
    ended = kill_tree(popen, grace_s=0.5)
    assert ended == [popen.pid]
    assert popen.returncode == -9  # SIGKILL after the grace period


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
    run = run_with_deadline(
        [sys.executable, str(script), str(pid_file)],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "slow.log",
        timeout_s=1.5,
    )
    assert run.timed_out and run.exit_code is None
    assert run.duration_s >= 1.5  # not ended before its deadline
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


def test_child_env_forces_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONUTF8", "0")
    env = child_env({"A": "1"})
    assert env["PYTHONUTF8"] == "1" and env["PYTHONIOENCODING"] == "utf-8" and env["A"] == "1"


def test_python_flags_reach_an_isolated_python(tmp_path: Path) -> None:
    # ComfyUI's portable Python runs isolated (its ._pth file) and ignores PYTHONUTF8 and
    # PYTHONUNBUFFERED; -I isolates this one the same way. The options must still do the job.
    code = "import sys; print(sys.flags.isolated, sys.flags.utf8_mode, sys.stdout.write_through)"
    popen = launch_logged(
        python_argv(sys.executable, "-I", "-c", code),
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "flags.log",
    )
    assert wait_sliced(popen, 60) == 0
    assert log_tail(tmp_path / "flags.log") == "1 1 True"


def test_run_captured_returns_output_and_ends_at_its_deadline(tmp_path: Path) -> None:
    done = run_captured(
        [sys.executable, "-c", "import sys; print('v1.2 \\u2713'); print('note', file=sys.stderr)"],
        timeout_s=60,
    )
    assert (done.exit_code, done.stdout.strip(), done.stderr.strip()) == (0, "v1.2 ✓", "note")
    slow = run_captured([sys.executable, "-c", "import time; time.sleep(120)"], timeout_s=0.5)
    assert slow.exit_code is None


# --- waits in slices (a Windows wait lets no Ctrl-C through until it returns) --------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakePopen:
    """A child on a fake clock: exits after ``exits_after`` seconds of waiting (None: never);
    each wait's timeout is recorded, and wait number ``interrupt_on`` raises KeyboardInterrupt
    (the Ctrl-C that Windows delivers when the wait returns)."""

    def __init__(self, clock: FakeClock, exits_after: float | None = None, interrupt_on: int = 0) -> None:
        self.clock = clock
        self.exits_after = exits_after
        self.interrupt_on = interrupt_on
        self.waited = 0.0
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        assert timeout is not None, "an unbounded wait cannot be interrupted on Windows"
        if len(self.waits) == self.interrupt_on:
            raise KeyboardInterrupt
        if self.exits_after is not None and self.waited + timeout >= self.exits_after:
            self.clock.now += self.exits_after - self.waited
            self.waited = self.exits_after
            return 3
        self.clock.now += timeout
        self.waited += timeout
        raise subprocess.TimeoutExpired("fake", timeout)

    def poll(self) -> int | None:
        done = self.exits_after is not None and self.waited >= self.exits_after
        return 3 if done else None


def test_a_long_wait_is_sliced_so_ctrl_c_lands_at_once() -> None:
    clock = FakeClock()
    child = FakePopen(clock, interrupt_on=3)
    with pytest.raises(KeyboardInterrupt):
        wait_sliced(child, 600, slice_s=0.25, clock=clock)
    assert child.waits == [0.25, 0.25, 0.25]  # not one wait of 600 s
    assert clock.now - 1000.0 == pytest.approx(0.5)


def test_sliced_wait_keeps_its_deadline_and_reports_the_exit() -> None:
    clock = FakeClock()
    never = FakePopen(clock)
    assert wait_sliced(never, 1.1, slice_s=0.25, clock=clock) is None
    assert all(w is not None and w <= 0.25 for w in never.waits)
    assert clock.now - 1000.0 == pytest.approx(1.1)  # the whole timeout, not a slice more

    exits = FakePopen(clock, exits_after=0.6)
    assert wait_sliced(exits, 600, slice_s=0.25, clock=clock) == 3
    assert len(exits.waits) == 3
    unbounded = FakePopen(clock, exits_after=2.0)
    assert wait_sliced(unbounded, None, slice_s=0.25, clock=clock) == 3
    assert set(unbounded.waits) == {0.25}


class FakeThread:
    def __init__(self, clock: FakeClock, alive_for: float) -> None:
        self.clock = clock
        self.ends_at = clock.now + alive_for
        self.joins: list[float | None] = []

    def join(self, timeout: float | None = None) -> None:
        assert timeout is not None
        self.joins.append(timeout)
        self.clock.now = min(self.clock.now + timeout, max(self.ends_at, self.clock.now))

    def is_alive(self) -> bool:
        return self.clock.now < self.ends_at


def test_thread_joins_are_sliced_too() -> None:
    clock = FakeClock()
    quick = FakeThread(clock, alive_for=0.6)
    assert join_sliced(quick, 2.0, slice_s=0.25, clock=clock) is True
    assert quick.joins == [0.25, 0.25, 0.25]
    stuck = FakeThread(clock, alive_for=60)
    assert join_sliced(stuck, 2.0, slice_s=0.25, clock=clock) is False
    assert max(j for j in stuck.joins if j is not None) <= 0.25 and len(stuck.joins) == 8


HARNESS_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from pytest_gemdirect.processes import run_with_deadline
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    if hasattr(signal, "SIGBREAK"):  # CTRL_BREAK_EVENT on Windows: a Ctrl-C for this test
        signal.signal(signal.SIGBREAK, signal.default_int_handler)
    script, pid_file, log = sys.argv[1:4]
    try:
        run_with_deadline(
            [sys.executable, script, pid_file], cwd=None, env_overrides={}, log_path=Path(log), timeout_s=600
        )
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(42)
    print("the wait ended without the interrupt", flush=True)
    """
)


def test_ctrl_c_during_a_long_wait_ends_the_tree_and_propagates(tmp_path: Path) -> None:
    script = _write(tmp_path, "parent.py", PARENT_SCRIPT)
    harness = _write(tmp_path, "harness.py", HARNESS_SCRIPT)
    pid_file = tmp_path / "grandchild.pid"
    popen = launch_logged(
        [sys.executable, str(harness), str(script), str(pid_file), str(tmp_path / "tree.log")],
        cwd=tmp_path,
        env_overrides={},
        log_path=tmp_path / "harness.log",
    )
    tree: list[psutil.Process] = []
    try:
        grandchild = int(_wait_for_file(pid_file))
        tree = _tree(popen.pid)
        assert grandchild in {p.pid for p in tree}
        # CTRL_C_EVENT cannot reach a process group of its own on Windows: Ctrl-Break can
        popen.send_signal(signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGINT)  # type: ignore[attr-defined,unused-ignore]
        assert wait_sliced(popen, 120) == 42, log_tail(tmp_path / "harness.log")
        assert log_tail(tmp_path / "harness.log") == "interrupted"
        assert _still_running(tree[1:]) == []  # run_with_deadline ended what it started
    finally:
        for proc in [*tree, psutil.Process(popen.pid)] if popen.poll() is None else tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        popen.wait(timeout=30)


PARENT_DIES_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pytest_gemdirect.processes import launch_logged
    child = launch_logged(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        cwd=None, env_overrides={}, log_path=Path(sys.argv[2]),
    )
    Path(sys.argv[1]).write_text(str(child.pid), encoding="utf-8")
    time.sleep(300)
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the parent-death signal is Linux's; the Windows Job Object is checked with a fake kernel32",
)
def test_a_launched_child_dies_with_a_hard_killed_harness(tmp_path: Path) -> None:
    script = _write(tmp_path, "dies.py", PARENT_DIES_SCRIPT)
    pid_file = tmp_path / "child.pid"
    harness = subprocess.Popen([sys.executable, str(script), str(pid_file), str(tmp_path / "child.log")])
    child: psutil.Process | None = None
    try:
        child = psutil.Process(int(_wait_for_file(pid_file)))
        assert child.ppid() == harness.pid and child.is_running()
        harness.kill()  # kill -9: no teardown, no atexit, nothing of the harness runs
        harness.wait(timeout=30)
        assert _still_running([child], timeout=60) == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(timeout=30)
        if child is not None and not _gone(child.pid):
            child.kill()


class FakeKernel32:
    """The four kernel32 functions ``kill_on_close_job`` calls, recording what it asked for."""

    def __init__(self, *, assign_ok: bool = True) -> None:
        self.assign_ok = assign_ok
        self.calls: list[tuple[object, ...]] = []

    def CreateJobObjectW(self, attributes: object, name: object) -> int:  # noqa: N802
        self.calls.append(("create", attributes, name))
        return 77

    def SetInformationJobObject(self, job: int, info_class: int, info: object, size: int) -> int:  # noqa: N802
        limits = info._obj  # type: ignore[attr-defined]  # what ctypes.byref() points at
        flags = limits.BasicLimitInformation.LimitFlags
        self.calls.append(("set", job, info_class, flags, size))
        return 1

    def AssignProcessToJobObject(self, job: int, process: int) -> int:  # noqa: N802
        self.calls.append(("assign", job, process))
        return 1 if self.assign_ok else 0

    def CloseHandle(self, handle: int) -> int:  # noqa: N802
        self.calls.append(("close", handle))
        return 1


def test_windows_job_object_kills_the_tree_when_the_harness_goes() -> None:
    kernel32 = FakeKernel32()
    assert kill_on_close_job(1234, kernel32=kernel32) == 77
    assert kernel32.calls == [
        ("create", None, None),
        ("set", 77, 9, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, ctypes.sizeof(JobLimits)),
        ("assign", 77, 1234),
    ]
    assert JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == 0x2000
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(JobLimits) == 144  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION on x64

    popen = types.SimpleNamespace(gemdirect_job=77)  # what launch_logged hangs on its Popen
    assert close_job(popen, kernel32=kernel32) is True
    assert kernel32.calls[-1] == ("close", 77)
    assert close_job(popen, kernel32=kernel32) is False  # once only

    refused = FakeKernel32(assign_ok=False)
    assert kill_on_close_job(1234, kernel32=refused) is None
    assert refused.calls[-1] == ("close", 77)  # no job handle left open for nothing


@pytest.mark.skipif(sys.platform == "win32", reason="there is a kernel32 on Windows")
def test_no_job_object_without_windows() -> None:
    assert kill_on_close_job(1234) is None


# --- command lines: the program found, cmd.exe quoting ------------------------------------


def _files(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


def test_windows_lookup_applies_pathext_and_prefers_npm_cmd_to_the_shell_shim(tmp_path: Path) -> None:
    npm_dir = _files(tmp_path / "nodejs", "npm", "npm.cmd", "node.exe")
    path = f"{tmp_path / 'empty'};{npm_dir}"
    found = resolve_program("npm", cwd=tmp_path, platform="win32", path=path, pathext=".COM;.EXE;.BAT;.CMD")
    assert found == npm_dir / "npm.cmd"
    assert resolve_program("node", cwd=tmp_path, platform="win32", path=path, pathext=None) == (
        npm_dir / "node.exe"
    )
    assert resolve_program("npm.cmd", cwd=tmp_path, platform="win32", path=path) == npm_dir / "npm.cmd"
    with pytest.raises(ProgramNotFound) as info:
        resolve_program("vitest", cwd=tmp_path / "app", platform="win32", path=path)
    message = str(info.value)
    assert message.startswith("'vitest' was not found in ")
    assert str(tmp_path / "app") in message and str(npm_dir) in message  # the folders searched


def test_a_relative_program_is_taken_from_the_childs_folder_not_pytests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite_dir = tmp_path / "app"
    _files(suite_dir / "node_modules" / ".bin", "vitest.cmd")
    _files(tmp_path / "elsewhere" / "node_modules" / ".bin", "vitest.cmd", "other.cmd")
    monkeypatch.chdir(tmp_path / "elsewhere")  # pytest's own folder
    typed = "node_modules\\.bin\\vitest"
    found = resolve_program(typed, cwd=suite_dir, platform="win32", path="")
    assert found == suite_dir / "node_modules" / ".bin" / "vitest.cmd"
    with pytest.raises(ProgramNotFound) as info:
        resolve_program("node_modules\\.bin\\other", cwd=suite_dir, platform="win32", path="")
    message = str(info.value)
    assert f"there is no file {suite_dir / 'node_modules' / '.bin' / 'other'} with any of" in message
    assert f"taken from the folder it runs in, {suite_dir})" in message


def test_a_tilde_is_expanded_the_windows_way_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "Zoë"
    _files(home / "ComfyUI_windows_portable" / "python_embeded", "python.exe")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    typed = "~\\ComfyUI_windows_portable\\python_embeded\\python.exe"
    expected = home / "ComfyUI_windows_portable" / "python_embeded" / "python.exe"
    assert resolve_program(typed, cwd=tmp_path, platform="win32") == expected
    posix_typed = "~/ComfyUI_windows_portable/python_embeded/python.exe"
    assert resolve_program(posix_typed, cwd=tmp_path, platform=sys.platform) == expected


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX execute bits")
def test_posix_lookup_takes_executables_and_paths_from_the_childs_folder(tmp_path: Path) -> None:
    _files(tmp_path / "app", "run.sh")
    plain = tmp_path / "bin" / "tool"
    _files(tmp_path / "bin2", "tool")
    plain.parent.mkdir()
    plain.write_text("not executable", encoding="utf-8")
    path = f"{tmp_path / 'bin'}{os.pathsep}{tmp_path / 'bin2'}"
    assert resolve_program("tool", cwd=tmp_path, platform="linux", path=path) == tmp_path / "bin2" / "tool"
    assert resolve_program("./run.sh", cwd=tmp_path / "app", platform="linux") == tmp_path / "app" / "run.sh"
    with pytest.raises(ProgramNotFound, match=r"'no-such-tool' was not found on PATH \(searched "):
        resolve_program("no-such-tool", cwd=tmp_path, platform="linux", path=path)


def test_launch_logged_names_the_folder_a_missing_relative_program_was_looked_for_in(tmp_path: Path) -> None:
    with pytest.raises(ProgramNotFound) as info:
        launch_logged(
            [os.path.join("bin", "missing-tool")],
            cwd=tmp_path / "suite",
            env_overrides={},
            log_path=tmp_path / "x.log",
        )
    assert f"there is no file {tmp_path / 'suite' / 'bin' / 'missing-tool'}" in str(info.value)


def test_a_cmd_program_on_windows_gets_a_command_line_quoted_for_cmd_exe(tmp_path: Path) -> None:
    bin_dir = _files(tmp_path / "npm", "npx", "npx.cmd", "node.exe")
    env = {"PATH": str(bin_dir), "PATHEXT": ".COM;.EXE;.BAT;.CMD;.VBS", "SystemRoot": "C:\\WINDOWS"}
    junit = "--outputFile.junit=C:\\Users\\Zoë\\R&D\\v.xml"
    line = command_for(["npx", "--no", "vitest", junit, "100%"], cwd=tmp_path, env=env, platform="win32")
    assert line == (
        f'"C:\\WINDOWS\\System32\\cmd.exe" /d /e:ON /v:OFF /c ""{bin_dir / "npx.cmd"}" --no vitest'
        f' "{junit}" "100%%cd:~,%""'
    )
    exe = command_for(["node", "a&b"], cwd=tmp_path, env=env, platform="win32")
    assert exe == [str(bin_dir / "node.exe"), "a&b"]  # CreateProcess, no cmd.exe: nothing to quote


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("vitest", "vitest"),
        ("C:\\tools\\run.exe", "C:\\tools\\run.exe"),
        ("a&b", '"a&b"'),
        ("x|y<z>w^v", '"x|y<z>w^v"'),  # inside quotes cmd.exe keeps them, carets too
        ("100%", '"100%%cd:~,%"'),
        ("%PATH%", '"%%cd:~,%PATH%%cd:~,%"'),  # never expanded
        ("", '""'),
        ("D:\\AI\\out\\", '"D:\\AI\\out\\\\"'),  # the closing quote is not escaped
        ('say "hi"', '"say ""hi"""'),
        ("--reporter=default", '"--reporter=default"'),
        ("Zoë", "Zoë"),
    ],
)
def test_quote_cmd_arg(arg: str, quoted: str) -> None:
    assert quote_cmd_arg(arg) == quoted


def test_cmd_exe_refuses_what_it_cannot_pass() -> None:
    with pytest.raises(ValueError, match="line break"):
        quote_cmd_arg("a\nb")
    with pytest.raises(ValueError, match="not a file name"):
        cmd_exe_command_line('C:\\x".cmd', [])
    assert cmd_exe_command_line("C:\\n\\npm.cmd", []) == '"cmd.exe" /d /e:ON /v:OFF /c ""C:\\n\\npm.cmd""'
