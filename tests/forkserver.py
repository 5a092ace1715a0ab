"""The suite's pipeline runs, forked from a process that has already imported pytest and the
libraries a run needs, instead of each starting a Python of its own.

A whole pipeline run in a fresh interpreter spends about 0.8 s of CPU importing pytest, requests,
jsonschema, numpy, PyAV, Pillow and Jinja2 before it does anything; the suite starts well over a
hundred of them. On POSIX one fork server per test process (per xdist worker) imports them once,
and each run is a fork of it: a process of its own still (its own pid, signals, files, exit code
and interpreter shutdown, so a run that hangs at exit still hangs), only without the imports.
The product's own modules are not imported beforehand, so a run still loads the plugin as a
user's run does. Where ``os.fork`` is missing (Windows), or ``GEMDIRECT_TESTS_NO_FORK`` is set,
runs start a fresh interpreter as pytester does.

Run as ``python -m tests.forkserver`` it is the server: one JSON request a line on stdin, and
``started <pid>`` / ``ended <pid> <returncode>`` lines on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

PRELOADED = (
    "pytest",
    "_pytest.pytester",
    "_pytest.junitxml",
    "_pytest.terminal",
    "requests",
    "websocket",
    "jsonschema",
    "numpy",
    "av",
    "PIL.Image",
    "PIL.PngImagePlugin",
    "jinja2",
    "psutil",
    "filelock",
    "execnet",
)
"""Third-party modules a pipeline run imports anyway: none of the product's own, and no pytest plugin
(pytest rewrites the asserts of a plugin's modules, and warns when one was imported before it)."""

REPO = Path(__file__).resolve().parents[1]


# --- the client, in the test process ---------------------------------------------------------------


class ForkServer:
    """One server process and the runs it has started; safe to use from several threads."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OPENBLAS_NUM_THREADS"] = env.get("OPENBLAS_NUM_THREADS", "1")  # no BLAS threads to fork
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._started: list[int] = []
        self._ended: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            word, *rest = line.split()
            with self._changed:
                if word == "started":
                    self._started.append(int(rest[0]))
                elif word == "ended":
                    self._ended[int(rest[0])] = int(rest[1])
                self._changed.notify_all()
        with self._changed:
            self._started.append(-1)  # the server is gone: nothing more will start
            self._changed.notify_all()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float) -> int:
        """Run ``python -m pytest *argv`` in ``cwd``; its output goes to ``cwd/stdout``, ``cwd/stderr``."""
        request = {"argv": list(argv), "cwd": str(cwd), "env": dict(env)}
        with self._lock, self._changed:  # one request at a time, so the next "started" line is ours
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            self._changed.wait_for(lambda: self._started)
            pid = self._started.pop(0)
        if pid < 0:
            raise RuntimeError("the suite's fork server ended (see the test process's stderr)")
        deadline = time.monotonic() + timeout
        with self._changed:
            while pid not in self._ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_tree(pid)
                    raise subprocess.TimeoutExpired(argv, timeout)
                self._changed.wait(min(left, 1.0))
            return self._ended.pop(pid)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join()  # it reads to the end of the server's output, then that pipe is closed
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        for proc in [*root.children(recursive=True), root]:
            proc.kill()
    except psutil.Error:
        pass


_server: ForkServer | None = None
_server_lock = threading.Lock()


def _shared_server() -> ForkServer | None:
    """This process's fork server, started on first use; None where runs cannot be forked."""
    global _server
    if not hasattr(os, "fork") or os.environ.get("GEMDIRECT_TESTS_NO_FORK"):
        return None
    with _server_lock:
        if _server is None or not _server.alive():
            _server = ForkServer()
            import atexit

            atexit.register(_server.close)
        return _server


def run_pytest(argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float) -> int:
    """``python -m pytest *argv`` in ``cwd`` with exactly ``env``, its output in ``cwd/stdout`` and
    ``cwd/stderr``; the return code (negative: the signal that ended it). Forked where possible."""
    server = _shared_server()
    if server is not None:
        return server.run(argv, cwd, env, timeout)
    with open(cwd / "stdout", "wb") as out, open(cwd / "stderr", "wb") as err:
        done = subprocess.run(
            [sys.executable, "-mpytest", *argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            timeout=timeout,
            check=False,
        )
    return done.returncode


# --- the server --------------------------------------------------------------------------------------


def _serve() -> dict[str, Any] | None:
    """Fork a child for each request; give back the request in the child, None when stdin ends."""
    import importlib
    import select

    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional plugin that is not installed: the run imports what it has
            pass
    pending = b""
    children: set[int] = set()
    out = sys.stdout
    while True:
        readable, _, _ = select.select([0], [], [], 0.2)
        while children:  # reap every child that has ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            out.write(f"ended {pid} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()
        if not readable:
            continue
        chunk = os.read(0, 1 << 20)
        if not chunk:
            for pid in children:
                _kill_tree(pid)
            return None
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                return dict(json.loads(line))
            children.add(pid)
            out.write(f"started {pid}\n")
            out.flush()


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become ``python -m pytest`` in the request's folder, with its env."""
    cwd = Path(request["cwd"])
    os.chdir(cwd)
    base_path = sys.path[1:]  # the site folders, without the server's own first entry
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(cwd), *extra, *(p for p in base_path if p not in extra)]
    for name in [n for n in sys.modules if n == "tests" or n.startswith("tests.")]:
        del sys.modules[name]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(cwd / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    line_buffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdout = sys.__stdout__ = _text_stream(1, "w", buffering=1 if line_buffered else -1)
    sys.stderr = sys.__stderr__ = _text_stream(2, "w", buffering=1, errors="backslashreplace")
    sys.stdin = sys.__stdin__ = _text_stream(0, "r", buffering=-1)
    import runpy

    sys.argv = ["pytest", *request["argv"]]  # run_module puts the module's path first, as ``-m`` does
    runpy.run_module("pytest", run_name="__main__", alter_sys=True)  # raises SystemExit, as it ends


def _text_stream(fd: int, mode: str, buffering: int, errors: str = "strict") -> TextIO:
    """A text stream on a standard descriptor, as the interpreter makes it at start-up."""
    return open(fd, mode, encoding="utf-8", errors=errors, closefd=False, buffering=buffering)


if __name__ == "__main__":
    child_request = _serve()
    if child_request is not None:
        _run_child(child_request)
