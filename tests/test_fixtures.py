"""A project's own checks over the stages' typed results, through the plugin's fixtures."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from tests.outside import PIPELINE_MODULE, run_e2e, summary_of
from tests.runs import FAILED_SCENE, FRAME_SIZE_CHECK, PASSING, SharedRuns


def test_a_users_frames_check_runs_once_per_scene_with_e2e(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # its project has the README's check (tests/runs.py: FRAME_SIZE_CHECK)
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=14, skipped=1)  # 11 stages + 3 scenes of the user's check; no suites
    result.stdout.fnmatch_lines(
        [
            "*test_frames?scene-001? PASSED*",
            "*test_every_frame_is_1024x576?scene-001? PASSED*",
            "*test_every_frame_is_1024x576?scene-003? PASSED*",
        ]
    )
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    # the user's checks are rows of their own, per scene, in the summary, the terminal and the report
    assert [(c["test"], c["scene"], c["status"]) for c in data["checks"]] == [
        (f"test_every_frame_is_1024x576[scene-00{n}]", f"scene-00{n}", "passed") for n in (1, 2, 3)
    ]
    result.stdout.fnmatch_lines(
        ["your checks:", "  [[]+] test_every_frame_is_1024x576[[]scene-001[]] passed"]
    )
    report = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    assert len(report.select("#gd-steps tr.gd-check.gd-status-passed")) == 3


def test_a_failing_users_check_fails_the_run_and_names_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE + FRAME_SIZE_CHECK.replace("(1024, 576)", "(512, 512)"))
    result, run_dir, _ = run_e2e(pytester)  # the small graph: its frames are 256x144
    result.assert_outcomes(passed=11, failed=3, skipped=1)
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    assert "test_every_frame_is_1024x576[scene-002]" in data["status_reason"]
    failed = {c["test"]: c for c in data["checks"]}["test_every_frame_is_1024x576[scene-002]"]
    assert failed["status"] == "failed" and failed["message"].startswith("AssertionError: frame_")
    assert "is (256, 144)" in failed["message"]
    result.stdout.fnmatch_lines(
        ["*[[]x[]] test_every_frame_is_1024x576[[]scene-002[]] failed: AssertionError*"]
    )
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    assert "[x] test_every_frame_is_1024x576[scene-003] failed: AssertionError: frame_" in text
    report = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    row = report.select_one('#gd-steps tr.gd-check[data-test="test_every_frame_is_1024x576[scene-002]"]')
    assert row is not None and "is (256, 144)" in row.get_text(" ")
    wrong = report.select_one("#gd-failures").get_text(" ")
    assert "your own checks failed" in wrong and "is (256, 144)" in wrong  # not just "see pytest's output"


def test_a_users_check_is_not_reached_where_its_scene_failed(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(FAILED_SCENE)  # execution-error@scene-002, no re-queue, the README's check
    result, run_dir = run.result, run.run_dir
    # scene-002's frames stage and the user's check of scene-002 are skipped; no suites configured
    result.assert_outcomes(passed=11, failed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] test_pipeline.py:*: not reached: svd[[]scene-002[]] failed"]
    )
    data = summary_of(run_dir)
    scenes = {scene["id"]: scene["status"] for scene in data["scenes"]}
    assert scenes == {"scene-001": "passed", "scene-002": "failed", "scene-003": "passed"}
    checks = {c["scene"]: (c["status"], c["message"]) for c in data["checks"]}
    assert checks["scene-002"] == ("skipped", "not reached: svd[scene-002] failed")
    assert checks["scene-001"] == ("passed", None)
