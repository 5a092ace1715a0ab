"""The app's own profiles run end to end on the embedded stack (issue 20): ``--app-settings`` and friends.

Few whole-pipeline runs, each asserting all it shows: the image-to-video profile (two scenes), the
first-last-frame profile in bookend mode with ComfyUI drawing both keyframes (one scene), the SVD
file with its placeholders and ``SVD\\`` checkpoint (one scene), and a custom-node profile that stops
at the ComfyUI stage. Start-up errors stop pytest before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_gemdirect.video import read_info
from tests.outside import REPO, run_e2e, runpytest, scenes, stages, summary_of

APP = REPO / "tests" / "data" / "gemdirect-app" / "localGenSettings.json"
GRAPHS = REPO / "tests" / "data" / "graphs"
QUICK = ("--story-mode", "fallback", "--sim-step-seconds", "0")


def queued(run_dir: Path, scene_id: str) -> dict[str, Any]:
    """The workflow the scene queued, as the harness wrote it."""
    data: dict[str, Any] = json.loads((run_dir / scene_id / "workflow.json").read_text(encoding="utf-8"))
    return data


def story_scenes(run_dir: Path) -> dict[str, dict[str, Any]]:
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    return {scene["id"]: scene for scene in story["scenes"]}


def test_the_apps_image_to_video_profile_runs_with_the_scene_in_its_mapped_inputs(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_e2e(project, f"--app-settings={APP}", "--scenes", "2", *QUICK)
    result.stdout.fnmatch_lines(
        [
            "*comfyUIUrl http://127.0.0.1:8188 is not used: the embedded stack runs*--comfyui-url=http://127.0.0.1:8188*"
        ]
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    data = summary_of(run_dir)
    assert data["comfyui"]["workflow"] == f"profile wan22-i2v ({APP})"
    assert any("role feta_weight (4:shift) is not filled" in w for w in data["warnings"]), data["warnings"]
    written = story_scenes(run_dir)
    for scene_id, scene in scenes(data).items():
        video = scene["video"]
        assert (video["frame_count"], video["width"], video["height"]) == (49, 1280, 544), video
        assert video["fps"] == pytest.approx(24.0) and video["problems"] == []
        graph = queued(run_dir, scene_id)
        assert graph["5"]["inputs"]["text"] == written[scene_id]["visual_prompt"]  # human_readable_prompt
        assert scene_id in graph["7"]["inputs"]["image"]  # keyframe_image: the uploaded keyframe
        assert graph["9"]["inputs"]["seed"] == 42  # the run's seed (--llm-seed)
        assert graph["12"]["inputs"]["filename_prefix"].startswith(f"gemdirect/{scene_id}/")


def test_bookend_mode_runs_the_first_last_frame_profile_on_two_keyframes_drawn_by_comfyui(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_e2e(
        project,
        f"--app-settings={APP}",
        "--keyframes=bookend",
        "--image-profile=app",
        "--scenes",
        "1",
        *QUICK,
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    data = summary_of(run_dir)
    assert data["comfyui"]["workflow"] == f"profile wan22-flf ({APP})"
    assert data["comfyui"]["keyframe_workflow"] == f"profile flux-keyframe ({APP})"
    video = scenes(data)["scene-001"]["video"]
    assert (video["frame_count"], video["width"], video["height"]) == (49, 832, 480), video
    assert video["fps"] == pytest.approx(16.0)
    graph = queued(run_dir, "scene-001")
    start, end = graph["7"]["inputs"]["image"], graph["8"]["inputs"]["image"]
    assert start.endswith("scene-001.png") and end.endswith("scene-001-end.png")
    keyframes = run_dir / "story" / "keyframes"
    start_png, end_png = keyframes / "scene-001.png", keyframes / "scene-001-end.png"
    assert start_png.read_bytes() != end_png.read_bytes(), "the end keyframe is drawn on its own"
    assert (run_dir / "scene-001" / "keyframe-end.png").read_bytes() == end_png.read_bytes()
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'alt="end keyframe of scene-001"' in report and 'href="scene-001/keyframe-end.png"' in report
    notes = scenes(data)["scene-001"]["notes"]
    assert any(n.startswith("keyframe drawn by ComfyUI") for n in notes), notes
    assert any(n.startswith("end keyframe drawn by ComfyUI") for n in notes), notes


def test_the_apps_svd_file_with_placeholders_and_a_subfolder_checkpoint_passes(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_e2e(
        project, f"--workflow={GRAPHS / 'svd_app_nodes_dict.json'}", "--scenes", "1", *QUICK
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    video = scenes(summary_of(run_dir))["scene-001"]["video"]
    assert (video["frame_count"], video["width"], video["height"]) == (25, 576, 1024), video
    assert video["fps"] is None, "a SaveImage sequence has no rate of its own"
    assert read_info(run_dir / video["clip"]).fps == pytest.approx(24.0)  # the gallery clip: SVD's fps
    graph = queued(run_dir, "scene-001")
    assert "__" not in json.dumps(graph), "every placeholder is replaced"
    assert graph["1"]["inputs"]["ckpt_name"].replace("\\", "/") == "SVD/svd_xt.safetensors"
    assert graph["8"]["inputs"]["value"] == story_scenes(run_dir)["scene-001"]["visual_prompt"]


def test_a_custom_node_profile_is_refused_at_the_comfyui_stage_naming_its_classes(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_e2e(
        project, f"--app-settings={APP}", "--video-profile=wan22-vhs", "--scenes", "1", *QUICK
    )
    assert result.ret == 1
    data = summary_of(run_dir)
    comfy = stages(data)["comfyui"]
    assert comfy["status"] == "failed"
    assert "the server has no node class VHS_VideoCombine: VHS_VideoCombine (node 11)" in comfy["message"]
    assert "UNETLoader" not in comfy["message"], "every core class of the profile is offered"
    assert stages(data)["svd"]["status"] == "not_reached"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--video-profile=wan-typo",),
            "*names profile 'wan-typo', which workflowProfiles lacks;"
            " the file has: flux-keyframe, svd-legacy, wan22-flf, wan22-i2v, wan22-vhs*",
        ),
        (
            ("--keyframes=bookend", "--video-profile=svd-legacy"),
            "*profile svd-legacy: bookend mode needs a LoadImage for start_image*",
        ),
    ],
)
def test_profile_errors_stop_the_run_at_startup(
    project: pytest.Pytester, args: tuple[str, ...], expected: str
) -> None:
    result = runpytest(project, "-p", "no:cacheprovider", f"--app-settings={APP}", "-m", "e2e", *args)
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"*pytest-gemdirect: app_settings (from --app-settings): {expected}"])
    assert not (project.path / "logs").exists(), "nothing is created"
