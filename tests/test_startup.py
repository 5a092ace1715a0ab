"""Bad input stops the run at start-up with the setting named, before any stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.outside import summary_of
from tests.runs import PASSING, SMOKE, SharedRuns


def usage_error(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-m", "e2e", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    return result


def test_a_path_flag_written_with_a_space_that_moved_pytests_root_is_refused(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "pytest.ini").write_text("[pytest]\ntestpaths = tests_comfy\n", encoding="utf-8")
    result = usage_error(project, "--comfyui-dir", str(comfyui))
    result.stderr.fnmatch_lines(
        [f"*--comfyui-dir {comfyui}: written with a space*write --comfyui-dir={comfyui}*"]
    )
    assert not (project.path / "logs").exists() and not (comfyui / "logs").exists()


def test_a_workflow_flag_written_with_a_space_outside_the_project_is_refused(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    workflow = tmp_path / "elsewhere" / "x.json"
    workflow.parent.mkdir()
    workflow.write_text(
        (Path(__file__).parents[1] / "fixtures/workflows/smoke.json").read_text(), encoding="utf-8"
    )
    result = usage_error(project, "--workflow", str(workflow))
    result.stderr.fnmatch_lines(["*write --workflow=*"])


def test_a_run_directory_that_holds_an_earlier_run_is_refused(project: pytest.Pytester) -> None:
    earlier = project.path / "run"
    earlier.mkdir()
    (earlier / "events.jsonl").write_text("{}\n", encoding="utf-8")
    result = usage_error(project, f"--run-dir={earlier}")
    result.stderr.fnmatch_lines(["*run_dir (from --run-dir)*is not empty*"])
    assert [p.name for p in earlier.iterdir()] == ["events.jsonl"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "cannot be read as JSON"), (json.dumps({"nodes": [], "links": []}), "Save (API Format)")],
    ids=["not-json", "ui-format"],
)
def test_a_workflow_that_cannot_run_is_refused_at_start_up(
    project: pytest.Pytester, content: str, expected: str
) -> None:
    path = project.path / "broken.json"
    path.write_text(content, encoding="utf-8")
    result = usage_error(project, f"--workflow={path}")
    result.stderr.fnmatch_lines([f"*invalid value for workflow (from --workflow)*broken.json*{expected}*"])
    assert not (project.path / "logs").exists()


def test_a_fault_for_a_scene_the_run_does_not_have_is_refused(project: pytest.Pytester) -> None:
    result = usage_error(project, "--sim-fault", "stall@scene-009")
    result.stderr.fnmatch_lines(["*stall@scene-009 names scene-009, but the run has 3 scene(s)*"])


def test_unbalanced_comfyui_args_are_refused(project: pytest.Pytester) -> None:
    result = usage_error(project, '--comfyui-args=--output-directory "D:\\AI\\out')
    result.stderr.fnmatch_lines(["*invalid value*for comfyui_args (from --comfyui-args)*"])


def test_a_shipped_workflow_is_named_without_a_folder(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(SMOKE)  # "--workflow", "smoke": 3 scenes, fallback story (no LLM health)
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=10, skipped=2)
    assert summary_of(run_dir)["comfyui"]["workflow"].endswith("smoke.json")


def test_every_file_of_a_passed_run_agrees_with_the_summary(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # 3 scenes and the README's check; this test ran 2 scenes before
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=11 + 3, skipped=1)
    for scene in summary_of(run_dir)["scenes"]:
        on_disk = json.loads((run_dir / scene["id"] / "scene.json").read_text(encoding="utf-8"))
        assert on_disk["status"] == scene["status"] == "passed"
        assert on_disk["attempts"] == scene["attempts"]


def test_a_plain_pytest_run_names_the_report(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", f"--run-dir={project.path / 'run'}")
    result.assert_outcomes(passed=11, skipped=1)
    result.stdout.fnmatch_lines([f"*gemdirect report: {project.path / 'run' / 'report.html'}"])
