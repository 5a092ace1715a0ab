"""pytest-timeout as the outer backstop (design §4), through its public hooks and marker only.

The inner deadlines (scene max wait, grace, polls) always fire first; pytest-timeout is set above
them all. Its thread method (the only one on Windows) ends the process with ``os._exit``, which
would lose the summary and the report: for the pipeline's tests this module runs that timer itself
(``pytest_timeout_set_timer`` / ``pytest_timeout_cancel_timer``), closes the run, and only then
dumps the threads' stacks and ends the process as pytest-timeout would.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

import pytest

from pytest_gemdirect.pipeline_tests import is_pipeline_item
from pytest_gemdirect.pytest_plugin.run import Run


def user_timeout(config: pytest.Config) -> Any:
    """The user's own pytest-timeout setting, from any of its three places, or None."""
    try:
        ini = config.getini("timeout")
    except ValueError:
        ini = None
    return config.getoption("timeout", None) or os.environ.get("PYTEST_TIMEOUT") or ini or None


def backstop_seconds(run: Run) -> float:
    """A limit above every inner deadline of the whole run (a user's own timeout stands instead)."""
    s = run.settings
    return float(
        120.0
        + 6 * s.llm_timeout
        + s.scenes * (1 + s.max_scene_retries) * (s.scene_max_wait + s.completion_grace)
        + len(s.suites) * s.suite_timeout
        + s.server_return_wait
        + s.max_server_restarts * s.comfyui_boot_timeout  # a server that died is waited for or relaunched
    )


class TimeoutSupport:
    """Registered with the run when pytest-timeout is installed."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._timers: dict[str, threading.Timer] = {}

    def add_backstop(self, items: list[pytest.Item]) -> None:
        """Mark each pipeline test with the backstop, unless the user set a timeout of their own."""
        if user_timeout(self.run.config):
            return
        limit = backstop_seconds(self.run)
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(limit))

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> bool | None:
        in_main = threading.current_thread() is threading.main_thread()
        if (settings.method == "signal" and in_main) or not is_pipeline_item(item):
            return None  # pytest-timeout's own way: a failure raised in the test, the run goes on
        timer = threading.Timer(settings.timeout, self._end_on_timeout, (item, settings))
        timer.daemon = True
        timer.name = f"gemdirect timeout {item.nodeid}"
        self._timers[item.nodeid] = timer
        timer.start()
        return True

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> bool | None:
        timer = self._timers.pop(item.nodeid, None)
        if timer is None:
            return None  # not ours: pytest-timeout cancels its own
        timer.cancel()
        timer.join()
        return True

    def _end_on_timeout(self, item: pytest.Item, settings: Any) -> None:
        limit = f"{settings.timeout:g} s (--timeout-method thread)"
        try:
            self.run.end_now(f"pytest-timeout ended the process: {item.nodeid} ran past {limit}")
        finally:
            _dump_stacks_and_exit(item)


def _dump_stacks_and_exit(item: pytest.Item) -> None:
    """What pytest-timeout's thread method does when it fires: the threads' stacks, then exit 1."""
    writer = item.config.get_terminal_writer()
    try:
        writer.sep("+", title="Timeout")
        current = threading.current_thread().ident
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != current:
                writer.sep("~", title=f"Stack of {names.get(ident, '<unknown>')} ({ident})")
                writer.write("".join(traceback.format_stack(frame)))
        writer.sep("+", title="Timeout")
    finally:
        writer.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
