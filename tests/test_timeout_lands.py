"""A user's ``--timeout`` (pytest-timeout's signal method) never lands in the harness's report
writing, and one that fires in a test's bookkeeping after its outcome does not end the session in
an INTERNALERROR: the run ends with a closed summary and a report (issue 22)."""

from __future__ import annotations

import signal

import pytest

from tests.outside import run_e2e, summary_of

# Where a timer that is still armed would fire: the moment the harness renders report.html, and
# (the user's own hook) the moment the story test's teardown is logged. pytest-timeout's signal
# method arms SIGALRM for each test and disarms it after; sending the signal while its handler is
# installed is exactly what its timer does when it runs out there.
LANDING = """
import os
import signal
import threading

import pytest_gemdirect.report as report

_render = report.write_report
LANDED = []


def _armed():
    return callable(signal.getsignal(signal.SIGALRM))


def write_report(*args, **kwargs):
    # a signal is delivered to the main thread only: a render in the report's own thread cannot be
    # where it lands; one in the main thread while a test's timer is armed could
    if _armed() and threading.current_thread() is threading.main_thread():
        LANDED.append("report")
        os.kill(os.getpid(), signal.SIGALRM)
    return _render(*args, **kwargs)


report.write_report = write_report


def pytest_runtest_logreport(report):
    if report.when == "teardown" and report.nodeid.endswith("test_story") and _armed():
        LANDED.append("logreport")
        os.kill(os.getpid(), signal.SIGALRM)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"landed: {LANDED}")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="pytest-timeout's signal method needs SIGALRM")
def test_the_users_timeout_gives_a_closed_summary_and_a_report(project: pytest.Pytester) -> None:
    project.makeconftest(LANDING)
    result, run_dir, _ = run_e2e(
        project, "--timeout=300", "--timeout-method=signal", "--story-mode", "fallback", "--scenes", "1"
    )
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output, output
    assert result.ret == pytest.ExitCode.OK, output
    # the report is written outside the test's timer (in the main thread) or in its own thread; the
    # one in the story's bookkeeping fired
    result.stdout.fnmatch_lines(["landed: ['logreport']"])
    data = summary_of(run_dir)
    assert data["status"] == "passed" and data["finished_at"]
    [late] = [w for w in data["warnings"] if w.startswith("pytest-timeout:")]
    assert "test_story" in late and "Timeout (>300.0s)" in late
    assert "pytest-timeout: " in (run_dir / "report.html").read_text(encoding="utf-8")
