"""One pytest session's pipeline run: run directory, services, stages and summary.

The plugin registers a :class:`Run` only once pipeline tests are collected (or, on the xdist
controller, once a worker reports them). Nothing is created until the first stage starts: a run
that collects the pipeline but never runs it (``--collect-only``, everything deselected) leaves
nothing behind.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.summary import RunSummary, scene_ids

if TYPE_CHECKING:  # the stage machinery (HTTP clients, Pillow, psutil) loads only when a stage runs
    from pytest_gemdirect.services import Services
    from pytest_gemdirect.stages import ProgressSink, Stages


def interrupting_signals(signals: Any = signal) -> tuple[int, ...]:
    """Signals that end a run like Ctrl-C: a CI runner's SIGTERM; on Windows SIGBREAK, which is
    Ctrl-Break and also what closing the console window delivers (Windows never sends SIGTERM)."""
    return tuple(getattr(signals, name) for name in ("SIGTERM", "SIGBREAK") if hasattr(signals, name))


@dataclass(frozen=True)
class Handoff:
    """What an xdist worker gets from the controller: the run directory and the services it booted."""

    run_dir: Path
    run_id: str
    backends: dict[str, Any]
    error: str | None  # the controller could not boot the services: each stage shows it

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "run_id": self.run_id,
            "backends": self.backends,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Handoff:
        return cls(Path(data["run_dir"]), str(data["run_id"]), dict(data["backends"]), data.get("error"))


class Run:
    """The run of one pytest process; its hooks keep the summary and the report up to date."""

    def __init__(self, config: pytest.Config, settings: Settings, *, baseline: dict[str, Any] | None) -> None:
        self.config = config
        self.settings = settings
        self.baseline = baseline
        self.is_worker = hasattr(config, "workerinput")
        self.handoff: Callable[[], Handoff | None] = lambda: None  # set by xdist support on a worker
        self.directory: RunDirectory | None = None
        self.services: Services | None = None
        self.summary: RunSummary | None = None
        self._stages: Stages | None = None
        self.progress: ProgressSink | None = None  # set by the terminal part
        self.on_start: list[Callable[[Run], None]] = []  # called once, when the first stage starts
        self.failed_tests: list[str] = []  # pipeline tests pytest counted as failed (any phase)
        self.selected_stages: set[str] = set()  # stages whose own tests were selected in this process
        self.pipeline_tests: set[str] = set()  # node ids of the tests that work on the run, as collected here
        self.crashed_tests: list[str] = []  # xdist controller: pipeline tests whose worker died
        self.report_problem: str | None = None  # the last rewrite of report.html failed: why
        self._reported: str | None = None  # the summary as report.html last showed it
        self.notes: list[str] = []  # shown in the terminal summary (e.g. how xdist scheduled it)
        self._previous_handlers: dict[int, Any] = {}

    # --- started on first use ----------------------------------------------------------------

    def ensure_directory(self) -> RunDirectory:
        """The run directory, made now if it does not exist yet."""
        if self.directory is None:
            handed = self.handoff()
            if handed is not None:
                self.directory = RunDirectory(handed.run_dir, handed.run_id)
            else:
                self.directory = RunDirectory.create(
                    logs_dir=self.settings.logs_dir, run_dir=self.settings.run_dir
                )
                if self.settings.run_dir is None:
                    from pytest_gemdirect.retention import prune_runs

                    prune_runs(self.directory.root.parent, self.settings.keep_runs, self.directory.root)
        return self.directory

    def ensure_services(self) -> Services:
        if self.services is None:
            from pytest_gemdirect.services import Services

            handed = self.handoff()
            self.services = Services(
                self.settings,
                self.ensure_directory().root,
                handed=handed.backends if handed else None,
                handed_error=handed.error if handed else None,
            )
        return self.services

    def stages(self) -> Stages:
        """The run's stage work; the process that calls this owns run-summary.json."""
        if self._stages is None:
            from pytest_gemdirect.stages import StageContext, Stages

            directory = self.ensure_directory()
            self.summary = RunSummary(
                directory,
                settings=self.settings.public(),
                sources=dict(self.settings.sources),
                scene_ids=scene_ids(self.settings.scenes),
            )
            context = StageContext(
                self.settings,
                directory,
                self.summary,
                self.ensure_services(),
                suite_cwd=self.settings.suite_cwd or self.config.rootpath,
                progress=self.progress,
            )
            self._stages = Stages(context)
            self.treat_signals_as_interrupt()
            self.announce_start()
        return self._stages

    def announce_start(self) -> None:
        """Call the ``on_start`` hooks once: when the first stage starts, or (xdist controller)
        once the services are booted for the workers."""
        hooks, self.on_start = self.on_start, []
        for started in hooks:
            started(self)

    # --- what the run has recorded -------------------------------------------------------------

    def summary_data(self) -> dict[str, Any] | None:
        """The run's summary: this process's own, or (xdist controller) what the worker wrote."""
        if self.summary is not None:
            return self.summary.data
        if self.directory is None or self.is_worker:
            return None
        try:
            data = json.loads(self.directory.summary_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_report(self, *, only_if_changed: bool = False) -> None:
        """report.html as the run stands now, so a run killed half-way still leaves one.

        The only writer of report.html; under xdist the controller writes it from the summary
        the worker keeps. After a test (``only_if_changed``) it is left as it is when the summary
        has not changed since it was written: rendering it is the dearest thing a test ends with.
        """
        data = self.summary_data()
        if data is None or self.directory is None or self.is_worker:
            return
        seen = json.dumps(data, sort_keys=True, default=str)
        if only_if_changed and seen == self._reported:
            return
        self._reported = seen
        from pytest_gemdirect import report

        try:
            report.write_report(self.directory.report_html, data, self.directory.root, baseline=self.baseline)
        except OSError as exc:  # held by a sync client or a virus scanner: the next rewrite may land
            self.report_problem = f"report.html could not be written: {exc}"
        else:
            self.report_problem = None

    def end_now(self, reason: str) -> None:
        """The process is about to end (pytest-timeout's thread method): close the run first."""
        if self.summary is not None and self._stages is not None:
            self._stages.interrupt_running(reason)
            self.summary.finish("failed", reason)
        self.write_report()
        self.close_services()

    def close_services(self) -> None:
        if self.services is not None:
            self.services.close()

    # --- hooks ---------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_gemdirect.pipeline_tests import is_pipeline_test

        on_run = report.nodeid in self.pipeline_tests or is_pipeline_test(report.nodeid)
        if report.failed and on_run and report.nodeid not in self.failed_tests:
            self.failed_tests.append(report.nodeid)

    def pytest_runtest_logfinish(self) -> None:
        self.write_report(only_if_changed=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.summary is not None:  # this process ran the stages (a worker under xdist)
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
            if interrupted and self._stages is not None:  # scenes at work in their threads stop too
                self._stages.interrupt_running("the run was interrupted")
            self.summary.finish(
                "interrupted" if interrupted else "passed",
                "cut short by Ctrl-C or a signal" if interrupted else None,
                failed_tests=self.failed_tests,
                selected_stages=self.selected_stages,
            )
        elif not self.is_worker and self.directory is not None:
            from pytest_gemdirect.xdist_support import settle_workers_summary

            data = self.summary_data()
            if data is None and exitstatus == pytest.ExitCode.INTERRUPTED:
                self._interrupted_before_any_stage(self.directory)
            settle_workers_summary(self.directory, data, self.crashed_tests, self.failed_tests)
        self.write_report()
        self.close_services()
        data = self.summary_data()
        if data is not None and not self.is_worker and self.directory is not None:
            from pytest_gemdirect.step_summary import append_step_summary

            report = self.directory.report_html
            append_step_summary(data, report if report.is_file() else None)

    def _interrupted_before_any_stage(self, directory: RunDirectory) -> None:
        """xdist controller, Ctrl-C while it booted the services: the run directory says interrupted."""
        self.summary = RunSummary(
            directory,
            settings=self.settings.public(),
            sources=dict(self.settings.sources),
            scene_ids=scene_ids(self.settings.scenes),
        )
        self.summary.finish("interrupted", "the run was interrupted before any stage ran (services starting)")

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str]) -> None:
        """With the user's own ``--html``, pytest-html's report carries the run's overview too."""
        data = self.summary_data()
        htmlpath = self.config.getoption("htmlpath", None)
        if data is not None and self.directory is not None and htmlpath:
            from pytest_gemdirect.report import render_overview

            link_base = Path(htmlpath).resolve().parent
            prefix.append(
                render_overview(data, self.directory.root, baseline=self.baseline, link_base=link_base)
            )

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.close_services()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    def treat_signals_as_interrupt(self) -> None:
        """SIGTERM (a CI runner) and SIGBREAK (Windows: Ctrl-Break, console closed) act as Ctrl-C."""
        if self.is_worker or threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for signum in interrupting_signals():
            self._previous_handlers[signum] = signal.signal(signum, interrupt)
