"""Helpers for the outside-in tests: a generated project runs ``pytest`` in a subprocess and we read
the exit status, the output, run-summary.json and the files in the run directory.

A plain module (its name does not start with ``test_``), so pytest does not collect it; the
``project`` fixture lives in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jsonschema
import psutil
import pytest

from pytest_gemdirect.schemas_io import load_schema
from tests.forkserver import run_pytest

PIPELINE_MODULE = "from pytest_gemdirect.pipeline_tests import *  # noqa\n"
"""The user project's test module: it collects the pipeline's stages."""

REPO = Path(__file__).resolve().parents[1]
"""The repository's root folder."""

FAKES = REPO / "tests" / "fake_comfyui"
"""Fake ComfyUI install folders for ``--comfyui-dir``."""

SMOKE = REPO / "fixtures" / "workflows" / "smoke.json"
"""A small workflow the fake installs can run."""

FAST = (
    "--completion-grace",
    "10",
    "--scene-max-wait",
    "60",
    "--ws-idle-timeout",
    "5",
    "--history-poll-interval",
    "0.3",
)
"""Policy values for a run whose deadlines must not fire: a simulator scene takes one or two seconds
on an idle machine and a few times that on a busy 2-core one, so each bound here is far above what
a healthy scene needs, yet a hang still ends within a minute. A test that needs one of them to fire
adds the matching value below after FAST (a later flag wins)."""

GRACE_THAT_FIRES = ("--completion-grace", "2")
"""For a fault whose grace must run out (history-never): the other scenes' entries are in /history
when they complete, so the grace never bounds them."""

SCENE_WAIT_THAT_FIRES = ("--scene-max-wait", "15")
"""For a fault only the scene deadline can end (stall, view-trickle): short, yet some times what a
healthy scene beside it takes on a busy machine, since the same deadline bounds every scene."""


SMALL_GRAPH = (f"--workflow={REPO / 'tests' / 'data' / 'graphs' / 'svd_small.json'}",)
"""The shipped SVD graph at 256x144 (tests/data/graphs/svd_small.json): every stage and check of a
default run at a sixteenth of its pixels, which are most of a run's cost. The graph of ``run_e2e``
and ``start_stalled_run`` unless a test is about the default graph's frames (1024x576)."""

DEFAULT_GRAPH: tuple[str, ...] = ()
"""No ``--workflow``: the run queues the shipped default, ``svd_img2vid`` (1024x576, 25 frames)."""

GRAPH_FLAGS = ("--workflow", "--app-settings", "--video-profile", "--replay")
"""Flags that choose the graph themselves: a run given one of them gets no SMALL_GRAPH."""


RUN_TIMEOUT_S = 900.0
"""The most one of the suite's pytest runs may take before it is killed (a backstop for a hang)."""


def runpytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``pytester.runpytest_subprocess(*args)``, forked from the suite's fork server where it can be.

    The same command line, folder, environment and output files as pytester's (tests/forkserver.py
    says why and how); for the suite's pipeline runs, not for a test about what a fresh interpreter
    imports."""
    number = sum(1 for _ in pytester.path.glob("runpytest-*"))
    basetemp = pytester.path / f"runpytest-{number}"
    basetemp.mkdir(mode=0o700)
    plugins = [arg for plugin in pytester.plugins for arg in ("-p", str(plugin))]
    argv = [*plugins, f"--basetemp={basetemp}", *args]
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    print("running: pytest", *argv, "\n     in:", pytester.path)
    started = time.monotonic()
    ret = run_pytest(argv, pytester.path, env, RUN_TIMEOUT_S)
    out = (pytester.path / "stdout").read_text(encoding="utf-8", errors="replace").splitlines()
    err = (pytester.path / "stderr").read_text(encoding="utf-8", errors="replace").splitlines()
    print("\n".join(out), "\n".join(err), sep="\n", file=sys.stderr)
    return pytest.RunResult(ret, out, err, time.monotonic() - started)


class PipelineRun(NamedTuple):
    """What ``run_e2e`` gives back: pytest's result, the run directory and the seconds it took."""

    result: pytest.RunResult
    run_dir: Path
    elapsed: float


def run_e2e(
    project: pytest.Pytester, *args: str, markexpr: str = "e2e", graph: tuple[str, ...] = SMALL_GRAPH
) -> PipelineRun:
    """``pytest -m <markexpr> --run-dir <project>/run <graph> *args`` in a subprocess, timed.

    ``graph`` is the small SVD graph unless the test asks for another (``graph=DEFAULT_GRAPH`` for
    the shipped default) or names its own graph in ``args``."""
    run_dir = project.path / "run"
    if any(arg.split("=", 1)[0] in GRAPH_FLAGS for arg in args):
        graph = DEFAULT_GRAPH
    started = time.monotonic()
    result = runpytest(
        project, "-p", "no:cacheprovider", f"--run-dir={run_dir}", "-m", markexpr, *graph, *args
    )
    return PipelineRun(result, run_dir, time.monotonic() - started)


def summary_of(run_dir: Path) -> dict:
    """The run's run-summary.json, checked against its schema."""
    data = json.loads((run_dir / "run-summary.json").read_text(encoding="utf-8"))
    jsonschema.validate(data, load_schema("run-summary.schema.json"))
    return data


def stages(data: dict) -> dict[str, dict]:
    """A summary's stages by name."""
    return {stage["name"]: stage for stage in data["stages"]}


def items(data: dict, stage: str) -> dict[str, dict]:
    """One stage's items by key (``svd[scene-002]``)."""
    return {item["key"]: item for item in stages(data)[stage].get("items") or []}


def scenes(data: dict) -> dict[str, dict]:
    """A summary's scenes by id."""
    return {scene["id"]: scene for scene in data["scenes"]}


def events(run_dir: Path, scene_id: str) -> list[dict]:
    """The events a scene wrote to ``<scene_id>/events.jsonl``, blank lines passed over."""
    lines = (run_dir / scene_id / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def own_install(name: str, folder: Path) -> Path:
    """A copy of the fake install ``name`` in ``folder``, one test's own: its processes are that
    test's alone, so "none is alive afterwards" holds while other xdist workers launch theirs."""
    target = folder / f"fake-comfyui-{name}"
    shutil.copytree(FAKES / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def processes_from(install: Path) -> list[psutil.Process]:
    """Live processes whose command line or working folder is inside ``install``."""
    needle = str(install)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if needle in " ".join(info["cmdline"] or []) or needle in (info["cwd"] or ""):
            found.append(proc)
    return found


# --- a run we watch while it is going -------------------------------------------------------------


def read_summary(path: Path) -> dict | None:
    """The summary file as it stands now, or None while it is missing or half written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def start_stalled_run(project: pytest.Pytester, *extra: str) -> tuple[subprocess.Popen, Path]:
    """Start ``pytest -m e2e`` ourselves with scene-002 stalling under a long scene-max-wait."""
    run_dir = project.path / "run"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "e2e", f"--run-dir={run_dir}"]
    argv += ["--story-mode", "fallback", "--scenes", "3", "--scene-max-wait", "300"]
    argv += ["--history-poll-interval", "0.3", "--ws-idle-timeout", "1", "--sim-fault", "stall@scene-002"]
    argv += [*SMALL_GRAPH, *extra]
    kwargs: dict = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        # a parent started in the background may ignore SIGINT; the child must not inherit that
        kwargs["preexec_fn"] = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    # a run that hangs after Ctrl-C prints every thread's stack when interrupt() sends SIGABRT
    kwargs["env"] = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        argv, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    return proc, run_dir


def wait_for_scene_002_attempt(proc: subprocess.Popen, run_dir: Path) -> dict:
    """The live summary once scene-001 has passed and scene-002's prompt is running on the server
    (its prompt is queued while scene-001 still runs: events.jsonl says when it starts)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = read_summary(run_dir / "run-summary.json")
        if data and (data.get("backends", {}).get("comfyui") or {}).get("pid"):
            scene = next((s for s in data.get("scenes", []) if s["id"] == "scene-002"), None)
            first = next((s for s in data.get("scenes", []) if s["id"] == "scene-001"), None)
            running = scene and scene["attempts"] and scene["attempts"][-1]["outcome"] == "running"
            started = any(e.get("type") == "execution_start" for e in _events_so_far(run_dir, "scene-002"))
            if running and started and first and first["status"] == "passed":
                return data
        assert proc.poll() is None, "pytest ended before scene-002 was running"
        time.sleep(0.1)
    pytest.fail("scene-002 never showed a running attempt in run-summary.json")


def interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C the run and give back its output; kill it if it is still there after that.

    On Windows a process group made with CREATE_NEW_PROCESS_GROUP ignores Ctrl-C; Ctrl-Break,
    which the harness treats like Ctrl-C (SIGBREAK), reaches it.
    """
    try:
        proc.send_signal(signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            if sys.platform == "win32":
                raise
            # PYTHONFAULTHANDLER (start_stalled_run): SIGABRT prints every thread's stack, then ends it
            proc.send_signal(signal.SIGABRT)
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            pytest.fail(f"the run did not end within 60 s of Ctrl-C; its stacks:\n{output[-12000:]}")
        return output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _events_so_far(run_dir: Path, scene_id: str) -> list[dict]:
    """events.jsonl as it stands (a last line being written is left out)."""
    path = run_dir / scene_id / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def gpu_requests(run_dir: Path) -> list[str]:
    """What the embedded ComfyUI was asked that changes its GPU work (``POST /interrupt …``), in order."""
    log = run_dir / "simulator.log"
    prefix = "gemdirect simulator: POST "
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    return [line[len(prefix) - 5 :] for line in lines if line.startswith(prefix)]


def posted_prompts(run_dir: Path, scene_id: str) -> list[str]:
    """The prompt ids the harness queued for a scene, from its events.jsonl."""
    return [e["prompt_id"] for e in events(run_dir, scene_id) if e.get("event") == "post_prompt"]


def is_running(pid: int) -> bool:
    """Whether a process with this pid is alive (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
