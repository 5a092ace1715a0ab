"""Child processes the harness starts: launched with a log file, bounded in time, ended as a tree.

Used for the embedded simulator, a launched ComfyUI or LLM server and the external suites. The
same code runs on Windows (the reference machine) and POSIX: no shell, no POSIX-only signals,
psutil for the process tree.

- ``launch_logged`` starts a process with its stdout and stderr in a log file and UTF-8 forced in
  its environment. It gets a process group of its own (``CREATE_NEW_PROCESS_GROUP`` on Windows, a
  new session on POSIX), so a Ctrl-C in the terminal reaches pytest, whose teardown ends the tree,
  and so the tree can still be found after its parent died. Its program is found explicitly
  (``cmdline.resolve_program``: a relative path from the child's folder, PATHEXT on Windows), and a
  ``.cmd``/``.bat`` program gets a command line quoted for cmd.exe.
- **Its life is tied to the harness's**, for when pytest is killed hard (no teardown runs): on
  Linux the child gets the parent-death signal (SIGKILL when the thread that started it ends;
  launch from the main thread), on Windows its tree is put in a kill-on-close Job Object, which
  Windows ends with the harness's last handle. Elsewhere (macOS) nothing ties them.
- **Waits are short slices** (``wait_sliced``, ``join_sliced``): on Windows a Ctrl-C is only
  delivered when a blocking wait returns, so a ``wait(timeout=600)`` would ignore it for ten minutes.
- ``kill_tree`` ends a process and all its descendants: terminate, a grace period, then kill.
- ``run_with_deadline`` runs a command to completion or to its deadline, whichever comes first,
  and ends the whole tree on timeout (and any stragglers it left behind otherwise).
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from pytest_gemdirect.cmdline import cmd_exe_command_line, is_batch_file, resolve_program

IS_WINDOWS = sys.platform == "win32"

# A portable Python (ComfyUI's python_embeded) runs isolated (its ._pth file): it ignores
# PYTHONUTF8 / PYTHONIOENCODING / PYTHONUNBUFFERED but honours these options.
PYTHON_UTF8_FLAGS = ("-X", "utf8", "-u")
# The longest a wait blocks before it returns to let a Ctrl-C through (see the module docstring).
WAIT_SLICE_S = 0.25

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

# How long kill_tree waits after the final kill for the processes to be gone.
_KILL_WAIT_S = 3.0
_POLL_S = 0.05


@dataclass(frozen=True)
class CompletedRun:
    """The outcome of ``run_with_deadline``.

    ``exit_code`` is None when the command was ended at its deadline (``timed_out``) or could
    not be waited for; ``ended_pids`` lists the processes the harness had to end itself.
    """

    exit_code: int | None
    timed_out: bool
    duration_s: float
    log_path: Path
    pid: int | None = None
    ended_pids: tuple[int, ...] = field(default=())


def strip_ansi(text: str) -> str:
    """Text without terminal colour and cursor escapes (logs are read by people, not terminals)."""
    return _ANSI_RE.sub("", text)


def child_env(env_overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment, UTF-8 forced, with ``env_overrides`` applied (None removes)."""
    env = dict(os.environ)
    env["PYTHONUTF8"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    for key, value in (env_overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def python_argv(python: str, *args: str) -> list[str]:
    """``python`` with UTF-8 mode and unbuffered output on its command line, then ``args``."""
    return [python, *PYTHON_UTF8_FLAGS, *args]


class _Waitable(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...

    def poll(self) -> int | None: ...


def wait_sliced(
    popen: _Waitable,
    timeout_s: float | None,
    *,
    slice_s: float = WAIT_SLICE_S,
    clock: Callable[[], float] = time.monotonic,
) -> int | None:
    """Wait for ``popen`` to exit, at most ``timeout_s`` (None: no limit); its exit code, or None
    when it still runs. The wait blocks ``slice_s`` at a time, so a Ctrl-C lands within one slice
    on Windows too (the KeyboardInterrupt propagates; the caller ends the tree)."""
    deadline = None if timeout_s is None else clock() + max(0.0, timeout_s)
    while True:
        step = slice_s if deadline is None else min(slice_s, deadline - clock())
        if step <= 0:
            return popen.poll()
        try:
            return popen.wait(timeout=step)
        except subprocess.TimeoutExpired:
            continue


class _Joinable(Protocol):
    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


def join_sliced(
    thread: _Joinable,
    timeout_s: float,
    *,
    slice_s: float = WAIT_SLICE_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """``thread.join(timeout_s)`` in slices (a Windows join ignores Ctrl-C); True when it ended."""
    deadline = clock() + max(0.0, timeout_s)
    while thread.is_alive():
        step = min(slice_s, deadline - clock())
        if step <= 0:
            return False
        thread.join(timeout=step)
    return True


# --- tying a child's life to the harness ---------------------------------------------------

_PR_SET_PDEATHSIG = 1
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # the JOBOBJECTINFOCLASS value


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _IoCounters(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("Reads", "Writes", "Others", "ReadBytes", "WriteBytes", "OtherBytes")
    ]


class JobLimits(ctypes.Structure):
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION (winnt.h), laid out as on 64-bit Windows."""

    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def _load_kernel32() -> Any:
    if sys.platform == "win32":
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CreateJobObjectW.restype = ctypes.c_void_p
        kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, ctypes.c_wchar_p]
        kernel32.SetInformationJobObject.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint32,
        ]
        kernel32.AssignProcessToJobObject.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
        return kernel32
    raise OSError("Job Objects exist on Windows only")


def kill_on_close_job(process_handle: int, *, kernel32: Any = None) -> int | None:
    """Put a process in a new Job Object that Windows ends, with every process in it, when its
    last handle closes: the harness holds that handle until it exits, however it exits.

    Processes the child starts afterwards join the job. Returns the job's handle (keep it open;
    closing it ends the tree), or None when there is no Windows or Windows refused. ``kernel32``
    is for tests: an object with the four kernel32 functions used.
    """
    if kernel32 is None:
        try:
            kernel32 = _load_kernel32()
        except OSError:
            return None
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return None
    limits = JobLimits()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    size = ctypes.sizeof(limits)
    if not kernel32.SetInformationJobObject(
        job, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), size
    ) or not kernel32.AssignProcessToJobObject(job, process_handle):
        kernel32.CloseHandle(job)
        return None
    return int(job)


def close_job(popen: object, *, kernel32: Any = None) -> bool:
    """Close the Job Object ``launch_logged`` made for ``popen`` (Windows ends whatever is still
    in it, which ``kill_tree`` wants anyway); True when there was one. Idempotent."""
    job = getattr(popen, "gemdirect_job", None)
    if not job:
        return False
    if kernel32 is None:
        try:
            kernel32 = _load_kernel32()
        except OSError:
            return False
    kernel32.CloseHandle(job)
    popen.gemdirect_job = None  # type: ignore[attr-defined]
    return True


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when the thread that started it ends
    (the harness killed hard); None on other systems. libc is looked up here, before the fork,
    so the child only makes the system call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = 9  # SIGKILL on Linux

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), sigkill)  # the harness died before the call: go with it

    return preexec


def command_for(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    platform: str = sys.platform,
) -> str | list[str]:
    """What to hand ``subprocess.Popen`` for ``args`` run in ``cwd`` with ``env``: the argument
    list with its program found (``cmdline.resolve_program``), or, for a ``.cmd``/``.bat`` program
    on Windows, the whole cmd.exe command line with every argument quoted for it (a list would
    let cmd.exe cut the line at an ``&``). Raises ProgramNotFound (a FileNotFoundError)."""
    if not args:
        raise ValueError("a command needs a program, got an empty argument list")
    program = resolve_program(
        str(args[0]), cwd=cwd, platform=platform, path=env.get("PATH"), pathext=env.get("PATHEXT")
    )
    rest = [str(a) for a in args[1:]]
    if is_batch_file(program, platform=platform):
        return cmd_exe_command_line(str(program), rest, comspec=windows_comspec(env))
    return [str(program), *rest]


def windows_comspec(env: Mapping[str, str]) -> str:
    """cmd.exe in the system folder (never a ``cmd.exe`` planted in the working folder)."""
    root = env.get("SystemRoot") or env.get("SYSTEMROOT") or "C:\\Windows"
    return root.rstrip("\\/") + "\\System32\\cmd.exe"


def _start(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env_overrides: Mapping[str, str | None] | None,
    stdout: Any,
    stderr: Any,
) -> subprocess.Popen[bytes]:
    """Popen in a process group of its own, its life tied to ours (see the module docstring)."""
    env = child_env(env_overrides)
    command = command_for(args, cwd=cwd, env=env)
    kwargs: dict[str, Any] = {}
    if IS_WINDOWS:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        if isinstance(command, str):
            kwargs["executable"] = windows_comspec(env)
    else:
        kwargs["start_new_session"] = True
        kwargs["preexec_fn"] = parent_death_signal()
    popen = subprocess.Popen(  # no shell
        command,
        cwd=os.fspath(cwd) if cwd is not None else None,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        **kwargs,
    )
    # Remember when it started, to find its orphaned children on Windows after it died
    # (Windows keeps a dead parent's pid in its children's ppid; the time guards pid reuse).
    try:
        popen.gemdirect_create_time = psutil.Process(popen.pid).create_time()  # type: ignore[attr-defined]
    except (psutil.Error, OSError):
        popen.gemdirect_create_time = time.time() - 1.0  # type: ignore[attr-defined]
    handle = getattr(popen, "_handle", None) if IS_WINDOWS else None
    popen.gemdirect_job = kill_on_close_job(int(handle)) if handle is not None else None  # type: ignore[attr-defined]
    return popen


def launch_logged(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env_overrides: Mapping[str, str | None] | None,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start ``args`` (no shell) with stdout and stderr going to ``log_path``.

    The log file is created (with its folder) and truncated. Standard input is closed, so a
    prompt fails at once instead of waiting for an answer that never comes. Raises OSError like
    ``subprocess.Popen``; ProgramNotFound (a FileNotFoundError naming the folders searched) when
    the program does not exist.
    """
    if not args:
        raise ValueError("launch_logged needs a command, got an empty argument list")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return _start(args, cwd=cwd, env_overrides=env_overrides, stdout=log, stderr=subprocess.STDOUT)


@dataclass(frozen=True)
class CapturedRun:
    """The outcome of ``run_captured``: ``exit_code`` None when it was ended at its deadline."""

    exit_code: int | None
    stdout: str
    stderr: str


def run_captured(args: Sequence[str], *, timeout_s: float) -> CapturedRun:
    """Run a short command (a tool's ``--version``) to its end or ``timeout_s``, its output as
    text (UTF-8, undecodable bytes replaced). The tree is ended on timeout and on Ctrl-C, which
    lands within a wait slice. Raises OSError when it cannot be started."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        popen = _start(args, cwd=None, env_overrides=None, stdout=out, stderr=err)
        try:
            code = wait_sliced(popen, timeout_s)
        finally:
            kill_tree(popen, grace_s=1.0)
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read(1024 * 1024).decode("utf-8", errors="replace"))
    return CapturedRun(code, texts[0], texts[1])


def pid_alive(pid: int) -> bool:
    """The process ``pid`` still runs (a zombie does not): a child's check that its parent is there."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _orphans(pid: int, started: float | None) -> list[psutil.Process]:
    """Processes of a tree whose root is ``pid`` that ``children()`` can no longer reach.

    POSIX: members of the session ``pid`` leads (launch_logged starts one), whatever became of
    their parents. Windows: processes whose recorded parent is ``pid`` and that started after it,
    and their descendants.
    """
    found: list[psutil.Process] = []
    me = os.getpid()
    if not IS_WINDOWS:
        try:
            if os.getsid(0) == pid:
                return []  # never sweep our own session
        except OSError:
            return []
        for proc in psutil.process_iter():
            if proc.pid in (pid, me):
                continue
            try:
                if os.getsid(proc.pid) == pid:
                    found.append(proc)
            except OSError:
                continue
        return found
    if started is None:
        return []
    for proc in psutil.process_iter(["ppid", "create_time"]):
        info = proc.info
        if info.get("ppid") == pid and (info.get("create_time") or 0.0) >= started - 0.5:
            found.append(proc)
            try:
                found.extend(proc.children(recursive=True))
            except psutil.Error:
                pass
    return found


def _snapshot(pid: int, started: float | None) -> tuple[psutil.Process | None, list[psutil.Process]]:
    """The root process (None when gone or its pid reused) and every descendant, orphans too."""
    root: psutil.Process | None = None
    descendants: list[psutil.Process] = []
    try:
        proc = psutil.Process(pid)
        created = proc.create_time()
        if started is None or created <= started + 1.0:  # otherwise the pid was reused
            root = proc
            started = created if started is None else started
            descendants = proc.children(recursive=True)
    except psutil.Error:
        pass
    seen = {p.pid for p in descendants}
    for proc in _orphans(pid, started):
        if proc.pid not in seen:
            descendants.append(proc)
            seen.add(proc.pid)
    return root, descendants


def _signal_all(procs: list[psutil.Process], how: str, ended: list[int]) -> None:
    for proc in procs:
        try:
            getattr(proc, how)()
        except psutil.Error:
            continue
        if proc.pid not in ended:
            ended.append(proc.pid)


def _signal_popen(popen: subprocess.Popen[Any] | None, how: str) -> bool:
    """``popen.terminate()`` / ``kill()`` while it runs; True when it was signalled."""
    if popen is None or popen.poll() is not None:
        return False
    try:
        getattr(popen, how)()
    except OSError:
        return False
    return True


def _wait_gone(
    targets: list[psutil.Process], popen: subprocess.Popen[Any] | None, seconds: float
) -> list[psutil.Process]:
    """Wait up to ``seconds`` for every target (and ``popen``) to end; the ones still alive."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        alive = [p for p in targets if not _gone(p)]
        root_alive = popen is not None and popen.poll() is None
        if (not alive and not root_alive) or time.monotonic() >= deadline:
            return alive
        time.sleep(_POLL_S)


def kill_tree(pid_or_popen: int | subprocess.Popen[Any], *, grace_s: float = 5.0) -> list[int]:
    """End a process and every descendant: terminate all, wait up to ``grace_s``, kill the rest.

    The descendants are snapshotted first (``children(recursive=True)``), so a parent that dies
    on terminate does not hide its children; when the parent is already dead its orphans are
    still found (see ``_orphans``). Returns the pids it ended (processes that were still running
    when it signalled them), the root last. Never raises for processes that are already gone.
    A ``Popen`` is also reaped, so its ``returncode`` is set afterwards.
    """
    popen = pid_or_popen if isinstance(pid_or_popen, subprocess.Popen) else None
    pid = popen.pid if popen is not None else int(pid_or_popen)  # type: ignore[arg-type]
    root, descendants = _snapshot(pid, getattr(popen, "gemdirect_create_time", None))
    targets = [p for p in descendants if not _gone(p)]
    if popen is None and root is not None and not _gone(root):
        targets.append(root)  # a bare pid: psutil ends it like the others
    ended: list[int] = []

    _signal_all(targets, "terminate", ended)
    if _signal_popen(popen, "terminate"):
        ended.append(pid)
    alive = _wait_gone(targets, popen, grace_s)
    if alive or (popen is not None and popen.poll() is None):
        _signal_all(alive, "kill", ended)
        _signal_popen(popen, "kill")
        _wait_gone(targets, popen, _KILL_WAIT_S)
    if popen is not None:
        wait_sliced(popen, _KILL_WAIT_S)
        close_job(popen)  # Windows: ends anything that escaped the snapshot, frees the handle
    if pid in ended:  # the root last, for a readable order
        ended.remove(pid)
        ended.append(pid)
    return ended


def log_tail(path: str | os.PathLike[str], lines: int = 40) -> str:
    """The last ``lines`` lines of a log file as text (UTF-8, undecodable bytes replaced,
    terminal escapes removed); a short note in words when the file is missing or empty."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return f"(no log: {path} does not exist)"
    if size == 0:
        return "(the log is empty)"
    chunk = max(64 * 1024, lines * 400)
    with open(path, "rb") as handle:
        if size > chunk:
            handle.seek(size - chunk)
        data = handle.read()
    text = strip_ansi(data.decode("utf-8", errors="replace")).replace("\r\n", "\n")
    # a carriage return without newline is a progress redraw: keep the final state of the line
    rows = [row.rsplit("\r", 1)[-1] for row in text.split("\n")]
    if size > chunk and rows:
        rows = rows[1:]  # the first row is probably cut
    while rows and not rows[-1].strip():
        rows.pop()
    return "\n".join(rows[-lines:]) if lines > 0 else ""


def run_with_deadline(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env_overrides: Mapping[str, str | None] | None,
    log_path: Path,
    timeout_s: float,
    grace_s: float = 5.0,
) -> CompletedRun:
    """Run ``args`` to completion or until ``timeout_s`` has passed, output to ``log_path``.

    On timeout the whole process tree is ended (``timed_out`` True, ``exit_code`` None). After a
    normal exit, processes it left running in its tree are ended too. A KeyboardInterrupt while
    waiting (it lands within ``WAIT_SLICE_S``, on Windows too) ends the tree and is re-raised.
    Raises OSError (ProgramNotFound naming the folders searched) when the program cannot be started.
    """
    started = time.monotonic()
    popen = launch_logged(args, cwd=cwd, env_overrides=env_overrides, log_path=log_path)
    timed_out = False
    ended: list[int] = []
    try:
        if wait_sliced(popen, timeout_s) is None:
            timed_out = True
            ended = kill_tree(popen, grace_s=grace_s)
    except BaseException:
        kill_tree(popen, grace_s=min(grace_s, 2.0))
        raise
    duration = time.monotonic() - started
    if not timed_out:
        ended = kill_tree(popen, grace_s=min(grace_s, 2.0))  # stragglers it left behind
    return CompletedRun(
        exit_code=None if timed_out else popen.returncode,
        timed_out=timed_out,
        duration_s=duration,
        log_path=Path(log_path),
        pid=popen.pid,
        ended_pids=tuple(ended),
    )
