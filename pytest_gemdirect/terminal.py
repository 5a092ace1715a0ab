"""What the run shows in the terminal: a line when the first stage starts, progress, the summary.

Nothing here is shown in a pytest run that runs no pipeline stage. Text that came from a server or
an LLM passes through :func:`visible` first, so it cannot move the cursor or retitle the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_gemdirect.policy import HEADER_NAMES
from pytest_gemdirect.run import Run
from pytest_gemdirect.settings import SPECS, describe_targets
from pytest_gemdirect.summary import STAGE_TITLES, SYMBOLS, failures, verdict
from pytest_gemdirect.text import visible

PLAIN_LINE_EVERY_S = 10.0
BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """Turns ``(scene, value, max)`` samples into a progress bar (terminal) or occasional lines (CI).

    On a terminal the bar has a line of its own below pytest's progress and is cleared when the
    scene ends; off a terminal one plain line is written now and then, each on a line of its own.
    """

    def __init__(
        self, write: Callable[[str], None], *, in_place: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._in_place = in_place
        self._clock = clock
        self._last_plain: float | None = None
        self._scene: str | None = None
        self._scene_started = 0.0
        self._first_value = 0
        self._width = 0

    def __call__(self, scene_id: str, value: int, maximum: int) -> None:
        now = self._clock()
        if scene_id != self._scene:
            self._scene, self._scene_started, self._first_value = scene_id, now, value
            self._last_plain = None
            if self._in_place:
                self._write("\n")  # a line of its own, below pytest's progress line
        text = self.describe(scene_id, value, maximum, now - self._scene_started)
        finished = value >= maximum
        if self._in_place:
            self._width = max(self._width, len(text))
            self._write("\r" + (" " * self._width if finished else text.ljust(self._width)) + "\r")
        elif finished or self._last_plain is None or now - self._last_plain >= PLAIN_LINE_EVERY_S:
            self._last_plain = now
            self._write(text + "\n")

    def describe(self, scene_id: str, value: int, maximum: int, elapsed: float) -> str:
        """``scene-001 [#####-----] step 5/20, 0:12 elapsed, ~0:36 left, 2.40 s/step``."""
        steps_done = max(value - self._first_value, 0)
        per_step = elapsed / steps_done if steps_done else None
        filled = int(BAR_WIDTH * value / maximum) if maximum > 0 else 0
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        parts = [f"step {value}/{maximum}", f"{_clock(elapsed)} elapsed"]
        if per_step is not None:
            parts += [f"~{_clock(per_step * max(maximum - value, 0))} left", f"{per_step:.2f} s/step"]
        return f"{scene_id} [{bar}] " + ", ".join(parts)


class Terminal:
    """The run's terminal output; registered with the run."""

    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.config = config
        self.run = run
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        self._reporter = reporter
        if reporter is not None:
            run.progress = ProgressDisplay(self._write, in_place=reporter.isatty)
        run.on_start.append(self._announce)

    def _write(self, text: str) -> None:
        if self._reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                self._reporter.write(text, flush=True)
        else:
            self._reporter.write(text, flush=True)

    def _announce(self, run: Run) -> None:
        """When the first stage starts: where the services come from and where the run is written."""
        if self._reporter is None or run.directory is None or run.is_worker:
            return
        lines = [f"gemdirect {name}: {target}" for name, target in describe_targets(run.settings).items()]
        lines.append(f"gemdirect run directory: {run.directory.root}")
        self._write("\n" + "\n".join(lines) + "\n")

    def settings_lines(self) -> list[str]:
        settings = self.run.settings
        public = settings.public()
        shown = ", ".join(f"{name}={public[name]}" for name in ("scenes", "story_mode", *HEADER_NAMES))
        lines = [f"gemdirect settings: {shown}"]
        changed = [
            f"{spec.name}={public[spec.name]} ({settings.sources[spec.name]})"
            for spec in SPECS
            if settings.sources[spec.name] != "default"
        ]
        if changed:
            lines.append("gemdirect set: " + "; ".join(changed))
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.run
        data = run.summary_data()
        if run.directory is None or run.is_worker:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "gemdirect", bold=True)
        for name, target in describe_targets(run.settings).items():
            write(f"gemdirect {name}: {target}")
        for line in self.settings_lines() + run.notes:
            write(line)
        if data is None:
            write(f"gemdirect: no pipeline stage ran; nothing in {run.directory.root}")
            return
        for stage in data["stages"]:
            write(f"{SYMBOLS.get(stage['status'], '?')} {STAGE_TITLES[stage['name']]:<16} {stage['status']}")
        for failure in failures(data):
            write(f"  {failure['key']}: {visible(failure['message'] or '')}")
        write(f"gemdirect verdict: {visible(verdict(data))}")
        write(f"gemdirect run directory: {run.directory.root}")
        if run.report_problem:
            write(f"gemdirect: {run.report_problem}")
        elif run.directory.report_html.is_file():
            write(f"gemdirect report: {run.directory.report_html}")
