"""Child processes the harness starts: launched with a log file, bounded in time, ended as a tree.

Used for the embedded simulator, a launched ComfyUI or LLM server and the external suites. The
same code runs on Windows (the reference machine) and POSIX: no shell, no POSIX-only signals,
psutil for the process tree.

- ``launch_logged`` starts a process with its stdout and stderr in a log file and UTF-8 forced in
  its environment. It gets a process group of its own (``CREATE_NEW_PROCESS_GROUP`` on Windows, a
  new session on POSIX), so a Ctrl-C in the terminal reaches pytest, whose teardown ends the tree,
  and so the tree can still be found after its parent died.
- ``kill_tree`` ends a process and all its descendants: terminate, a grace period, then kill.
- ``run_with_deadline`` runs a command to completion or to its deadline, whichever comes first,
  and ends the whole tree on timeout (and any stragglers it left behind otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

IS_WINDOWS = sys.platform == "win32"

# npm's launchers on Windows are batch files next to a POSIX shell script of the same bare name,
# which CreateProcess cannot run: always pick the .cmd.
_WINDOWS_CMD_SHIMS = frozenset({"npm", "npx", "pnpm", "pnpx", "yarn", "corepack"})

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


def resolve_command(argv0: str, *, path: str | None = None) -> str:
    """The program to execute for ``argv0``, found on PATH (``path`` overrides it).

    On Windows, ``npx``/``npm`` (and the other npm-style launchers) resolve to their ``.cmd``
    batch files. A name that is not found is returned unchanged, so starting it fails with the
    operating system's own "not found" error, which the callers turn into plain words.
    """
    if not argv0:
        return argv0
    if IS_WINDOWS:
        stem, ext = os.path.splitext(os.path.basename(argv0))
        if not ext and stem.lower() in _WINDOWS_CMD_SHIMS:
            found = shutil.which(argv0 + ".cmd", path=path)
            if found:
                return found
    has_dir = os.sep in argv0 or (os.altsep is not None and os.altsep in argv0)
    if has_dir:
        return argv0  # a path: relative ones are resolved against the child's cwd
    found = shutil.which(argv0, path=path)
    return found or argv0


def launch_logged(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env_overrides: Mapping[str, str | None] | None,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start ``args`` (no shell) with stdout and stderr going to ``log_path``.

    The log file is created (with its folder) and truncated. Standard input is closed, so a
    prompt fails at once instead of waiting for an answer that never comes. Raises OSError
    (FileNotFoundError when the program does not exist) like ``subprocess.Popen``.
    """
    if not args:
        raise ValueError("launch_logged needs a command, got an empty argument list")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(env_overrides)
    argv = [resolve_command(str(args[0]), path=env.get("PATH")), *(str(a) for a in args[1:])]
    kwargs: dict[str, Any] = {}
    if IS_WINDOWS:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(  # noqa: S603 - no shell, argument list
            argv,
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            **kwargs,
        )
    # Remember when it started, to find its orphaned children on Windows after it died
    # (Windows keeps a dead parent's pid in its children's ppid; the time guards pid reuse).
    try:
        popen.gemdirect_create_time = psutil.Process(popen.pid).create_time()  # type: ignore[attr-defined]
    except (psutil.Error, OSError):
        popen.gemdirect_create_time = time.time() - 1.0  # type: ignore[attr-defined]
    return popen


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
    started: float | None = getattr(popen, "gemdirect_create_time", None)

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

    targets = [p for p in descendants if not _gone(p)]
    if popen is None and root is not None and not _gone(root):
        targets.append(root)  # a bare pid: psutil ends it like the others
    popen_running = popen is not None and popen.poll() is None
    ended: list[int] = []

    def _signal(procs: list[psutil.Process], how: str) -> None:
        for proc in procs:
            try:
                getattr(proc, how)()
            except psutil.Error:
                continue
            if proc.pid not in ended:
                ended.append(proc.pid)

    def _wait(seconds: float) -> list[psutil.Process]:
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            alive = [p for p in targets if not _gone(p)]
            root_alive = popen is not None and popen.poll() is None
            if (not alive and not root_alive) or time.monotonic() >= deadline:
                return alive
            time.sleep(_POLL_S)

    _signal(targets, "terminate")
    if popen_running:
        try:
            popen.terminate()  # type: ignore[union-attr]
            ended.append(pid)
        except OSError:
            pass
    alive = _wait(grace_s)
    if alive or (popen is not None and popen.poll() is None):
        _signal(alive, "kill")
        if popen is not None and popen.poll() is None:
            try:
                popen.kill()
            except OSError:
                pass
        _wait(_KILL_WAIT_S)
    if popen is not None:
        try:
            popen.wait(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
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
    waiting ends the tree and is re-raised. Raises OSError when the program cannot be started.
    """
    started = time.monotonic()
    popen = launch_logged(args, cwd=cwd, env_overrides=env_overrides, log_path=log_path)
    timed_out = False
    ended: list[int] = []
    try:
        popen.wait(timeout=max(0.0, timeout_s))
    except subprocess.TimeoutExpired:
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
