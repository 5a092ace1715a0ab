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
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.summary import RunSummary, scene_ids, settle_workers_summary

TIMEOUT_MARK = "from pytest-timeout"  # in the failure pytest-timeout's signal method raises

if TYPE_CHECKING:  # the stage machinery (HTTP clients, Pillow, psutil) loads only when a stage runs
    from pytest_gemdirect.report_writer import ReportWriter
    from pytest_gemdirect.services import Services
    from pytest_gemdirect.stages import ProgressSink, Stages


def interrupting_signals(signals: object = signal) -> tuple[int, ...]:
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
    """The run of one pytest process; its hooks keep the summary and the report up to date.

    What it works with is given at construction: where a worker's hand-over comes from, where
    progress is shown and who is told when the first stage starts. What it learns on the way
    (the collected tests, xdist's notes and crashes) it is told through methods.
    """

    def __init__(
        self,
        config: pytest.Config,
        settings: Settings,
        *,
        baseline: dict[str, Any] | None,
        handoff: Callable[[], Handoff | None] | None = None,
        progress: ProgressSink | None = None,
        on_start: Callable[[Run], None] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.baseline = baseline
        self.is_worker = hasattr(config, "workerinput")
        self._handoff = handoff or (lambda: None)  # a worker's: the controller's directory and services
        self._progress = progress
        self._on_start = on_start  # called once, when the first stage starts
        self._directory: RunDirectory | None = None
        self._services: Services | None = None
        self._summary: RunSummary | None = None
        self._stages: Stages | None = None
        self._failed_tests: list[str] = []  # pipeline tests pytest counted as failed (any phase)
        self._selected_stages: set[str] = set()  # stages whose own tests were selected in this process
        self._pipeline_tests: set[str] = set()  # node ids of the tests that work on the run, as collected
        self._own_checks: dict[str, str | None] = {}  # the user's own checks among them: node id -> scene
        self._crashed_tests: list[str] = []  # xdist controller: pipeline tests whose worker died
        self._report_problem: str | None = None  # the last rewrite of report.html failed: why
        self._report_writer: ReportWriter | None = None  # renders report.html, made on first use
        self._notes: list[str] = []  # shown in the terminal summary (e.g. how xdist scheduled it)
        self._late_timeouts: list[str] = []  # a user's --timeout that fired after its test's outcome
        self._previous_handlers: dict[int, Any] = {}

    # --- what others read and tell -------------------------------------------------------------

    @property
    def directory(self) -> RunDirectory | None:
        """The run directory, once made (None before the first stage starts)."""
        return self._directory

    @property
    def report_problem(self) -> str | None:
        """Why the last rewrite of report.html failed (None when it was written)."""
        return self._report_problem

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self._notes)

    def note(self, text: str) -> None:
        """A line for the terminal summary (e.g. how xdist scheduled the pipeline)."""
        self._notes.append(text)

    def collected(
        self,
        nodeids: Iterable[str],
        stages: Iterable[str],
        *,
        own_checks: Iterable[tuple[str, str | None]] = (),
    ) -> None:
        """The pipeline's tests collected in this process, the stages whose own tests are among them,
        and the user's own checks (node id, scene) among them."""
        self._pipeline_tests.update(nodeids)
        self._selected_stages.update(stages)
        self._own_checks.update(own_checks)

    def worker_crashed(self, nodeid: str) -> None:
        """xdist controller: a pipeline test's worker died under it (the run fails, whatever follows)."""
        self._crashed_tests.append(nodeid)

    # --- started on first use ----------------------------------------------------------------

    def ensure_directory(self) -> RunDirectory:
        """The run directory, made now if it does not exist yet."""
        if self._directory is None:
            handed = self._handoff()
            if handed is not None:
                self._directory = RunDirectory(handed.run_dir, handed.run_id)
            else:
                self._directory = RunDirectory.create(
                    logs_dir=self.settings.logs_dir, run_dir=self.settings.run_dir
                )
                if self.settings.run_dir is None:
                    from pytest_gemdirect.retention import prune_runs

                    root = self._directory.root
                    prune_runs(root.parent, self.settings.keep_runs, root)
        return self._directory

    def ensure_services(self) -> Services:
        if self._services is None:
            from pytest_gemdirect.services import Services

            handed = self._handoff()
            self._services = Services(
                self.settings,
                self.ensure_directory().root,
                handed=handed.backends if handed else None,
                handed_error=handed.error if handed else None,
            )
        return self._services

    def stages(self) -> Stages:
        """The run's stage work; the process that calls this owns run-summary.json."""
        if self._stages is None:
            from pytest_gemdirect.stages import StageContext, Stages

            directory = self.ensure_directory()
            self._summary = RunSummary(
                directory,
                settings=self.settings.public(),
                sources=dict(self.settings.sources),
                scene_ids=scene_ids(self.settings.scenes),
            )
            context = StageContext(
                self.settings,
                directory,
                self._summary,
                self.ensure_services(),
                suite_cwd=self.settings.suite_cwd or self.config.rootpath,
                progress=self._progress,
            )
            self._stages = Stages(context)
            self.treat_signals_as_interrupt()
            self.announce_start()
        return self._stages

    def announce_start(self) -> None:
        """Call the ``on_start`` hook once: when the first stage starts, or (xdist controller)
        once the services are booted for the workers."""
        hook, self._on_start = self._on_start, None
        if hook is not None:
            hook(self)

    # --- what the run has recorded -------------------------------------------------------------

    def summary_data(self) -> dict[str, Any] | None:
        """The run's summary: this process's own, or (xdist controller) what the worker wrote."""
        if self._summary is not None:
            return self._summary.data
        if self._directory is None or self.is_worker:
            return None
        try:
            data = json.loads(self._directory.summary_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_report(self, *, only_if_changed: bool = False) -> None:
        """report.html as the run stands now, so a run killed half-way still leaves one.

        The only writer of report.html; under xdist the controller writes it from the summary
        the worker keeps. After a test (``only_if_changed``) it is rendered in the background
        (report_writer.py), off the critical path, and only when the summary changed since; at the
        run's end and when the process is ended, now.
        """
        data = self.summary_data()
        if data is None or self._directory is None or self.is_worker:
            return
        summary = self._summary  # its own snapshot is taken under its lock: scene threads write it
        snapshot = summary.snapshot() if summary is not None else json.dumps(data, sort_keys=True)
        if self._report_writer is None:
            from pytest_gemdirect.report_writer import ReportWriter

            self._report_writer = ReportWriter(self._render_report)
        if only_if_changed:
            self._report_writer.request(snapshot)
        else:
            self._report_writer.flush(data, snapshot)

    def _render_report(self, data: dict[str, Any]) -> None:
        from pytest_gemdirect import report

        directory = self._directory
        assert directory is not None
        try:
            report.write_report(directory.report_html, data, directory.root, baseline=self.baseline)
        except OSError as exc:  # held by a sync client or a virus scanner: the next rewrite may land
            self._report_problem = f"report.html could not be written: {exc}"
        else:
            self._report_problem = None

    def end_now(self, reason: str) -> None:
        """The process is about to end (pytest-timeout's thread method): close the run first."""
        if self._summary is not None and self._stages is not None:
            self._stages.interrupt_running(reason)
            self._summary.finish("failed", reason)
        self.write_report()
        self.close_services()

    def close_services(self) -> None:
        if self._services is not None:
            self._services.close()

    # --- hooks ---------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_gemdirect.pipeline_tests import is_pipeline_test

        on_run = report.nodeid in self._pipeline_tests or is_pipeline_test(report.nodeid)
        if report.failed and on_run and report.nodeid not in self._failed_tests:
            self._failed_tests.append(report.nodeid)
        if report.nodeid in self._own_checks and self._summary is not None:
            from pytest_gemdirect.pytest_plugin.checks import check_outcome

            outcome = check_outcome(report)
            if outcome is not None:
                test = report.nodeid.rpartition("::")[2]
                self._summary.record_check(test, self._own_checks[report.nodeid], *outcome)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        """report.html after each test, outside every test's timer: this wrapper is outermost, so
        pytest-timeout (signal method) has cancelled the user's ``--timeout`` before it writes.

        A timeout that fired in the test's bookkeeping (its report hooks) after its outcome was
        logged is recorded instead of ending the session in an INTERNALERROR."""
        try:
            outcome = yield
        except pytest.fail.Exception as exc:
            if TIMEOUT_MARK not in str(exc):
                raise
            self._late_timeouts.append(f"{item.nodeid}: {exc} (it fired after the test had ended)")
            if self._summary is not None:
                self._summary.warn(f"pytest-timeout: {self._late_timeouts[-1]}")
            outcome = True
        self.write_report(only_if_changed=True)
        return outcome

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._summary is not None:  # this process ran the stages (a worker under xdist)
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
            if interrupted and self._stages is not None:  # scenes at work in their threads stop too
                self._stages.interrupt_running("the run was interrupted")
            from pytest_gemdirect.appcontract import warnings_for

            for warning in warnings_for(self._summary.data):
                self._summary.warn(warning)
            self._summary.finish(
                "interrupted" if interrupted else "passed",
                "cut short by Ctrl-C or a signal" if interrupted else None,
                failed_tests=self._failed_tests,
                selected_stages=self._selected_stages,
            )
        elif not self.is_worker and self._directory is not None:
            data = self.summary_data()
            if data is None and exitstatus == pytest.ExitCode.INTERRUPTED:
                self._interrupted_before_any_stage(self._directory)
            settle_workers_summary(self._directory, data, self._crashed_tests, self._failed_tests)
        self.write_report()
        if self._report_writer is not None:
            self._report_writer.close()  # its waits are bounded: one that ran out is said here
            for problem in self._report_writer.problems:
                self.note(f"gemdirect: {problem}")
        self.close_services()
        data = self.summary_data()
        if data is not None and not self.is_worker and self._directory is not None:
            self._publish_latest(self._directory)
            from pytest_gemdirect.step_summary import append_step_summary

            report = self._directory.report_html
            append_step_summary(data, report if report.is_file() else None)

    def _publish_latest(self, directory: RunDirectory) -> None:
        """``--publish-latest=APP_DIR``: the app's viewer shows this run (the terminal says so)."""
        if self.settings.publish_latest is None:
            return
        from pytest_gemdirect.appcontract import publish_latest

        try:
            target = publish_latest(directory.root, self.settings.publish_latest)
        except OSError as exc:
            self.note(f"gemdirect: --publish-latest: artifact-metadata.json was not published: {exc}")
        else:
            self.note(f"gemdirect published: {target}")

    def _interrupted_before_any_stage(self, directory: RunDirectory) -> None:
        """xdist controller, Ctrl-C while it booted the services: the run directory says interrupted."""
        self._summary = RunSummary(
            directory,
            settings=self.settings.public(),
            sources=dict(self.settings.sources),
            scene_ids=scene_ids(self.settings.scenes),
        )
        self._summary.finish(
            "interrupted", "the run was interrupted before any stage ran (services starting)"
        )

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str]) -> None:
        """With the user's own ``--html``, pytest-html's report carries the run's overview too."""
        data = self.summary_data()
        htmlpath = self.config.getoption("htmlpath", None)
        if data is not None and self._directory is not None and htmlpath:
            from pytest_gemdirect.report import render_overview

            link_base = Path(htmlpath).resolve().parent
            prefix.append(
                render_overview(data, self._directory.root, baseline=self.baseline, link_base=link_base)
            )

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.close_services()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)

    def treat_signals_as_interrupt(self) -> None:
        """SIGTERM (a CI runner) and SIGBREAK (Windows: Ctrl-Break, console closed) act as Ctrl-C."""
        if self.is_worker or threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for signum in interrupting_signals():
            self._previous_handlers[signum] = signal.signal(signum, interrupt)
