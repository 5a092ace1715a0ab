"""The run machinery registered by the plugin: run directory, services, report, terminal output."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gemdirect.pipeline_tests import is_pipeline_test
from pytest_gemdirect.progress import ProgressDisplay
from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.settings import SPECS, Settings, describe_targets
from pytest_gemdirect.summary import (
    STAGE_TITLES,
    STAGES,
    SYMBOLS,
    RunSummary,
    failures,
    scene_ids,
    tests_failed_reason,
    verdict,
    write_summary_files,
)

if TYPE_CHECKING:  # the stage machinery (HTTP clients, Pillow, psutil) loads only when a run needs it
    from pytest_gemdirect.services import Services
    from pytest_gemdirect.stages import Stages

RUN_KEY = pytest.StashKey["GemdirectRun"]()
WORKER_INPUT_KEY = "gemdirect"
# Order of the pipeline's test nodes: each scene's retrieval right after its generation,
# so the scene's deadline covers queue to frames on disk.
_STAGE_RANK = {name: rank for rank, name in enumerate(STAGES)}
_PIPELINE_FIXTURE = "gemdirect_check"
_SCHEDULED_DISTS = ("load", "worksteal", "loadgroup")  # xdist modes our scheduler takes over


def run_of(config: pytest.Config) -> GemdirectRun:
    return config.stash[RUN_KEY]


def selects_pipeline(markexpr: str) -> bool:
    """Whether a ``-m`` expression selects any pipeline stage (so the run gets its report)."""
    tokens = re.findall(r"\(|\)|[^\s()]+", markexpr or "")
    if not tokens:
        return False
    for stage in STAGES:
        names = {"e2e", stage}
        words = [t if t in ("(", ")", "and", "or", "not") else str(t.split("(")[0] in names) for t in tokens]
        try:
            if eval(" ".join(words), {"__builtins__": {}}, {}):  # only True/False/and/or/not/parens
                return True
        except SyntaxError:
            return False
    return False


class GemdirectRun:
    """One pytest session's run: created in pytest_configure, its work started on first use."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.is_worker = hasattr(config, "workerinput")
        handed = config.workerinput.get(WORKER_INPUT_KEY) if self.is_worker else None  # type: ignore[attr-defined]
        self.handed: dict[str, Any] | None = handed
        self._stages: Stages | None = None
        self._previous_sigterm: Any = None
        self.baseline: dict[str, Any] | None = None
        if settings.baseline is not None:
            from pytest_gemdirect.report import BaselineError, load_baseline

            try:
                self.baseline = load_baseline(settings.baseline)
            except BaselineError as exc:
                raise pytest.UsageError(f"pytest-gemdirect: invalid value for baseline: {exc}") from None
        self._for_workers: dict[str, Any] | None = None  # xdist controller: what every worker gets
        self._crashed: list[str] = []  # xdist controller: pipeline tests whose worker died
        self._failed_tests: list[str] = []  # pipeline tests pytest counted as failed (any phase)
        self.run: RunDirectory | None = None
        self.services: Services | None = None
        self.summary: RunSummary | None = None
        config.stash[RUN_KEY] = self
        self.xdist_note = self._keep_pipeline_on_one_worker()
        if handed:
            self.run = RunDirectory(Path(handed["run_dir"]), handed["run_id"])
        elif config.getoption("collectonly", False):
            pass  # nothing will run: no run directory, no report
        elif selects_pipeline(config.getoption("markexpr", "")) or settings.run_dir is not None:
            self._start_run_dir()
            self._wire_html_report()
            self._treat_sigterm_as_interrupt()

    def _keep_pipeline_on_one_worker(self) -> str | None:
        """Under pytest-xdist, the pipeline's stages must share one worker: they share one run.

        With ``--dist load`` (what ``-n`` implies), ``worksteal`` or ``loadgroup`` our scheduler
        (pytest_xdist_make_scheduler) sends them as one unit; ``loadscope`` and ``loadfile`` keep a
        module's tests together anyway.
        """
        if self.is_worker or not self.config.getoption("numprocesses", None):
            return None
        dist = self.config.getoption("dist", "no")
        if dist in _SCHEDULED_DISTS:
            return f"gemdirect: the pipeline's stages run together on one worker (--dist {dist})"
        if dist == "each":
            raise pytest.UsageError(
                "pytest-gemdirect: --dist each would run the whole pipeline once per worker;"
                " use -n N with --dist load or loadgroup"
            )
        return None

    # --- lazily started state ------------------------------------------------------------

    def _start_run_dir(self) -> RunDirectory:
        if self.run is None:
            self.run = RunDirectory.create(logs_dir=self.settings.logs_dir, run_dir=self.settings.run_dir)
        return self.run

    def _wire_html_report(self) -> None:
        """report.html in the run directory unless the user chose their own --html."""
        if self.is_worker or not hasattr(self.config.option, "htmlpath") or self.run is None:
            return
        if not self.config.option.htmlpath:
            self.config.option.htmlpath = str(self.run.report_html)
            self.config.option.self_contained_html = True

    def scene_ids(self) -> list[str]:
        return scene_ids(self.settings.scenes)

    def suite_names(self) -> list[str]:
        from pytest_gemdirect.suites import parse_suite_specs

        try:
            return [spec.name for spec in parse_suite_specs(list(self.settings.suites))]
        except ValueError as exc:
            raise pytest.UsageError(f"pytest-gemdirect: invalid value for suite: {exc}") from None

    def _services(self) -> Services:
        if self.services is None:
            from pytest_gemdirect.services import Services

            self.services = Services(
                self.settings,
                self._start_run_dir().root,
                handed=self.handed.get("backends") if self.handed else None,
                handed_error=self.handed.get("error") if self.handed else None,
            )
        return self.services

    def stages(self) -> Stages:
        """The run's stage work; the process that calls this owns run-summary.json."""
        if self._stages is None:
            from pytest_gemdirect.stages import Stages

            run = self._start_run_dir()
            self.summary = RunSummary(
                run,
                settings=self.settings.public(),
                sources=dict(self.settings.sources),
                scene_ids=self.scene_ids(),
            )
            self._stages = Stages(
                self.settings,
                run,
                self.summary,
                self._services(),
                suite_cwd=self.settings.suite_cwd or self.config.rootpath,
                progress=self._progress_display(),
            )
        return self._stages

    def _progress_display(self) -> ProgressDisplay | None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return None

        def write(text: str) -> None:
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write(text, flush=True)
            else:
                reporter.write(text, flush=True)

        return ProgressDisplay(write, in_place=reporter.isatty)

    # --- hooks ---------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = [f"gemdirect {name}: {target}" for name, target in describe_targets(self.settings).items()]
        changed = [
            f"{spec.name}={self.settings.public()[spec.name]} ({self.settings.sources[spec.name]})"
            for spec in SPECS
            if self.settings.sources[spec.name] != "default"
        ]
        queue = ", ".join(
            f"{name}={self.settings.public()[name]}"
            for name in ("scenes", "story_mode", "scene_max_wait", "completion_grace", "history_max_attempts")
        )
        lines.append(f"gemdirect settings: {queue}")
        if changed:
            lines.append("gemdirect set: " + "; ".join(changed))
        if self.run is not None:
            lines.append(f"gemdirect run directory: {self.run.root}")
        if self.xdist_note:
            lines.append(self.xdist_note)
        return lines

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """xdist controller: the pipeline's tests as one unit for one worker (xdist_scheduling)."""
        if config.getoption("dist", "no") not in _SCHEDULED_DISTS:
            return None
        from pytest_gemdirect.xdist_scheduling import PipelineScheduling

        return PipelineScheduling(config, log)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        pipeline = [
            i for i, item in enumerate(items) if _PIPELINE_FIXTURE in getattr(item, "fixturenames", ())
        ]
        ordered = sorted((items[i] for i in pipeline), key=self._order_key)
        for slot, item in zip(pipeline, ordered, strict=True):
            items[slot] = item
        self._add_timeout_backstop(ordered)

    def _order_key(self, item: pytest.Item) -> tuple[int, int, int]:
        stage = next((m.name for m in item.iter_markers() if m.name in _STAGE_RANK), "summary")
        params = getattr(item, "callspec", None)
        scene = params.params.get("gemdirect_scene") if params else None
        if stage in ("svd", "frames") and scene:
            return (_STAGE_RANK["svd"], int(scene.split("-")[1]), _STAGE_RANK[stage])
        return (_STAGE_RANK[stage], 0, 0)

    def _add_timeout_backstop(self, items: list[pytest.Item]) -> None:
        """pytest-timeout as an outer backstop above every inner deadline; a user's own timeout stands."""
        user_timeout = (
            self.config.getoption("timeout", None)
            or os.environ.get("PYTEST_TIMEOUT")
            or _ini(self.config, "timeout")
        )
        if user_timeout:
            return
        s = self.settings
        whole_run = (
            120.0
            + 6 * s.llm_timeout
            + s.scenes * (1 + s.max_scene_retries) * (s.scene_max_wait + s.completion_grace)
            + len(s.suites) * s.suite_timeout
        )
        for item in items:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(whole_run))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist controller: boot the embedded services once and hand their URLs to every worker."""
        from pytest_gemdirect.services import ServiceError

        services, run = self._services(), self._start_run_dir()
        if self._for_workers is None:
            try:
                self._for_workers = {"backends": services.boot_all(), "error": None}
            except ServiceError as exc:  # each worker's stage shows it, instead of xdist crashing
                self._for_workers = {"backends": {}, "error": str(exc)}
        node.workerinput[WORKER_INPUT_KEY] = {
            "run_dir": str(run.root),
            "run_id": run.run_id,
            **self._for_workers,
        }

    def summary_data(self) -> dict[str, Any] | None:
        """The run's summary: this process's own, or (xdist controller) what the worker wrote."""
        if self.summary is not None:
            return self.summary.data
        if self.run is None or self.is_worker:
            return None
        try:
            data = json.loads(self.run.summary_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str]) -> None:
        data = self.summary_data()
        if data is not None and self.run is not None:
            html_dir = Path(self.config.option.htmlpath).resolve().parent
            from pytest_gemdirect.report import render_overview

            prefix.append(render_overview(data, self.run.root, baseline=self.baseline, link_base=html_dir))

    def write_report(self) -> None:
        """The run's report.html as it stands now, so a run killed half-way still leaves one.

        Only the controller writes it; under xdist it reads the summary the worker keeps.
        """
        data = self.summary_data()
        if data is None or self.run is None or self.is_worker:
            return
        from pytest_gemdirect import report

        report.write_report(self.run.report_html, data, self.run.root, baseline=self.baseline)

    def pytest_runtest_logfinish(self) -> None:
        self.write_report()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and is_pipeline_test(report.nodeid) and report.nodeid not in self._failed_tests:
            self._failed_tests.append(report.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.summary is not None:  # this process ran the stages (a worker under xdist)
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
            self.summary.finish(
                "interrupted" if interrupted else "passed",
                "interrupted" if interrupted else None,
                failed_tests=self._failed_tests,
            )
        elif not self.is_worker:
            self._settle_workers_summary()
        self.write_report()  # pytest-html, running after us, writes its own over it when it owns the path
        if self.services is not None:
            self.services.close()

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> bool | None:
        """pytest-timeout's thread method (the only one on Windows) ends the process with os._exit.

        For the pipeline's tests we run that timer ourselves, so that before the process ends the
        summary says which test ran out of time, the report is written and the services are ended.
        """
        in_main = threading.current_thread() is threading.main_thread()
        if (settings.method == "signal" and in_main) or _PIPELINE_FIXTURE not in getattr(
            item, "fixturenames", ()
        ):
            return None  # pytest-timeout's own way: a failure raised in the test, the run goes on
        timer = threading.Timer(settings.timeout, self._end_on_timeout, (item, settings))
        timer.daemon = True
        timer.name = f"gemdirect timeout {item.nodeid}"

        def cancel() -> None:
            timer.cancel()
            timer.join()

        item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
        timer.start()
        return True

    def _end_on_timeout(self, item: pytest.Item, settings: Any) -> None:
        from pytest_timeout import timeout_timer

        try:
            if self.summary is not None and self._stages is not None:
                limit = f"{settings.timeout:g} s (--timeout-method thread)"
                self._stages.pipeline.interrupt_running(f"pytest-timeout ended the process after {limit}")
                self.summary.finish(
                    "failed", f"pytest-timeout ended the process: {item.nodeid} ran past {limit}"
                )
            self.write_report()
            if self.services is not None:
                self.services.close()
        finally:
            timeout_timer(item, settings)  # dumps the threads' stacks, then os._exit(1)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """xdist controller: a worker died in this test; if it was the pipeline's, the summary says so."""
        if is_pipeline_test(crashitem):
            self._crashed.append(crashitem)

    def _settle_workers_summary(self) -> None:
        """xdist controller: the worker's summary, corrected where a worker died under it.

        A dead worker leaves the summary "running"; a replacement worker re-runs what the later
        stages need and may well pass, but pytest counts the crash as a failure, and so must we.
        """
        data = self.summary_data()
        if self.run is None or data is None:
            return
        reasons = []
        if self._crashed:
            reasons.append(f"a pytest-xdist worker crashed while running {', '.join(self._crashed)}")
        if data.get("status") == "running":
            reasons.append("the pytest-xdist worker running the pipeline ended before the run finished")
        elsewhere = [test for test in self._failed_tests if test not in self._crashed]
        if data.get("status") == "passed" and elsewhere:
            reasons.append(tests_failed_reason(elsewhere))
        if not reasons:
            return
        data["status"] = "failed"
        data["status_reason"] = "; ".join(reasons)
        write_summary_files(self.run, data)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        data = self.summary_data()
        if self.run is None or self.is_worker:
            return
        terminalreporter.write_sep("=", "gemdirect", bold=True)
        if data is None:
            terminalreporter.write_line(f"gemdirect: no pipeline stage ran; nothing in {self.run.root}")
            return
        for stage in data["stages"]:
            terminalreporter.write_line(
                f"{SYMBOLS.get(stage['status'], '?')} {STAGE_TITLES[stage['name']]:<16} {stage['status']}"
            )
        for failure in failures(data):
            terminalreporter.write_line(f"  {failure['key']}: {failure['message']}")
        terminalreporter.write_line(f"gemdirect verdict: {verdict(data)}")
        terminalreporter.write_line(f"gemdirect run directory: {self.run.root}")
        if self.config.getoption("htmlpath", None):
            terminalreporter.write_line(f"gemdirect report: {self.config.option.htmlpath}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.services is not None:
            self.services.close()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

    def _treat_sigterm_as_interrupt(self) -> None:
        """A CI runner's SIGTERM ends the run like Ctrl-C: summary marked interrupted, services ended."""
        if self.is_worker or threading.current_thread() is not threading.main_thread():
            return

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        self._previous_sigterm = signal.signal(signal.SIGTERM, interrupt)


def _ini(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except ValueError:
        return None
