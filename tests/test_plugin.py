"""The plugin from the outside: pytest runs a generated project and we read its outcomes and files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from bs4 import BeautifulSoup
from PIL import Image

from pytest_gemdirect.schemas_io import load_schema
from tests.outside import REPO, run_e2e, runpytest, stages, summary_of
from tests.runs import GENERATION_ONLY, PASSING, SharedRuns


def test_default_run_passes_every_stage_and_leaves_the_run_directory(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)
    result, run_dir = run.result, run.run_dir
    # env, llm, story, comfyui, 3 x svd, 3 x frames, summary pass; no suites configured -> skipped
    # (and the README's frame check, 3 scenes, which the project has beside the stages)
    result.assert_outcomes(passed=11 + 3, skipped=1)
    result.stdout.fnmatch_lines(
        ["*gemdirect comfyui: embedded simulator (SIMULATED)*", "*test_suites*SKIPPED*"]
    )
    result.stdout.fnmatch_lines(
        [f"*gemdirect run directory: {run_dir}*", "*gemdirect verdict: PASSED on the SIMULATED*"]
    )
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    assert data["simulated"] is True
    assert {name: b["target"] for name, b in data["backends"].items()} == {
        "comfyui": "embedded",
        "llm": "embedded",
    }
    assert {name: stage["status"] for name, stage in stages(data).items()} == {
        "env": "passed",
        "llm": "passed",
        "story": "passed",
        "comfyui": "passed",
        "svd": "passed",
        "frames": "passed",
        "suites": "skipped",
        "summary": "passed",
    }
    assert (run_dir / "report.html").is_file()
    assert (
        (run_dir / "run-summary.txt")
        .read_text(encoding="utf-8")
        .startswith(f"gemdirect run {data['run_id']}")
    )
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    jsonschema.validate(story, load_schema("story.schema.json"))
    for scene in data["scenes"]:
        assert scene["status"] == "passed"
        scene_dir = run_dir / scene["id"]
        frames = sorted((scene_dir / "generated-frames").rglob("*.png"))
        assert len(frames) == scene["frame_count"] == 25
        with Image.open(frames[-1]) as last:
            last.load()
        for name in ("keyframe.png", "scene.json", "history.json", "events.jsonl"):
            assert (scene_dir / name).is_file(), name
        telemetry = scene["telemetry"]
        assert telemetry["generation_s"] is not None and telemetry["retrieval_s"] is not None
        assert (run_dir / "story" / "keyframes" / f"{scene['id']}.png").is_file()


def test_failed_early_stage_turns_later_ones_into_not_reached(project: pytest.Pytester) -> None:
    # LLM mode against a port where nothing listens: the LLM stage fails, the story and
    # everything that needs it are skipped as "not reached", none errored.
    result, run_dir, _ = run_e2e(
        project,
        "-rs",
        "--story-mode",
        "llm",
        "--llm-url",
        "http://127.0.0.1:9",
        "--llm-timeout",
        "2",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1
    assert "error" not in outcomes and "errors" not in outcomes
    result.stdout.fnmatch_lines(["*not reached: llm failed*"])
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    by_stage = stages(data)
    assert by_stage["llm"]["status"] == "failed"
    assert by_stage["story"]["status"] == "not_reached"
    assert by_stage["svd"]["status"] == by_stage["frames"]["status"] == "not_reached"
    assert [scene["status"] for scene in data["scenes"]] == ["not_reached"] * 3
    assert result.ret == pytest.ExitCode.TESTS_FAILED


# The simulator offers every model a workflow names (as a user's ComfyUI with the models installed
# would); the missing-model fault takes this one away.
def test_missing_checkpoint_fails_comfyui_stage_and_generation_is_not_reached(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    workflow = json.loads((REPO / "fixtures" / "workflows" / "svd_img2vid.json").read_text(encoding="utf-8"))
    workflow["1"]["inputs"]["ckpt_name"] = "no_such_model.safetensors"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    result, run_dir, _ = run_e2e(
        project, f"--workflow={path}", "--story-mode", "fallback", "--sim-fault", "missing-model"
    )
    result.stdout.fnmatch_lines(["*checkpoint no_such_model.safetensors is not in models/checkpoints*"])
    by_stage = stages(summary_of(run_dir))
    assert by_stage["comfyui"]["status"] == "failed"
    assert by_stage["svd"]["status"] == by_stage["frames"]["status"] == "not_reached"
    assert by_stage["summary"]["status"] == "passed"


@pytest.mark.parametrize(
    ("markexpr", "passed"),
    [
        ("e2e and not llm", 10),  # the LLM still serves the story through its fixture
        ("frames", 3),
        ("summary", 1),
    ],
)
def test_marker_filtered_runs_do_the_work_they_need(
    project: pytest.Pytester, markexpr: str, passed: int
) -> None:
    result, run_dir, _ = run_e2e(project, markexpr=markexpr)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == passed
    assert "failed" not in outcomes
    data = summary_of(run_dir)
    assert all(scene["status"] == "passed" for scene in data["scenes"])
    frames = stages(data)["frames"]
    if markexpr == "summary":  # the frames were retrieved for the summary, their tests not selected
        assert (frames["status"], frames["work_ran"]) == ("deselected", True)
    else:
        assert frames["status"] == "passed"


def test_scenes_setting_precedence_flag_env_ini(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\ngemdirect_scenes = 5\n")

    def collected(*args: str) -> int:
        result = runpytest(project, "--collect-only", "-q", "-m", "svd", *args)
        return sum(1 for line in result.outlines if "test_generation[scene-" in line)

    assert collected() == 5  # ini
    monkeypatch.setenv("GEMDIRECT_SCENES", "4")
    assert collected() == 4  # env beats ini
    assert collected("--scenes", "2") == 2  # flag beats env


@pytest.mark.parametrize(
    ("args", "env", "ini", "expected"),
    [
        (["--scenes", "0"], {}, "", "*invalid value '0' for scenes (from --scenes)*at least 1*"),
        ([], {"GEMDIRECT_SCENE_MAX_WAIT": "soon"}, "", "*scene_max_wait (from GEMDIRECT_SCENE_MAX_WAIT)*"),
        (
            [],
            {},
            "gemdirect_story_mode = maybe\n",
            "*story_mode (from ini gemdirect_story_mode)*auto, llm, fallback*",
        ),
        (
            ["--sim-fault", "nope"],
            {},
            "",
            "*unknown fault 'nope'; known faults: *crash, crash-restart, execution-error*",
        ),
        (["--comfyui-url", "localhost:8188"], {}, "", "*comfyui_url*http:// or https:// URL*"),
    ],
)
def test_invalid_settings_stop_the_run_naming_setting_and_source(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict,
    ini: str,
    expected: str,
) -> None:
    if ini:
        project.makeini("[pytest]\n" + ini)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runpytest(project, "-m", "e2e", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_plain_unit_test_run_makes_no_run_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = runpytest(pytester, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "logs").exists()


def test_collect_only_makes_no_run_directory(project: pytest.Pytester) -> None:
    result = runpytest(project, "-p", "no:cacheprovider", "-m", "e2e", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_generation[[]scene-003[]]*"])
    assert not (project.path / "logs").exists()


def test_generation_only_run_leaves_no_scene_running(shared_runs: SharedRuns) -> None:
    # -m svd generates but never retrieves: the finished summary must not claim a scene is still running
    run = shared_runs.get(GENERATION_ONLY)
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=3)
    data = summary_of(run_dir)
    assert stages(data)["svd"]["status"] == "passed"
    assert (stages(data)["frames"]["status"], stages(data)["frames"]["work_ran"]) == ("deselected", False)
    for scene in data["scenes"]:
        assert scene["status"] == "not_reached"
        assert "not retrieved" in scene["message"]
        assert [attempt["outcome"] for attempt in scene["attempts"]] == ["success"]


def test_a_pipeline_test_failing_outside_its_stage_fails_the_summary(project: pytest.Pytester) -> None:
    # A user's fixture breaks test_story's setup; the story's work still runs for the later stages
    # and passes, but pytest counts an error: the summary must not say PASSED.
    project.makeconftest(
        """
import pytest

@pytest.fixture(autouse=True)
def broken_for_the_story(request):
    if request.node.name == "test_story":
        raise RuntimeError("the user's fixture broke")
"""
    )
    result, run_dir, _ = run_e2e(project)
    result.assert_outcomes(passed=10, skipped=1, errors=1)
    data = summary_of(run_dir)
    assert stages(data)["story"]["status"] == "passed"
    assert data["status"] == "failed"
    assert "test_story" in data["status_reason"] and "outside the stage's own check" in data["status_reason"]
    result.stdout.fnmatch_lines(["*gemdirect verdict: FAILED*test_story*"])


def _made_by_us(folder: Path) -> list[str]:
    """What lies in a project folder, less what pytester itself keeps there (basetemp, captured output)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith("runpytest-") and p.name not in ("stdout", "stderr")
    )


def _without_timings(lines: list[str]) -> list[str]:
    return [
        re.sub(r" in [\d.]+s", "", line) for line in lines if not line.startswith(("plugins:", "rootdir:"))
    ]


def test_a_project_without_pipeline_tests_sees_nothing_of_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    before = _made_by_us(pytester.path)
    loaded = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    unloaded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:gemdirect")
    assert loaded.ret == unloaded.ret == pytest.ExitCode.OK
    assert _without_timings(loaded.outlines) == _without_timings(unloaded.outlines)
    assert "gemdirect" not in loaded.stderr.str()
    assert _made_by_us(pytester.path) == before


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--markers",),
        ("--fixtures",),
        ("-m", "e2e", "-k", "no_such_test"),
        ("-m", "e2e", "--collect-only"),
        ("-n", "2", "-p", "no:benchmark", "-k", "not test_"),
    ],
    ids=["help", "markers", "fixtures", "k-matches-nothing", "collect-only", "xdist-nothing-selected"],
)
def test_runs_that_run_no_stage_create_nothing(project: pytest.Pytester, args: tuple[str, ...]) -> None:
    before = _made_by_us(project.path)
    result = runpytest(project, "-p", "no:cacheprovider", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    assert _made_by_us(project.path) == before
    assert "gemdirect run directory" not in result.stdout.str()


def test_e2e_without_the_pipeline_says_which_line_collects_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = runpytest(pytester, "-p", "no:cacheprovider", "-m", "e2e")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        ["*no pipeline test was collected*", "*from pytest_gemdirect.pipeline_tests import *"]
    )


def test_deselected_stages_say_why_their_rows_look_as_they_do(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(GENERATION_ONLY)  # 3 scenes; this test ran its own with one before
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=3)
    by_stage = stages(summary_of(run_dir))
    assert by_stage["svd"]["message"] is None  # selected: its own outcome speaks
    # a deselected stage has its own word, in the summary, the terminal, the text and the report
    assert (by_stage["story"]["status"], by_stage["story"]["work_ran"]) == ("deselected", True)
    assert (
        by_stage["story"]["message"]
        == "its tests were not selected; its work ran for the stages that needed it"
    )
    assert (by_stage["frames"]["status"], by_stage["frames"]["work_ran"]) == ("deselected", False)
    assert by_stage["frames"]["message"] == "its tests were not selected and no selected test needed its work"
    result.stdout.fnmatch_lines(["[[] ] story            deselected", "[[]+] generation       passed"])
    assert "[+] story" not in result.stdout.str() and "not_reached" not in result.stdout.str()
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    assert "[ ] story            deselected" in text and "[ ] frame retrieval  deselected" in text
    page = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    rows = {
        row.get_text(" ", strip=True).split(" deselected")[0]
        for row in page.select("tr.gd-status-deselected")
    }
    assert any("story" in row for row in rows) and any("frame retrieval" in row for row in rows), rows


def test_the_simulated_gpu_says_so_and_the_simulators_files_stay_out(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # 3 scenes and the README's check beside the stages
    result, run_dir = run.result, run.run_dir
    result.assert_outcomes(passed=11 + 3, skipped=1)
    comfyui = summary_of(run_dir)["comfyui"]
    assert comfyui["devices"] and all(d["name"] == "simulated GPU, 24 GiB" for d in comfyui["devices"])
    assert comfyui["pytorch"] == "none (simulated)"
    page = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    text = page.get_text(" ")
    assert "RTX" not in text and "cu130" not in text  # nothing reads like real hardware
    assert "no GPU visible to this machine (ComfyUI's GPU is simulated)" in text
    assert not [td for td in page.find_all("td") if re.match(r"\s*-\d", td.get_text())]  # no negative "taken"
    assert not (run_dir / "simulator").exists()
    assert (run_dir / "simulator.log").is_file()
