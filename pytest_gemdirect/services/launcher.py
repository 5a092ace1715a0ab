"""Launching a real ComfyUI from its install directory (design §3, target "launch a process").

``ComfyLaunch`` runs ``<python> -X utf8 -u main.py --listen 127.0.0.1 --port P [extra args]`` in the
ComfyUI folder, with UTF-8 forced (on its command line, which the portable build's isolated Python
honours, and in its environment for everything it starts) and its output in a log file
(``comfyui.log`` in the run directory), and waits until ``GET /system_stats`` answers with
ComfyUI's JSON. ``python`` may start with ``~``; a relative path is taken from the folder pytest
was started in (where the user typed it), and a missing interpreter is named with that folder.

- **Process death is noticed at once.** The boot loop checks the process between probes (each
  probe's connect is bounded at half a second), so a ComfyUI that crashes on start-up (a bad
  custom node, a broken torch) raises ``LaunchError`` with its exit code and the last 40 lines of
  its log within a fraction of a second, not at the boot deadline.
- **The boot deadline** (``boot_timeout_s``, the ``--comfyui-boot-timeout`` setting) ends the
  whole process tree and raises ``LaunchError`` naming the setting, with the log tail.
- **Before launching**, the port is checked: when something there already answers
  ``/system_stats`` like ComfyUI, nothing is launched and the launcher attaches to it
  (``attached`` is True, and ``stop()`` leaves that server alone); when another program holds the
  port, ``LaunchError`` says which one (pid and name via psutil, when the operating system tells)
  and to choose ``--comfyui-port``.
- **A free port** (``port=None``) is found by binding port 0 on 127.0.0.1, reading the number and
  closing the socket; ComfyUI binds it a moment later. Another program could take the port in that
  gap: the check above then catches it before launching, and a ComfyUI that still loses the race
  exits with "address already in use", which is reported at once like any death during boot. A
  server answering on the port only counts as ready while our own process is alive, so a
  stranger's server is never mistaken for ours.
- **``stop()``** ends the whole process tree (``processes.kill_tree``: terminate, a grace period,
  kill; on Windows too, where ComfyUI's workers and custom-node helpers would otherwise linger).
  It is idempotent and safe after the process died.

**Windows portable build.** Its layout is ``ComfyUI_windows_portable\\python_embeded\\python.exe``
next to ``ComfyUI_windows_portable\\ComfyUI\\main.py``. When ``python`` is not given, on Windows, and
``<comfyui_dir>\\..\\python_embeded\\python.exe`` exists, that interpreter is used, with ``-s``
(no user site-packages) as the portable build's own ``run_nvidia_gpu.bat`` does; otherwise
``sys.executable``. ``comfyui_dir`` may also be the portable root itself: when it has no
``main.py`` but ``<dir>\\ComfyUI\\main.py`` exists, that folder is used. ``--windows-standalone-build``
is *not* passed (it opens a browser).

Nothing here imports pytest; the stage code turns ``LaunchError`` into a failed stage.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import requests

from pytest_gemdirect.cmdline import ProgramNotFound, resolve_program
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.processes import kill_tree, launch_logged, log_tail, python_argv

HOST = "127.0.0.1"
BOOT_TIMEOUT_SETTING = "--comfyui-boot-timeout"
PORT_SETTING = "--comfyui-port"
DIR_SETTING = "--comfyui-dir"
LOG_TAIL_LINES = 40

# How long one readiness probe may take: the connect must be quick (nothing listening yet is the
# normal case while booting, and Windows takes up to two seconds to refuse a loopback connect);
# an answer, once connected, may take a little longer on a busy machine.
_CONNECT_TIMEOUT_S = 0.5
_READ_TIMEOUT_S = 5.0
_POLL_S = 0.1
# The check before launching: a program that accepts connections but does not answer HTTP in
# this time is "another program".
_PREFLIGHT_READ_TIMEOUT_S = 2.0


class LaunchError(RuntimeError):
    """ComfyUI could not be launched or attached; the message says why in plain words.

    ``exit_code``: the process's exit code when it died during boot; ``setting``: the setting to
    change (``--comfyui-boot-timeout``, ``--comfyui-port``); ``log_tail``: the last lines of its log.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        setting: str | None = None,
        log_path: Path | None = None,
        log_tail: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.setting = setting
        self.log_path = log_path
        self.log_tail = log_tail
        self.port = port


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (bind port 0, read it, close; see the module docstring
    for the small race this leaves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_portable_python(comfyui_dir: Path) -> Path | None:
    """``<comfyui_dir>/../python_embeded/python.exe`` when it exists (the Windows portable build)."""
    candidate = Path(comfyui_dir).resolve().parent / "python_embeded" / "python.exe"
    return candidate if candidate.is_file() else None


def resolve_comfyui_dir(comfyui_dir: Path) -> Path:
    """The folder holding ``main.py``: ``comfyui_dir`` itself, or its ``ComfyUI`` subfolder (the
    portable root). Raises LaunchError when neither has one."""
    base = Path(comfyui_dir).expanduser()
    if (base / "main.py").is_file():
        return base
    if (base / "ComfyUI" / "main.py").is_file():
        return base / "ComfyUI"
    if not base.is_dir():
        raise LaunchError(
            f"the ComfyUI folder {base} does not exist (--comfyui-dir)", setting="--comfyui-dir"
        )
    raise LaunchError(
        f"no main.py in {base} (nor in {base / 'ComfyUI'}): --comfyui-dir must be ComfyUI's install"
        " folder, the one with main.py in it",
        setting=DIR_SETTING,
    )


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never send loopback requests through an HTTP(S)_PROXY
    return session


def looks_like_comfyui(body: Any) -> bool:
    """True for the JSON of ComfyUI's ``GET /system_stats`` (``system`` object, ``devices`` list)."""
    return (
        isinstance(body, dict)
        and isinstance(body.get("system"), dict)
        and isinstance(body.get("devices"), list)
    )


def probe_system_stats(
    url: str, *, connect_timeout: float = _CONNECT_TIMEOUT_S, read_timeout: float = _READ_TIMEOUT_S
) -> tuple[str, Any]:
    """``GET <url>/system_stats`` once: ("comfyui", json) | ("other", what answered) | ("closed", reason)."""
    with _session() as session:
        try:
            response = session.get(url + "/system_stats", timeout=(connect_timeout, read_timeout))
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout) or "timed out" in str(exc).lower():
                return "closed", "no connection"
            if _is_read_problem(exc):
                return "other", "it accepted the connection, then closed it without an HTTP answer"
            return "closed", "connection refused"
        except requests.Timeout:
            return "other", f"it accepted the connection but sent no HTTP answer within {read_timeout:g} s"
        except requests.RequestException as exc:
            return "other", f"it did not answer HTTP ({type(exc).__name__})"
        try:
            body = response.json() if response.status_code == 200 else None
        except ValueError:
            body = None
        if looks_like_comfyui(body):
            return "comfyui", body
        kind = response.headers.get("Content-Type", "?").split(";")[0]
        server = response.headers.get("Server")
        return "other", f"GET /system_stats answered HTTP {response.status_code} ({kind}" + (
            f", server {server})" if server else ")"
        )


def _is_read_problem(exc: requests.ConnectionError) -> bool:
    """A connection that was made and then dropped (vs. one that was refused)."""
    text = repr(exc).lower()
    return any(
        word in text
        for word in ("remotedisconnected", "connection aborted", "connectionreseterror", "badstatusline")
    )


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, name) of the process listening on ``port``, when the operating system says."""

    def name_of(pid: int) -> str:
        try:
            return psutil.Process(pid).name()
        except psutil.Error:
            return "?"

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid, name_of(conn.pid)
    except (psutil.Error, OSError):
        pass
    # macOS needs root for the system-wide table: look at the processes we may inspect
    for proc in psutil.process_iter():
        try:
            # net_connections() since psutil 6, connections() before (pyproject allows 5.9)
            method = getattr(proc, "net_connections", None) or proc.connections
            conns: list[Any] = method(kind="tcp")
        except (psutil.Error, OSError):
            continue
        for own in conns:
            if own.status == psutil.CONN_LISTEN and own.laddr and own.laddr.port == port:
                return proc.pid, name_of(proc.pid)
    return None


class ComfyLaunch:
    """A ComfyUI launched from ``comfyui_dir`` (or attached, when it already runs on the port).

    >>> with ComfyLaunch(Path("C:/ComfyUI_windows_portable/ComfyUI"), log_path=run / "comfyui.log") as comfy:
    ...     requests.get(comfy.url + "/object_info")
    """

    def __init__(
        self,
        comfyui_dir: Path,
        *,
        python: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path,
        boot_timeout_s: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.comfyui_dir = Path(comfyui_dir)
        self.env = dict(env or {})
        self.launches = 0  # processes started (a relaunch after a death adds one)
        self.requested_port = port
        self.extra_args = [str(a) for a in extra_args]
        self.log_path = Path(log_path)
        self.boot_timeout_s = float(boot_timeout_s)
        self.portable = False
        if python is None:
            embedded = None
            if sys.platform == "win32":
                try:
                    embedded = find_portable_python(resolve_comfyui_dir(self.comfyui_dir))
                except LaunchError:
                    embedded = None  # reported by start()
            self.portable = embedded is not None
            python = str(embedded) if embedded is not None else sys.executable
        self.python = python

        self.port: int | None = port
        self.url: str | None = None
        self.attached = False
        self.popen: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.system_stats: dict[str, Any] | None = None
        self.boot_seconds: float | None = None
        self.ended_pids: list[int] = []
        self._stopped = False

    # --- public ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def start(self) -> str:
        """Launch (or attach) and wait until ready; the base URL. Raises LaunchError."""
        if self.url is not None and not self._stopped:
            return self.url
        workdir = resolve_comfyui_dir(self.comfyui_dir)
        port = self.requested_port if self.requested_port is not None else free_port()
        url = f"http://{HOST}:{port}"
        self.port = port

        state, detail = self._preflight(port, url)
        if state == "comfyui":
            self.attached = True
            self.url = url
            self.system_stats = detail
            self.boot_seconds = 0.0
            self._stopped = False
            return url
        if state == "other":
            owner = port_owner(port)
            who = f"pid {owner[0]}, {owner[1]}" if owner else "the program could not be identified"
            raise LaunchError(
                f"port {port} on {HOST} is in use by another program ({who}): {detail}; "
                f"choose {PORT_SETTING}",
                setting=PORT_SETTING,
                port=port,
            )

        self.command = self.planned_command(port)
        deadline = Deadline(self.boot_timeout_s, setting=BOOT_TIMEOUT_SETTING)
        try:
            self.popen = launch_logged(
                self.command,
                cwd=workdir,
                env_overrides={
                    **self.env,
                    "PYTHONUTF8": "1",
                    "PYTHONIOENCODING": "utf-8",
                    "PYTHONUNBUFFERED": "1",
                },
                log_path=self.log_path,
            )
        except OSError as exc:
            raise LaunchError(
                f"could not start ComfyUI with {self.python!r} in {workdir}: {exc}", port=port
            ) from exc
        self._stopped = False
        self.launches += 1
        try:
            self.system_stats = self._wait_ready(url, deadline)
        except BaseException:
            self.stop(grace_s=2.0)
            raise
        self.boot_seconds = deadline.elapsed()
        self.url = url
        return url

    def planned_command(self, port: int) -> list[str]:
        """The command ``start()`` runs: ``<python> [-s] -X utf8 -u main.py --listen … --port
        <port> [extra args]``, the interpreter found (``~`` expanded, a relative path from the
        folder pytest runs in). Raises LaunchError naming where it looked when it is missing."""
        try:
            python = str(resolve_program(self.python, cwd=Path.cwd()))
        except ProgramNotFound as exc:
            raise LaunchError(f"could not start ComfyUI: its Python {exc}", port=port) from None
        command = python_argv(python, *(["-s"] if self.portable else []), "main.py")
        return [*command, "--listen", HOST, "--port", str(port), *self.extra_args]

    def relaunch(self, log_path: Path) -> str:
        """Start the same install and command again after the process died, on the same port
        (``--comfyui-port`` or the one it had), its output in ``log_path``; the base URL.

        Raises LaunchError like ``start()`` (a port another program took meanwhile is named)."""
        self.stop(grace_s=1.0)  # whatever the dead process left running
        self.requested_port = self.port
        self.log_path = Path(log_path)
        self.url = None
        self.popen = None
        self.attached = False
        return self.start()

    def alive(self) -> bool:
        """Launched: the process still runs. Attached: the server still answers ``/system_stats``."""
        if self.attached:
            if self.url is None:
                return False
            state, _ = probe_system_stats(self.url, read_timeout=2.0)
            return state == "comfyui"
        return self.popen is not None and self.popen.poll() is None

    def stop(self, *, grace_s: float = 5.0) -> list[int]:
        """End the launched process tree (terminate, ``grace_s``, kill); a server that was attached
        to is left running. Idempotent; the pids ended by this call."""
        if self._stopped:
            return []
        self._stopped = True
        if self.popen is None:
            return []
        ended = kill_tree(self.popen, grace_s=grace_s)
        self.ended_pids.extend(ended)
        return ended

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> ComfyLaunch:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        how = "attached" if self.attached else f"pid {self.pid}" if self.popen else "not started"
        return f"ComfyLaunch({str(self.comfyui_dir)!r}, url={self.url!r}, {how})"

    # --- internals -------------------------------------------------------------------------

    def _preflight(self, port: int, url: str) -> tuple[str, Any]:
        """What is on the port before launching: "comfyui", "other" or "closed"."""
        try:
            with socket.create_connection((HOST, port), timeout=_CONNECT_TIMEOUT_S):
                pass
        except OSError:
            return "closed", None
        return probe_system_stats(url, read_timeout=_PREFLIGHT_READ_TIMEOUT_S)

    def _wait_ready(self, url: str, deadline: Deadline) -> dict[str, Any]:
        assert self.popen is not None
        popen = self.popen
        while True:
            self._raise_if_exited(popen, deadline)
            if deadline.expired():
                break
            state, body = probe_system_stats(
                url,
                connect_timeout=max(0.05, deadline.timeout(_CONNECT_TIMEOUT_S)),
                read_timeout=max(0.05, deadline.timeout(_READ_TIMEOUT_S)),
            )
            # an answer only counts while our own process lives (not a stranger that took the port)
            if state == "comfyui" and popen.poll() is None:
                return dict(body)
            try:
                popen.wait(timeout=deadline.timeout(_POLL_S))  # wakes at once when it exits
            except subprocess.TimeoutExpired:
                pass
        self._raise_if_exited(popen, deadline)
        self.stop(grace_s=2.0)
        tail = self.log_tail()
        raise LaunchError(
            f"ComfyUI did not answer GET {url}/system_stats within {self.boot_timeout_s:g} s"
            f" ({BOOT_TIMEOUT_SETTING} = {self.boot_timeout_s:g}); it was ended."
            f" Command: {_quote(self.command)} in {self.comfyui_dir}."
            f" Last {LOG_TAIL_LINES} lines of {self.log_path}:\n{tail}",
            setting=BOOT_TIMEOUT_SETTING,
            log_path=self.log_path,
            log_tail=tail,
            port=self.port,
        )

    def _raise_if_exited(self, popen: subprocess.Popen[bytes], deadline: Deadline) -> None:
        code = popen.poll()
        if code is None:
            return
        self.stop(grace_s=1.0)  # whatever it left running
        tail = self.log_tail()
        raise LaunchError(
            f"ComfyUI exited during start-up with exit code {describe_exit(code)} after"
            f" {deadline.elapsed():.1f} s. Command: {_quote(self.command)} in {self.comfyui_dir}."
            f" Last {LOG_TAIL_LINES} lines of {self.log_path}:\n{tail}",
            exit_code=code,
            log_path=self.log_path,
            log_tail=tail,
            port=self.port,
        )


def describe_exit(code: int) -> str:
    if code < 0:
        return f"{code} (ended by signal {-code})"
    if sys.platform == "win32" and code >= 0xC0000000:
        return f"{code} (0x{code:08X}, a Windows crash code)"
    return str(code)


def _quote(args: Sequence[str]) -> str:
    return " ".join(f'"{a}"' if (" " in a or not a) else a for a in args)


__all__ = [
    "BOOT_TIMEOUT_SETTING",
    "describe_exit",
    "ComfyLaunch",
    "LaunchError",
    "PORT_SETTING",
    "find_portable_python",
    "free_port",
    "looks_like_comfyui",
    "port_owner",
    "probe_system_stats",
    "resolve_comfyui_dir",
]
