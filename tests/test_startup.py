"""Bad input stops the run at start-up with the setting named, before any stage runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.outside import runpytest, summary_of
from tests.runs import FAILED_SCENE, SMOKE, SharedRuns


def usage_error(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    result = runpytest(project, "-p", "no:cacheprovider", "-m", "e2e", *args)
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


def test_every_scene_folder_has_a_scene_json_that_agrees_with_the_summary(shared_runs: SharedRuns) -> None:
    """A failed scene's folder too; the frames it lists are relative paths into the run."""
    run = shared_runs.get(FAILED_SCENE)  # execution-error@scene-002, no re-queue, 3 scenes
    result, run_dir = run.result, run.run_dir
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    scenes = {scene["id"]: scene for scene in summary_of(run_dir)["scenes"]}
    assert [scenes[s]["status"] for s in ("scene-001", "scene-002", "scene-003")] == [
        "passed",
        "failed",
        "passed",
    ]
    for sid, scene in scenes.items():
        on_disk = json.loads((run_dir / sid / "scene.json").read_text(encoding="utf-8"))
        assert on_disk["status"] == scene["status"]
        assert on_disk["attempts"] == scene["attempts"]
    frames = json.loads((run_dir / "scene-001" / "scene.json").read_text(encoding="utf-8"))["frames"]
    assert frames and all(
        not Path(f["path"]).is_absolute() and (run_dir / f["path"]).is_file() for f in frames
    )


def test_a_plain_pytest_run_names_the_report(project: pytest.Pytester) -> None:
    result = runpytest(project, "-p", "no:cacheprovider", f"--run-dir={project.path / 'run'}")
    result.assert_outcomes(passed=11, skipped=1)
    result.stdout.fnmatch_lines([f"*gemdirect report: {project.path / 'run' / 'report.html'}"])


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback port held (bound, not listening), so a connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def test_an_unreachable_comfyui_url_stops_the_run_before_the_first_stage(
    project: pytest.Pytester, dead_url: str
) -> None:
    result = usage_error(project, f"--comfyui-url={dead_url}")
    result.stderr.fnmatch_lines([f"*comfyui_url: no configured ComfyUI server answered*{dead_url}*"])
    assert not (project.path / "logs").exists()  # no stage ran, nothing was made


def test_a_partial_run_that_needs_no_comfyui_does_not_probe_it(
    project: pytest.Pytester, dead_url: str
) -> None:
    result = runpytest(project, "-p", "no:cacheprovider", "-m", "env", f"--comfyui-url={dead_url}")
    assert result.ret == 0, result.stdout.str()
