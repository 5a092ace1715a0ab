"""The external-suites stage from the outside: a generated project runs ``pytest -m e2e`` with
``--suite`` and we read the outcome, the pytest output and run-summary.json."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.outside import REPO, PipelineRun, run_e2e, stages, summary_of
from tests.runs import PASSING, SharedRuns

JUNIT_SUITE = REPO / "fixtures" / "suites" / "junit_python" / "junit_suite.py"
SHORT = ("--story-mode", "fallback", "--scenes", "1", "--history-poll-interval", "0.3")


def run_short(project: pytest.Pytester, *args: str) -> PipelineRun:
    """``run_e2e`` with ``-rs`` and a one-scene fallback story."""
    return run_e2e(project, "-rs", *SHORT, *args)


def test_vitest_preset_passes_with_totals_in_the_summary(project: pytest.Pytester, vitest_dir: Path) -> None:
    result, run_dir, _ = run_short(project, "--suite", "vitest", f"--suite-cwd={vitest_dir}")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert stages(data)["suites"]["status"] == "passed"
    (suite,) = data["suites"]
    assert suite["name"] == "vitest" and suite["status"] == "passed" and suite["exit_code"] == 0
    totals = suite["totals"]
    assert totals["tests"] >= 1 and totals["passed"] >= 1
    assert totals["failures"] == totals["errors"] == 0
    assert totals["tests"] == totals["passed"] + totals["skipped"]


def test_failing_vitest_case_is_named_in_the_pytest_output(
    project: pytest.Pytester, vitest_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMDIRECT_VITEST_FAIL", "1")
    result, run_dir, _ = run_short(project, "--suite", "vitest", f"--suite-cwd={vitest_dir}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*FAILED*tests/scene.test.js*", "*expected 24 to be 25*"])
    data = summary_of(run_dir)
    assert stages(data)["suites"]["status"] == "failed"
    (suite,) = data["suites"]
    assert suite["totals"]["failures"] == 1
    assert suite["failures"][0]["file"] == "tests/scene.test.js"
    # the pipeline itself still passed
    assert stages(data)["frames"]["status"] == "passed"


def test_no_suite_configured_skips_the_suites_stage(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # -rs, no --suite (this test ran its own one-scene run before)
    result, run_dir = run.result, run.run_dir
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*SKIPPED*no external suites configured*"])
    data = summary_of(run_dir)
    assert stages(data)["suites"]["status"] == "skipped"
    assert "no external suites configured" in stages(data)["suites"]["message"]


def test_python_junit_suite_failure_names_the_case(project: pytest.Pytester) -> None:
    python = Path(sys.executable).as_posix()
    command = f'"{python}" "{JUNIT_SUITE.as_posix()}" --fail'
    result, run_dir, _ = run_short(project, "--suite", f"py={command}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_scene_has_25_frames*", "*scene-001 has 24 frames, expected 25*"])
    data = summary_of(run_dir)
    (suite,) = data["suites"]
    assert suite["name"] == "py" and suite["status"] == "failed" and suite["exit_code"] == 1
    assert suite["totals"]["failures"] == 1 and suite["totals"]["passed"] == 2
    assert [f["name"] for f in suite["failures"]] == ["test_scene_has_25_frames"]
