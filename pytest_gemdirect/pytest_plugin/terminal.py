"""What the run shows in the terminal: a line when the first stage starts, progress, the summary.

Nothing here is shown in a pytest run that runs no pipeline stage. Text that came from a server or
an LLM passes through :func:`visible` first, so it cannot move the cursor or retitle the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pytest_gemdirect.catalogue import STAGE_TITLES
from pytest_gemdirect.policy import HEADER_NAMES
from pytest_gemdirect.pytest_plugin.run import Run
from pytest_gemdirect.settings import SPECS, Settings
from pytest_gemdirect.summary import SYMBOLS, check_lines, failures, verdict
from pytest_gemdirect.text import visible

PLAIN_LINE_EVERY_S = 10.0
BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """A scene's progress while ComfyUI works on it: a bar on a terminal, occasional lines on CI.

    Sampler steps give the bar (step n/N, elapsed, estimated time left, s/step); between steps
    (a VAE decode can take minutes) the node at work is named. On a terminal the bar has a line
    of its own below pytest's progress and is cleared when the scene's job ends. Off a terminal
    (a CI log) a scene that has been at work for a while gets one plain line every
    :data:`PLAIN_LINE_EVERY_S`, each on a line of its own; a scene that ends sooner adds nothing
    to the log (pytest's own line says how it went).
    """

    def __init__(
        self, write: Callable[[str], None], *, in_place: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._in_place = in_place
        self._clock = clock
        self._scene: str | None = None
        self._started = 0.0
        self._first_value: int | None = None
        self._steps: tuple[int, int] | None = None  # (value, max) of the last sampler progress
        self._node: str | None = None
        self._last_plain: float | None = None
        self._width = 0

    def __call__(self, scene_id: str, value: int, maximum: int) -> None:
        self._begin(scene_id)
        if self._first_value is None:
            self._first_value = value
        self._steps = (value, maximum)
        self._show(force=value >= maximum)

    def node(self, scene_id: str, label: str) -> None:
        """ComfyUI started a node of the scene's graph (``VAEDecode (node 8)``)."""
        self._begin(scene_id)
        self._node = visible(label, limit=60)
        self._show(force=False)

    def done(self, scene_id: str) -> None:
        """The scene's job ended: the bar's line is cleared (a terminal) or closed (plain lines)."""
        if scene_id != self._scene:
            return
        if self._in_place and self._width:
            self._write("\r" + " " * self._width + "\r")
        self._scene = None

    def describe(self, scene_id: str, elapsed: float) -> str:
        """``scene-001 [#####-----] step 5/20, 0:12 elapsed, ~0:36 left, 2.40 s/step, VAEDecode (node 8)``."""
        parts = []
        bar = ""
        if self._steps is not None:
            value, maximum = self._steps
            filled = int(BAR_WIDTH * value / maximum) if maximum > 0 else 0
            bar = " [" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"
            parts.append(f"step {value}/{maximum}")
        parts.append(f"{_clock(elapsed)} elapsed")
        if self._steps is not None and self._first_value is not None:
            value, maximum = self._steps
            done = value - self._first_value
            if done > 0:
                per_step = elapsed / done
                parts += [f"~{_clock(per_step * max(maximum - value, 0))} left", f"{per_step:.2f} s/step"]
        if self._node is not None:
            parts.append(f"running {self._node}")
        return f"{scene_id}{bar} " + ", ".join(parts)

    def _begin(self, scene_id: str) -> None:
        if scene_id == self._scene:
            return
        self._scene, self._started = scene_id, self._clock()
        self._first_value, self._steps, self._node, self._last_plain, self._width = None, None, None, None, 0
        if self._in_place:
            self._write("\n")  # a line of its own, below pytest's progress line

    def _show(self, *, force: bool) -> None:
        assert self._scene is not None
        now = self._clock()
        text = self.describe(self._scene, now - self._started)
        if self._in_place:
            self._width = max(self._width, len(text))
            self._write("\r" + text.ljust(self._width))
        elif (
            now - (self._last_plain if self._last_plain is not None else self._started) >= PLAIN_LINE_EVERY_S
        ):
            self._last_plain = now
            self._write("\n" + text + "\n")


class TerminalOutput:
    """pytest's terminal, written past output capture: what a run shows while its stages work.

    Made before the run, which gets its :meth:`progress` display and its :meth:`announce` call.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._reporter = config.pluginmanager.get_plugin("terminalreporter")

    def progress(self) -> ProgressDisplay | None:
        """A scene's progress display, or None without a terminal."""
        if self._reporter is None:
            return None
        return ProgressDisplay(self.write, in_place=self._reporter.isatty)

    def write(self, text: str) -> None:
        if self._reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                self._reporter.write(text, flush=True)
        else:
            self._reporter.write(text, flush=True)

    def announce(self, run: Run) -> None:
        """When the first stage starts: where the services come from and where the run is written."""
        if self._reporter is None or run.directory is None or run.is_worker:
            return
        lines = [f"gemdirect {name}: {target}" for name, target in describe_targets(run.settings).items()]
        lines.append(f"gemdirect run directory: {run.directory.root}")
        self.write("\n" + "\n".join(lines) + "\n")


class Terminal:
    """The run's terminal summary; registered with the run."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def settings_lines(self) -> list[str]:
        settings = self.run.settings
        public = settings.public()
        shown = ", ".join(
            f"{name}={_as_typed(public[name])}" for name in ("scenes", "story_mode", *HEADER_NAMES)
        )
        lines = [f"gemdirect settings: {shown}"]
        changed = [
            f"{spec.name}={_as_typed(public[spec.name])} ({settings.sources[spec.name]})"
            for spec in SPECS
            if settings.sources[spec.name] != "default"
        ]
        if changed:
            lines.append("gemdirect set: " + "; ".join(changed))
        return lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        data = run.summary_data()
        if run.directory is None or run.is_worker:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "gemdirect", bold=True)
        for name, target in describe_targets(run.settings).items():
            write(f"gemdirect {name}: {target}")
        for line in [*self.settings_lines(), *run.notes]:
            write(line)
        if data is None:
            write(f"gemdirect: no pipeline stage ran; nothing in {run.directory.root}")
            return
        for stage in data["stages"]:
            write(f"{SYMBOLS.get(stage['status'], '?')} {STAGE_TITLES[stage['name']]:<16} {stage['status']}")
        for failure in failures(data):
            write(f"  {failure['key']}: {visible(failure['message'] or '')}")
        if data.get("checks"):
            write("your checks:")
            for line in check_lines(data["checks"]):
                write(line)
        write(f"gemdirect verdict: {visible(verdict(data))}")
        write(f"gemdirect run directory: {run.directory.root}")
        if run.report_problem:
            write(f"gemdirect: {run.report_problem}")
        elif run.directory.report_html.is_file():
            write(f"gemdirect report: {run.directory.report_html}")


def _as_typed(value: object) -> str:
    """A setting's value as a user would type it (``a,b`` rather than a Python list)."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def describe_targets(settings: Settings) -> dict[str, str]:
    """Each service's target in words, for the terminal header (nothing is booted)."""
    if settings.replay is not None:
        from pytest_gemdirect.replay.trace import TraceError, load_trace, origin

        try:
            label = origin(load_trace(settings.replay))["label"]
        except TraceError as exc:
            label = f"REPLAYED from an unreadable trace ({exc})"
        return {"comfyui": f"{label}, trace {settings.replay}", "llm": "REPLAYED from the same trace"}
    if settings.comfyui_url:
        comfy = "attach " + ", ".join(settings.comfyui_url)
    elif settings.comfyui_dir:
        comfy = f"launch {settings.comfyui_dir} (main.py)"
    else:
        comfy = "embedded simulator (SIMULATED)" + _app_url_not_used(settings)
    llm = f"attach {settings.llm_url}" if settings.llm_url else "embedded simulator (SIMULATED)"
    if settings.story_mode == "fallback" and not settings.llm_url:
        llm += ", story mode fallback"
    return {"comfyui": comfy, "llm": llm}


def _app_url_not_used(settings: Settings) -> str:
    """The app's comfyUIUrl is never used silently: the embedded stack runs, and this is how to attach."""
    if settings.app_settings is None:
        return ""
    from pytest_gemdirect.app_settings import AppSettingsError, load_app_settings

    try:
        url = load_app_settings(settings.app_settings).comfyui_url
    except AppSettingsError:
        return ""
    if not url:
        return ""
    return (
        f"; the app settings' comfyUIUrl {url} is not used: the embedded stack runs;"
        f" to attach to it, pass --comfyui-url={url}"
    )
