"""The catalogue of shared pipeline runs: one ``pytest`` command line in a generated project each,
started once per session and read by every test that only looks at what that run produced.

A whole-pipeline run is the suite's main cost, and pytester is function-scoped, so a test that only
reads a run's exit status, output, summary or files asks for it here instead of starting its own::

    def test_something(shared_runs: SharedRuns) -> None:
        run = shared_runs.get(PASSING)
        assert run.result.ret == pytest.ExitCode.OK

Each run is named once, below, with the tests that read it, so ``grep -rn PASSING tests/`` shows
them all. A test that changes what it reads works on ``run.copy_to(tmp_path)``. A test that needs a
command line of its own keeps its own run (``tests.outside.run_e2e``); to share a new one, add a
``RunSpec`` here.

Under pytest-xdist every worker sees the same runs: the first worker to ask for one starts it under
a file lock in the session's shared temporary folder, the others wait for it and read its result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from tests.forkserver import run_pytest
from tests.outside import FAST, PIPELINE_MODULE, RUN_TIMEOUT_S, SMALL_GRAPH

FRAME_SIZE_CHECK = """
from PIL import Image


def test_every_frame_is_1024x576(gemdirect_frames):
    assert gemdirect_frames.frame_count == 25
    for path in gemdirect_frames.paths:
        with Image.open(path) as image:
            assert image.size == (1024, 576), f"{path.name} is {image.size}"
"""
"""The README's example: a project's own check, run once per scene on the frames that scene produced."""

CHECKED_PROJECT = PIPELINE_MODULE + FRAME_SIZE_CHECK
"""A user project that collects the stages and the README's frame check beside them."""

STRIPPED_ENV = ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "TOX_ENV_DIR", "GITHUB_STEP_SUMMARY")
"""The outer run's variables a shared run must not inherit (as pytester does, plus the job page)."""

STRIPPED_PREFIXES = ("PYTEST_XDIST_", "GEMDIRECT_")
"""Prefixes of variables left out too: xdist's worker ids, and settings a developer may have set."""


@dataclass(frozen=True)
class RunSpec:
    """One shared run: its name, its command line, and the project it runs in.

    ``{project}`` in an argument, an environment value or a file name stands for the project folder.
    """

    name: str
    args: tuple[str, ...] = ()
    markexpr: str = "e2e"
    module: str = PIPELINE_MODULE
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SharedRun:
    """What a shared run left: pytest's result, the project folder it ran in, its run directory."""

    spec: RunSpec
    result: pytest.RunResult
    project: Path
    run_dir: Path

    def copy_to(self, folder: Path) -> Path:
        """A copy of the run directory in ``folder``, for a test that alters what it reads."""
        target = folder / self.run_dir.name
        shutil.copytree(self.run_dir, target)
        return target


# --- the catalogue ---------------------------------------------------------------------------------

PASSING = RunSpec(
    "passing",
    ("-v", "-rs", "--junitxml={project}/junit.xml"),
    module=CHECKED_PROJECT,
)
"""The default ``pytest -m e2e`` (embedded simulators, 3 scenes, LLM story) with the README's frame
check. Read by test_plugin (every stage passes; the simulated GPU), test_fixtures (the user's check
runs per scene), test_ci (JUnit properties; no job page outside GitHub), test_pipeline_video
(motion, clip and figures of a default run), test_pipeline_suites (no suite configured) and
test_report (the first screen of a default run's report)."""

FAILED_SCENE = RunSpec(
    "failed-scene",
    ("-rs", "--sim-fault", "execution-error@scene-002", "--max-scene-retries", "0"),
    module=CHECKED_PROJECT,
    env=(("GITHUB_STEP_SUMMARY", "{project}/step-summary.md"),),
    files=(("step-summary.md", "earlier step\n"),),
)
"""scene-002 fails in generation (no re-queue), under GitHub's job-page variable. Read by test_ci
(the job page), test_fixtures (the user's check is not reached there), test_startup (every scene
folder's scene.json agrees with the summary) and test_report (a real failed run's report in
Chromium)."""

SMOKE = RunSpec("smoke", ("--story-mode", "fallback", "--scenes", "3", *FAST, "--workflow", "smoke"))
"""The shipped smoke workflow, named without a folder. Read by test_startup (a shipped workflow by
name) and test_pipeline_video (the smoke workflow moves; it is the baseline of the drift tests)."""

SPOILT_VIDEO_FAULTS = {
    "scene-002": "frozen",
    "scene-003": "black-frames",
    "scene-004": "short",
    "scene-005": "wrong-size",
}
"""One video fault a scene; scene-001 stays clean."""

SPOILT_VIDEO = RunSpec(
    "spoilt-video",
    (
        "--story-mode",
        "fallback",
        "--scenes",
        str(1 + len(SPOILT_VIDEO_FAULTS)),
        *FAST,
        *SMALL_GRAPH,
        *(arg for scene, fault in SPOILT_VIDEO_FAULTS.items() for arg in ("--sim-fault", f"{fault}@{scene}")),
    ),
)
"""Every video fault in one run, one a scene. Read by test_pipeline_video (a spoilt video fails that
scene's frames naming its figure)."""

RECOVERED_FAULTS = {
    "scene-002": "ws-drop",
    "scene-003": "ws-silent",
    "scene-004": "flaky",
    "scene-005": "history-garbage",
}
"""One fault a scene that the harness recovers from; scene-001 stays clean."""

RECOVERED = RunSpec(
    "recovered",
    (
        "--story-mode",
        "fallback",
        "--scenes",
        str(1 + len(RECOVERED_FAULTS)),
        *FAST,
        *SMALL_GRAPH,
        *(arg for scene, fault in RECOVERED_FAULTS.items() for arg in ("--sim-fault", f"{fault}@{scene}")),
    ),
)
"""Every fault a run should pass through, one a scene. Read by test_pipeline_faults (the WebSocket
faults pass by polling; flaky passes on its second attempt) and test_pipeline_hostile (non-JSON
history answers are polled past)."""

GENERATION_ONLY = RunSpec("generation-only", SMALL_GRAPH, markexpr="svd")
"""``pytest -m svd``: generation selected, frame retrieval not. Read by test_plugin (no scene is left
running; the deselected stages say why)."""

CATALOGUE = (PASSING, FAILED_SCENE, SMOKE, SPOILT_VIDEO, RECOVERED, GENERATION_ONLY)
assert len({spec.name for spec in CATALOGUE}) == len(CATALOGUE), "each shared run is named once"


# --- starting them ---------------------------------------------------------------------------------


class SharedRuns:
    """The session's shared runs, each started the first time a test asks for it."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        base = tmp_path_factory.getbasetemp()
        # under xdist each worker has its own basetemp inside the session's; the runs live beside them
        self._root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-runs"
        self._root.mkdir(exist_ok=True)
        self._done: dict[str, SharedRun] = {}

    def get(self, spec: RunSpec) -> SharedRun:
        """The run of ``spec``: started now, or read back from the worker that started it."""
        if spec.name not in self._done:
            project = self._root / spec.name
            with FileLock(str(self._root / f"{spec.name}.lock")):
                saved = project / "result.json"
                result = _read_result(saved) if saved.is_file() else _start(spec, project, saved)
            self._done[spec.name] = SharedRun(spec, result, project, project / "run")
        return self._done[spec.name]


def _start(spec: RunSpec, project: Path, saved: Path) -> pytest.RunResult:
    """Lay out the project, run ``pytest`` in it as pytester's runpytest_subprocess does, save the result."""
    if project.exists():  # a run that was cut short before it saved its result
        shutil.rmtree(project)
    project.mkdir()

    def fill(text: str) -> str:
        return text.replace("{project}", str(project))

    (project / "test_pipeline.py").write_text(spec.module, encoding="utf-8")
    for name, content in spec.files:
        (project / fill(name)).write_text(content, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env = {k: v for k, v in env.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(HOME=str(project), USERPROFILE=str(project), PY_COLORS="0")
    env.update((key, fill(value)) for key, value in spec.env)
    argv = [f"--basetemp={project / 'runpytest-0'}", "-p", "no:cacheprovider"]
    argv += [f"--run-dir={project / 'run'}", "-m", spec.markexpr, *(fill(arg) for arg in spec.args)]
    started = time.monotonic()
    ret = run_pytest(argv, project, env, RUN_TIMEOUT_S)
    out = (project / "stdout").read_text(encoding="utf-8", errors="replace").splitlines()
    err = (project / "stderr").read_text(encoding="utf-8", errors="replace").splitlines()
    result = pytest.RunResult(ret, out, err, time.monotonic() - started)
    record = {"ret": int(result.ret), "out": result.outlines, "err": result.errlines, "s": result.duration}
    saved.write_text(json.dumps(record), encoding="utf-8")
    return result


def _read_result(saved: Path) -> pytest.RunResult:
    """The result another worker saved."""
    record = json.loads(saved.read_text(encoding="utf-8"))
    return pytest.RunResult(record["ret"], record["out"], record["err"], record["s"])
