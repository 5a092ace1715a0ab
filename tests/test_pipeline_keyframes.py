"""``--keyframe-workflow``: ComfyUI draws each scene's keyframe, followed like the video job."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from pytest_gemdirect.comfyui.workflow import default_workflow_path
from pytest_gemdirect.story import render_keyframe
from tests.outside import (
    DEFAULT_GRAPH,
    FAST,
    SCENE_WAIT_THAT_FIRES,
    PipelineRun,
    events,
    interrupt,
    items,
    read_summary,
    run_e2e,
    scenes,
    stages,
    start_stalled_run,
    summary_of,
)

KEYFRAME_WORKFLOW = str(default_workflow_path("keyframe_txt2img.json"))


def keyframe_run(project: pytest.Pytester, *extra: str) -> PipelineRun:
    """``pytest -m e2e`` with ComfyUI drawing the keyframes (fallback story: no LLM needed)."""
    return run_e2e(project, "--story-mode", "fallback", f"--keyframe-workflow={KEYFRAME_WORKFLOW}", *extra)


def test_comfyui_draws_every_keyframe_and_the_video_starts_from_it(project: pytest.Pytester) -> None:
    result, run_dir, _ = keyframe_run(project, "--keyframe-size", "512x288")
    result.assert_outcomes(passed=10, skipped=2)  # fallback story: no LLM health; no suites
    data = summary_of(run_dir)
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    digests = set()
    for scene in story["scenes"]:
        keyframe = run_dir / scene["id"] / "keyframe.png"
        data_bytes = keyframe.read_bytes()
        assert data_bytes == (run_dir / "story" / "keyframes" / f"{scene['id']}.png").read_bytes()
        with Image.open(keyframe) as image:
            assert image.size == (512, 288)
            drawn = image.convert("RGB")
        built_in = render_keyframe(scene, story["title"], (512, 288))
        assert drawn.tobytes() != built_in.tobytes(), "the keyframe must come from ComfyUI, not the renderer"
        digests.add(hashlib.sha256(data_bytes).hexdigest())
        scene_events = events(run_dir, scene["id"])
        kinds = [e["event"] for e in scene_events]
        assert kinds.index("keyframe_start") < kinds.index("keyframe_end") < kinds.index("attempt_start")
        assert any(e.get("keyframe_attempt") == 1 and e["event"] == "ws" for e in scene_events)
        notes = scenes(data)[scene["id"]]["notes"]
        assert any(note.startswith("keyframe drawn by ComfyUI") for note in notes), notes
        video = json.loads((run_dir / scene["id"] / "workflow.json").read_text(encoding="utf-8"))
        loaded = next(n for n in video.values() if n["class_type"] == "LoadImage")
        assert scene["id"] in loaded["inputs"]["image"]
    assert len(digests) == 3, "each scene's prompt gives its own keyframe"
    assert data["comfyui"]["keyframe_workflow"] == KEYFRAME_WORKFLOW


def test_missing_keyframe_checkpoint_fails_the_comfyui_stage_naming_the_file(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    workflow = json.loads(Path(KEYFRAME_WORKFLOW).read_text(encoding="utf-8"))
    workflow["4"]["inputs"]["ckpt_name"] = "sd_xl_base_1.0.safetensors"
    path = tmp_path / "my-keyframes.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    # the simulator has every model a workflow names unless missing-model takes the first one away:
    # with the default video graph, the first is the keyframe workflow's
    result, run_dir, _ = run_e2e(
        project,
        "--story-mode",
        "fallback",
        f"--keyframe-workflow={path}",
        "--sim-fault",
        "missing-model",
        graph=DEFAULT_GRAPH,
    )
    result.stdout.fnmatch_lines(
        [f"*keyframe workflow {path}: checkpoint sd_xl_base_1.0.safetensors is not in models/checkpoints*"]
    )
    data = summary_of(run_dir)
    assert stages(data)["comfyui"]["status"] == "failed"
    assert stages(data)["svd"]["status"] == "not_reached"
    assert not (run_dir / "scene-001" / "keyframe.png").exists(), "no keyframe from the built-in renderer"


def test_a_failed_keyframe_attempt_is_re_queued(project: pytest.Pytester) -> None:
    result, run_dir, _ = keyframe_run(project, *FAST, "--sim-fault", "flaky@scene-002")
    result.assert_outcomes(passed=10, skipped=2)  # fallback story: no LLM health; no suites
    data = summary_of(run_dir)
    assert any(
        "scene-002: keyframe attempt 1 failed (execution_error); re-queued" in w for w in data["warnings"]
    )
    starts = [e for e in events(run_dir, "scene-002") if e["event"] == "keyframe_start"]
    assert [e["keyframe_attempt"] for e in starts] == [1, 2]


def test_a_stalled_keyframe_fails_that_scene_at_the_deadline_and_the_run_goes_on(
    project: pytest.Pytester,
) -> None:
    _, run_dir, _ = keyframe_run(project, *FAST, *SCENE_WAIT_THAT_FIRES, "--sim-fault", "stall@scene-002")
    data = summary_of(run_dir)
    generation = items(data, "svd")
    assert generation["svd[scene-002]"]["status"] == "failed"
    message = generation["svd[scene-002]"]["message"]
    assert "scene-002 keyframe (--keyframe-workflow" in message, message
    assert f"--scene-max-wait = {SCENE_WAIT_THAT_FIRES[1]} s" in message, message
    assert "last progress 19/20" in message, message
    assert generation["svd[scene-003]"]["status"] == "passed"
    assert scenes(data)["scene-003"]["status"] == "passed"
    assert (run_dir / "report.html").is_file()


def test_a_scene_whose_keyframe_is_being_drawn_is_running_in_the_live_summary(
    project: pytest.Pytester,
) -> None:
    proc, run_dir = start_stalled_run(project, f"--keyframe-workflow={KEYFRAME_WORKFLOW}")
    try:
        deadline = time.monotonic() + 60
        live = None
        while time.monotonic() < deadline and live is None:
            events_file = run_dir / "scene-002" / "events.jsonl"
            if events_file.is_file() and '"keyframe_attempt": 1' in events_file.read_text(encoding="utf-8"):
                live = read_summary(run_dir / "run-summary.json")
            assert proc.poll() is None, "pytest ended before scene-002's keyframe was being drawn"
            time.sleep(0.1)
    finally:
        interrupt(proc)
    assert live is not None, "scene-002's keyframe job never started"
    assert scenes(live)["scene-002"]["status"] == "running"
    assert scenes(live)["scene-002"]["attempts"] == [], "no video attempt yet: the keyframe is drawn first"
