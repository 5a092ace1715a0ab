"""The suite's fork server runs a pytest run as a fresh interpreter would (tests/forkserver.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.forkserver import ForkServer, run_pytest

REPORTING_TEST = """
import json, os, sys
from pathlib import Path


def test_reports_where_it_runs():
    Path("seen.json").write_text(json.dumps({
        "cwd": os.getcwd(),
        "chosen": os.environ.get("FORK_PROBE"),
        "leaked": os.environ.get("FORK_PROBE_LEAK"),
        "argv": sys.argv[1:],
        "path0": sys.path[0],
        "stdin": sys.stdin.read(),
    }))
    print("to-stdout")
    print("to-stderr", file=sys.stderr)


def test_fails():
    assert False, "as it should"
"""

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="runs are forked only where os.fork exists")


@pytest.fixture
def probe_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "test_probe.py").write_text(REPORTING_TEST, encoding="utf-8")
    monkeypatch.setenv("FORK_PROBE_LEAK", "in the test process only")
    return tmp_path


@pytest.mark.parametrize("how", ["forked", "fresh"])
def test_a_run_sees_its_own_folder_environment_arguments_and_output_files(
    probe_project: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "forked" and not hasattr(os, "fork"):
        pytest.skip("runs are forked only where os.fork exists")
    if how == "fresh":
        monkeypatch.setenv("GEMDIRECT_TESTS_NO_FORK", "1")
    env = {k: v for k, v in os.environ.items() if k != "FORK_PROBE_LEAK"}
    env.update(FORK_PROBE="chosen", PYTHONPATH=str(probe_project))
    argv = ["-p", "no:cacheprovider", "-s", "-q", "test_probe.py"]

    ret = run_pytest(argv, probe_project, env, timeout=600)

    assert ret == pytest.ExitCode.TESTS_FAILED
    seen = json.loads((probe_project / "seen.json").read_text(encoding="utf-8"))
    assert seen["cwd"] == str(probe_project)
    assert seen["chosen"] == "chosen"
    assert seen["leaked"] is None, "only the environment given reaches the run"
    assert seen["argv"] == argv
    assert seen["path0"] == str(probe_project)
    assert seen["stdin"] == ""
    out = (probe_project / "stdout").read_text(encoding="utf-8")
    assert "to-stdout" in out
    assert "1 failed, 1 passed" in out
    assert "as it should" in out
    err = (probe_project / "stderr").read_text(encoding="utf-8")
    assert "to-stderr" in err
    assert "already imported" not in out + err, "no plugin was imported before pytest could rewrite it"


HANGING_AT_EXIT = """
import threading
from pathlib import Path


def pytest_unconfigure(config):
    def wait_to_be_released():
        Path("hanging").write_text("at exit")  # a FIFO: the test reads it, so this waits for the test
        Path("release").read_text()  # the same, the other way round

    threading.Thread(target=wait_to_be_released).start()  # not a daemon: Python waits for it at exit
"""


@needs_fork
def test_a_forked_run_ends_only_when_its_interpreter_has_shut_down(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(HANGING_AT_EXIT, encoding="utf-8")
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n", encoding="utf-8")
    os.mkfifo(tmp_path / "hanging")
    os.mkfifo(tmp_path / "release")
    server = ForkServer()
    returned: list[int] = []
    run = threading.Thread(
        target=lambda: returned.append(
            server.run(["-p", "no:cacheprovider"], tmp_path, dict(os.environ), 600)
        )
    )
    try:
        run.start()
        assert (tmp_path / "hanging").read_text() == "at exit"  # blocks until the run is at its exit
        assert run.is_alive() and not returned, "the run may not end while a thread of it is alive"
        assert "1 passed" in (tmp_path / "stdout").read_text(encoding="utf-8")
        (tmp_path / "release").write_text("go")
        run.join()
        assert returned == [pytest.ExitCode.OK]
    finally:
        server.close()


@needs_fork
def test_a_run_that_outlives_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = f"sleeping-for-{tmp_path.name}"
    (tmp_path / "test_hang.py").write_text(
        "import subprocess, sys\n\n\ndef test_hang():\n"
        f"    subprocess.run([sys.executable, '-c', 'import time; time.sleep(3600)', {marker!r}])\n",
        encoding="utf-8",
    )
    server = ForkServer()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            server.run(
                ["-p", "no:cacheprovider", "-p", "no:timeout"], tmp_path, dict(os.environ), timeout=1.0
            )
        left = [
            proc
            for proc in psutil.process_iter(["cmdline", "status"])
            if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE
        ]
        assert not left, "the run's own child is killed with it"
        (tmp_path / "test_hang.py").write_text("def test_quick():\n    pass\n", encoding="utf-8")
        assert server.run(["-p", "no:cacheprovider"], tmp_path, dict(os.environ), 600) == pytest.ExitCode.OK
    finally:
        server.close()


def test_the_fallback_is_a_fresh_interpreter_where_runs_cannot_be_forked(
    probe_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMDIRECT_TESTS_NO_FORK", "1")
    started: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        started.append(list(args))
        return real_run(args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "run", recording_run)
    env = {**os.environ, "PYTHONPATH": str(probe_project)}
    assert (
        run_pytest(["-p", "no:cacheprovider", "-q"], probe_project, env, 600) == pytest.ExitCode.TESTS_FAILED
    )
    assert started == [[sys.executable, "-mpytest", "-p", "no:cacheprovider", "-q"]]
