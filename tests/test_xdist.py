"""The pipeline under pytest-xdist: its stages share one worker and one run, services start once
(in the controller) and the controller alone writes the report from the worker's summary."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from tests.outside import (
    FAKES,
    FAST,
    GRACE_THAT_FIRES,
    SMOKE,
    PipelineRun,
    interrupt,
    items,
    own_install,
    processes_from,
    run_e2e,
    runpytest,
    scenes,
    stages,
    summary_of,
)

# Tests of the user's own, beside the pipeline: they still spread over the workers.
OTHER_TESTS = """
import pytest

@pytest.mark.e2e
@pytest.mark.parametrize("n", range(6))
def test_other(n):
    pass
"""
# pytest-benchmark, where a machine has it, turns itself off under xdist with a warning.
NO_BENCHMARK = ("-p", "no:benchmark")


@pytest.fixture
def project(project: pytest.Pytester) -> pytest.Pytester:
    """The pipeline project, with tests of the user's own beside it."""
    project.makepyfile(test_other=OTHER_TESTS)
    return project


def run_xdist(project: pytest.Pytester, *args: str) -> PipelineRun:
    """``run_e2e`` on two xdist workers, verbose (the output names each test's worker)."""
    return run_e2e(project, *NO_BENCHMARK, "-n", "2", "-v", *args)


def workers_of(result: pytest.RunResult, test_file: str) -> set[str]:
    """The xdist workers (gw0, gw1) that ran the tests of one file, from ``-v`` output."""
    pattern = re.compile(rf"\[(gw\d+)\].*(PASSED|FAILED|SKIPPED).*{re.escape(test_file)}::")
    return {m.group(1) for line in result.outlines if (m := pattern.search(line))}


def verdict_of(report: Path) -> str:
    soup = BeautifulSoup(report.read_text(encoding="utf-8"), "html.parser")
    verdict = soup.select_one("[data-gd-verdict]") or soup.select_one(".gd-verdict")
    assert verdict is not None, "the report has no verdict"
    return verdict.get_text(" ", strip=True)


def test_pipeline_stages_share_one_worker_and_the_report_shows_the_whole_run(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_xdist(project)
    result.assert_outcomes(passed=17, skipped=1)  # 11 stages + 6 of the user's own; no suites
    assert len(workers_of(result, "test_pipeline.py")) == 1, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*gemdirect: the pipeline*s stages run together on one worker*", "*verdict: PASSED*"]
    )
    # as without xdist, the backends and the run directory are said before the first test ends
    result.stdout.fnmatch_lines(
        ["gemdirect comfyui: embedded simulator (SIMULATED)", "gemdirect run directory: *", "*[[]gw*PASSED*"]
    )
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    assert stages(data)["frames"]["status"] == "passed"
    assert all(scene["status"] == "passed" and scene["frame_count"] == 25 for scene in data["scenes"])
    assert data["backends"]["comfyui"]["target"] == "embedded"
    assert "PASSED" in verdict_of(run_dir / "report.html")


def test_a_failed_scene_under_xdist_fails_the_run_in_summary_terminal_and_report(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_xdist(
        project,
        "--story-mode",
        "fallback",
        *FAST,
        *GRACE_THAT_FIRES,
        "--sim-fault",
        "history-never@scene-002",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*gemdirect verdict: FAILED*frames*"])
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    assert items(data, "frames")["frames[scene-002]"]["status"] == "failed"
    assert scenes(data)["scene-003"]["status"] == "passed"
    assert "FAILED" in verdict_of(run_dir / "report.html")


def test_launched_comfyui_starts_once_for_all_workers_and_is_gone_afterwards(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    install = own_install("good", tmp_path)
    result, run_dir, _ = run_xdist(
        project,
        "--story-mode",
        "fallback",
        "--scenes",
        "1",
        f"--comfyui-dir={install}",
        f"--workflow={SMOKE}",
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert data["backends"]["comfyui"]["target"] == "launched"
    log = (run_dir / "comfyui.log").read_text(encoding="utf-8")
    assert log.count("ComfyUI version: 0.3.64") == 1, "ComfyUI must be launched once, by the controller"
    gone_by = time.monotonic() + 10
    while processes_from(install) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not processes_from(install)


def test_dist_each_is_refused_because_it_would_run_the_pipeline_per_worker(project: pytest.Pytester) -> None:
    result = runpytest(
        project, "-p", "no:cacheprovider", *NO_BENCHMARK, "-n", "2", "--dist", "each", "-m", "e2e"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dist each would run the whole pipeline once per worker*"])


CRASH_ONCE = """
import os
import pathlib

import pytest


@pytest.fixture(autouse=True)
def crash_the_worker_once(request):
    flag = pathlib.Path(__file__).with_name("crashed.flag")
    if request.node.name == "test_frames[scene-001]" and not flag.exists():
        flag.write_text("the worker died here", encoding="utf-8")
        os._exit(1)
    yield
"""


def test_a_worker_that_dies_mid_pipeline_fails_the_run_in_summary_and_report(
    project: pytest.Pytester,
) -> None:
    project.makeconftest(CRASH_ONCE)
    result, run_dir, _ = run_xdist(project)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_frames[[]scene-001[]]*"])
    result.stdout.fnmatch_lines(["*gemdirect verdict: FAILED*a pytest-xdist worker crashed while running*"])
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    assert "test_frames[scene-001]" in data["status_reason"]
    assert "crashed" in (run_dir / "run-summary.txt").read_text(encoding="utf-8").splitlines()[0]
    assert "FAILED" in verdict_of(run_dir / "report.html")


def test_ctrl_c_while_the_controller_boots_the_services_leaves_an_interrupted_summary(
    project: pytest.Pytester,
) -> None:
    # A ComfyUI that never answers: the controller is still booting it when Ctrl-C comes.
    run_dir = project.path / "run"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *NO_BENCHMARK, "-n", "2", "-m", "e2e"]
    argv += [
        f"--run-dir={run_dir}",
        f"--comfyui-dir={FAKES / 'never_ready'}",
        "--comfyui-boot-timeout",
        "600",
    ]
    kwargs: dict = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    proc = subprocess.Popen(
        argv, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
    )
    log = run_dir / "comfyui.log"
    for _ in range(600):  # until the fake ComfyUI has started writing its log (at most 60 s)
        if log.is_file() and "Loading custom nodes" in log.read_text(encoding="utf-8", errors="replace"):
            break
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    output = interrupt(proc)
    data = summary_of(run_dir)
    assert data["status"] == "interrupted", output
    assert "before any stage ran" in data["status_reason"]
    assert [scene["status"] for scene in data["scenes"]] == ["not_reached"] * 3
