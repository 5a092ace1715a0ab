"""Launching ComfyUI from an install folder, against real processes (fake installs under
tests/fake_comfyui/): ready, crash, deadline, tree kill, attach, port conflict."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from pytest_gemdirect.services import launcher
from pytest_gemdirect.services.launcher import (
    BOOT_TIMEOUT_SETTING,
    ComfyLaunch,
    LaunchError,
    find_portable_python,
    free_port,
    probe_system_stats,
    resolve_comfyui_dir,
)
from pytest_gemdirect.sim.comfyui import ComfyUISimulator
from pytest_gemdirect.startup_log import find_startup_warnings

FAKES = Path(__file__).parent / "fake_comfyui"


def _running(pids: list[int]) -> list[int]:
    """The pids that still run (a zombie waiting for its reaper has ended)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _tree(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid, *(child.pid for child in proc.children(recursive=True))]


@pytest.fixture
def launches() -> Iterator[list[ComfyLaunch]]:
    """Every launch a test makes is stopped afterwards, whatever the test did."""
    made: list[ComfyLaunch] = []
    yield made
    for launch in made:
        launch.stop(grace_s=1.0)


def _launch(launches: list[ComfyLaunch], name: str, tmp_path: Path, **kwargs: object) -> ComfyLaunch:
    launch = ComfyLaunch(FAKES / name, log_path=tmp_path / "run" / "comfyui.log", **kwargs)  # type: ignore[arg-type]
    launches.append(launch)
    return launch


def test_good_install_boots_answers_and_stop_leaves_no_process(
    launches: list[ComfyLaunch], tmp_path: Path
) -> None:
    launch = _launch(launches, "good", tmp_path, boot_timeout_s=30)
    url = launch.start()

    assert url == f"http://127.0.0.1:{launch.port}" and not launch.attached
    assert launch.command[1:] == [
        *("-X", "utf8", "-u"),  # UTF-8 and unbuffered output even where PYTHON* variables are ignored
        *("main.py", "--listen", "127.0.0.1", "--port", str(launch.port)),
    ]
    response = requests.get(url + "/system_stats", timeout=5)
    assert response.status_code == 200 and "devices" in response.json()
    assert launch.system_stats is not None and "system" in launch.system_stats
    assert launch.alive() and launch.boot_seconds is not None
    assert launch.start() == url  # already running: no second process
    try:
        env = psutil.Process(launch.pid).environ()  # type: ignore[arg-type]
    except psutil.AccessDenied:
        env = {}
    if env:
        assert env.get("PYTHONUTF8") == "1" and env.get("PYTHONIOENCODING") == "utf-8"

    pids = _tree(launch.pid)  # type: ignore[arg-type]
    ended = launch.stop(grace_s=3.0)
    assert launch.pid in ended
    assert _running(pids) == []
    assert not launch.alive()
    assert launch.stop() == []  # idempotent

    log = (tmp_path / "run" / "comfyui.log").read_text(encoding="utf-8")
    assert "To see the GUI go to: http://127.0.0.1:" in log
    messages = [w.message for w in find_startup_warnings(log)]
    assert "custom node ComfyUI-Foo failed to import: No module named 'skimage'" in messages


def test_context_manager_and_stop_after_the_process_died(launches: list[ComfyLaunch], tmp_path: Path) -> None:
    with _launch(launches, "good", tmp_path, boot_timeout_s=30) as launch:
        pid = launch.pid
        assert pid is not None and launch.alive()
        psutil.Process(pid).kill()
        launch.popen.wait(timeout=10)  # type: ignore[union-attr]
        assert not launch.alive()
    assert _running([pid]) == []
    assert launch.stop() == []


def test_crash_on_boot_fails_at_once_with_exit_code_and_log_tail(
    launches: list[ComfyLaunch], tmp_path: Path
) -> None:
    # a deadline no test waits for: only noticing the death itself ends start() with this error
    launch = _launch(launches, "crash_on_boot", tmp_path, boot_timeout_s=3600)
    with pytest.raises(LaunchError) as info:
        launch.start()

    error = info.value
    assert error.exit_code == 3 and error.setting is None  # the crash, not the boot deadline
    assert BOOT_TIMEOUT_SETTING not in str(error)
    assert "exited during start-up with exit code 3" in str(error)
    assert "RuntimeError: Found no NVIDIA driver on your system" in str(error)
    assert error.log_tail is not None and "Traceback (most recent call last):" in error.log_tail
    assert error.log_path == tmp_path / "run" / "comfyui.log"
    assert _running([launch.pid]) == []  # type: ignore[list-item]
    assert launch.stop() == []


def test_never_ready_is_ended_at_the_boot_deadline_naming_the_setting(
    launches: list[ComfyLaunch], tmp_path: Path
) -> None:
    launch = _launch(launches, "never_ready", tmp_path, boot_timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch.start()

    assert time.monotonic() - started >= 1.5  # it waited the whole boot timeout
    error = info.value
    assert error.setting == BOOT_TIMEOUT_SETTING
    assert f"within 1.5 s ({BOOT_TIMEOUT_SETTING} = 1.5)" in str(error)
    assert "Loading custom nodes (this one never finishes)" in str(error)
    assert error.exit_code is None
    assert _running([launch.pid]) == []  # type: ignore[list-item]


def test_a_tree_that_ignores_terminate_is_killed_whole(launches: list[ComfyLaunch], tmp_path: Path) -> None:
    launch = _launch(launches, "ignores_terminate", tmp_path, boot_timeout_s=30)
    launch.start()
    pids = _tree(launch.pid)  # type: ignore[arg-type]
    assert len(pids) >= 2, "the fake starts its helper child before it listens"

    ended = launch.stop(grace_s=0.5)
    assert launch.pid in ended
    assert _running(pids) == []  # every process of the tree, however many the interpreter made
    if sys.platform != "win32":
        assert launch.returncode == -9  # it ignored the terminate: killed after the grace period


def test_attaches_to_a_comfyui_already_running_on_the_port(
    launches: list[ComfyLaunch], tmp_path: Path
) -> None:
    with ComfyUISimulator() as sim:
        port = int(sim.url.rsplit(":", 1)[1])
        launch = _launch(launches, "good", tmp_path, port=port, boot_timeout_s=30)
        assert launch.start() == f"http://127.0.0.1:{port}"
        assert launch.attached and launch.pid is None and launch.command == []
        assert launch.system_stats is not None and "devices" in launch.system_stats
        assert not (tmp_path / "run" / "comfyui.log").exists()  # nothing was launched
        assert launch.alive()
        assert launch.stop() == []
        assert probe_system_stats(sim.url)[0] == "comfyui"  # left running


def test_port_held_by_a_plain_socket_is_a_clear_error(
    launches: list[ComfyLaunch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "_PREFLIGHT_READ_TIMEOUT_S", 0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        port = listener.getsockname()[1]
        launch = _launch(launches, "good", tmp_path, port=port, boot_timeout_s=30)
        with pytest.raises(LaunchError) as info:
            launch.start()
    message = str(info.value)
    assert f"port {port} on 127.0.0.1 is in use by another program" in message
    assert message.endswith("choose --comfyui-port")
    assert info.value.setting == "--comfyui-port"
    if sys.platform.startswith("linux"):  # psutil sees our own sockets there without privileges
        assert f"pid {os.getpid()}" in message
    assert launch.popen is None


def test_port_held_by_another_http_server_is_a_clear_error(
    launches: list[ComfyLaunch], tmp_path: Path
) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:  # the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        launch = _launch(launches, "good", tmp_path, port=port, boot_timeout_s=30)
        with pytest.raises(LaunchError) as info:
            launch.start()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    message = str(info.value)
    assert f"port {port} on 127.0.0.1 is in use by another program" in message
    assert "GET /system_stats answered HTTP 404" in message
    assert f"pid {os.getpid()}" in message or sys.platform == "darwin"


def test_a_missing_interpreter_is_a_launch_error(launches: list[ComfyLaunch], tmp_path: Path) -> None:
    launch = _launch(launches, "good", tmp_path, python=str(tmp_path / "no-such-python"))
    with pytest.raises(LaunchError, match="could not start ComfyUI") as info:
        launch.start()
    assert f"there is no file {tmp_path / 'no-such-python'}" in str(info.value)
    assert launch.popen is None


def test_the_interpreter_may_be_typed_with_a_tilde_or_relative_to_pytests_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "Zoë"
    python = home / "envs" / "comfy" / "python"
    python.parent.mkdir(parents=True)
    python.write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(home)
    for typed in ("~/envs/comfy/python", os.path.join("envs", "comfy", "python")):
        launch = ComfyLaunch(FAKES / "good", python=typed, log_path=tmp_path / "comfyui.log")
        assert launch.planned_command(8188)[0] == str(python), typed
    missing = ComfyLaunch(FAKES / "good", python=os.path.join("envs", "nope"), log_path=tmp_path / "c.log")
    with pytest.raises(LaunchError) as info:
        missing.planned_command(8188)
    assert f"there is no file {home / 'envs' / 'nope'}" in str(info.value)
    assert f"taken from the folder it runs in, {home})" in str(info.value)


def test_folder_without_main_py_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="no main.py in") as info:
        resolve_comfyui_dir(tmp_path)
    assert info.value.setting == "--comfyui-dir"
    with pytest.raises(LaunchError, match="does not exist"):
        resolve_comfyui_dir(tmp_path / "missing")


def test_windows_portable_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ComfyUI_windows_portable"
    (root / "ComfyUI").mkdir(parents=True)
    (root / "ComfyUI" / "main.py").write_text("", encoding="utf-8")
    (root / "python_embeded").mkdir()
    exe = root / "python_embeded" / "python.exe"
    exe.write_bytes(b"")

    assert resolve_comfyui_dir(root) == root / "ComfyUI"  # the portable root is accepted too
    assert find_portable_python(root / "ComfyUI") == exe.resolve()
    assert find_portable_python(tmp_path) is None

    monkeypatch.setattr(sys, "platform", "win32")
    portable = ComfyLaunch(
        root / "ComfyUI", log_path=tmp_path / "comfyui.log", extra_args=["--output-directory", "D:\\AI\\out"]
    )
    assert portable.python == str(exe.resolve()) and portable.portable
    # the embedded Python runs isolated (its ._pth file): UTF-8 and unbuffered output are asked
    # for on its command line, where it honours them
    assert portable.planned_command(8188) == [
        str(exe.resolve()),
        *("-X", "utf8", "-u", "-s", "main.py", "--listen", "127.0.0.1", "--port", "8188"),
        *("--output-directory", "D:\\AI\\out"),
    ]
    from_root = ComfyLaunch(root, log_path=tmp_path / "comfyui.log")
    assert from_root.python == str(exe.resolve())
    explicit = ComfyLaunch(root / "ComfyUI", python="py", log_path=tmp_path / "comfyui.log")
    assert explicit.python == "py" and not explicit.portable

    monkeypatch.setattr(sys, "platform", "linux")
    elsewhere = ComfyLaunch(root / "ComfyUI", log_path=tmp_path / "comfyui.log")
    assert elsewhere.python == sys.executable and not elsewhere.portable


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
