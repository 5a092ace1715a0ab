"""The frames stage proves the video, from the outside: a generated project runs ``pytest -m e2e`` on
the simulator and we read the exit status, run-summary.json (schema-checked) and the run directory.

The video faults share one run (tests/runs.py: SPOILT_VIDEO), one fault a scene: each spoilt scene's
frames stage fails naming the figure and the threshold, the clean scene-001 passes. No test here
says how long anything took (figures belong in benchmarks/).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pytest_gemdirect.comfyui.outputs import DownloadedFile
from pytest_gemdirect.settings import SPECS_BY_NAME
from pytest_gemdirect.stages.video_checks import choose_source
from tests.outside import FAST, PipelineRun, items, run_e2e, scenes, summary_of
from tests.runs import PASSING, SMOKE, SPOILT_VIDEO, SPOILT_VIDEO_FAULTS, SharedRuns


def video_run(project: pytest.Pytester, *extra: str) -> PipelineRun:
    """A fallback story of 3 scenes with FAST's policy values, then ``extra`` (SMOKE's line, and more)."""
    return run_e2e(project, "--story-mode", "fallback", "--scenes", "3", *FAST, *extra)


def assert_only_that_scene_failed_its_frames(data: dict, scene_id: str) -> str:
    """The clean scene passed, ``scene_id`` failed at its frames only; its frames message."""
    by_scene = scenes(data)
    assert by_scene["scene-001"]["status"] == "passed"
    assert by_scene[scene_id]["status"] == "failed"
    assert by_scene[scene_id]["failed_stage"] == "frames"
    assert items(data, "svd")[f"svd[{scene_id}]"]["status"] == "passed"
    frames = items(data, "frames")
    assert frames["frames[scene-001]"]["status"] == "passed"
    message = frames[f"frames[{scene_id}]"]["message"]
    assert message.startswith(f"{scene_id} frame_00001_.png")  # the scene and the file
    return message


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("frozen", ["frozen", "motion 0.00 is below the threshold 0.50", "--min-motion"]),
        (
            "black-frames",
            ["black", "6 of 25 frames black (frames 1, 5, 9", "--black-level", "99%", "--black-share"],
        ),
        ("short", ["frame_count", "12 frames, expected 25"]),
        ("wrong-size", ["size", "frames are 128x72, expected 256x144"]),  # the run queues SMALL_GRAPH
    ],
)
def test_a_spoilt_video_fails_that_scenes_frames_naming_its_figure(
    shared_runs: SharedRuns, fault: str, words: list[str]
) -> None:
    run = shared_runs.get(SPOILT_VIDEO)
    result, run_dir = run.result, run.run_dir
    (scene_id,) = [scene for scene, spoilt in SPOILT_VIDEO_FAULTS.items() if spoilt == fault]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    message = assert_only_that_scene_failed_its_frames(data, scene_id)
    for word in words:
        assert word in message, (word, message)
    video = scenes(data)[scene_id]["video"]
    assert video["problems"] and all(p in message for p in video["problems"])
    assert (run_dir / video["clip"]).is_file()  # the spoilt clip can be watched too
    result.stdout.fnmatch_lines([f"*{scene_id}*{words[0]}*"])


def test_a_default_run_records_motion_a_clip_and_the_checked_figures(shared_runs: SharedRuns) -> None:
    # the default run (LLM story); this test ran its own on the fallback story before
    run = shared_runs.get(PASSING)
    result, run_dir = run.result, run.run_dir
    assert result.ret == pytest.ExitCode.OK
    data = summary_of(run_dir)
    floor = SPECS_BY_NAME["min_motion"].default
    assert data["settings"]["min_motion"] == floor
    for scene_id, scene in scenes(data).items():
        video = scene["video"]
        assert (video["frame_count"], video["width"], video["height"]) == (25, 1024, 576)
        assert video["motion"] > floor
        assert len(video["motion_series"]) == 24 and all(m >= 0 for m in video["motion_series"])
        assert video["black_frames"] == video["flat_frames"] == video["problems"] == []
        assert video["clip"] == f"{scene_id}/clip.mp4" and scene["files"]["clip"] == video["clip"]
        with av.open(str(run_dir / video["clip"])) as clip:
            stream = clip.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert sum(1 for _ in clip.decode(stream)) == 25
        assert "drift" not in scene  # no --baseline


@pytest.mark.parametrize(("workflow", "codec"), [("smoke_video", "h264"), ("smoke_webm", "vp9")])
def test_a_video_output_is_decoded_and_its_frames_counted(
    project: pytest.Pytester, workflow: str, codec: str
) -> None:
    result, run_dir, _ = video_run(project, "--workflow", workflow)
    assert result.ret == pytest.ExitCode.OK
    for scene in scenes(summary_of(run_dir)).values():
        video = scene["video"]
        assert (video["frame_count"], video["width"], video["height"], video["codec"]) == (8, 256, 144, codec)
        assert video["fps"] == 8.0 and video["duration_s"] == pytest.approx(1.0)
        assert scene["frame_count"] == 8  # the video file counts its frames, not 1
        assert video["source"]["class_type"] == ("SaveVideo" if codec == "h264" else "SaveWEBM")
        assert video["motion"] > SPECS_BY_NAME["min_motion"].default


def test_the_smoke_workflow_moves(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(SMOKE)
    assert run.result.ret == pytest.ExitCode.OK
    for scene in scenes(summary_of(run.run_dir)).values():
        assert scene["video"]["frame_count"] == 8 and scene["video"]["problems"] == []


# --- drift against a baseline run -----------------------------------------------------------------


@pytest.fixture
def baseline_run(shared_runs: SharedRuns, tmp_path: Path) -> Path:
    """An earlier run of the smoke workflow, same seed: a copy of the shared SMOKE run, this test's own
    to alter."""
    run = shared_runs.get(SMOKE)
    assert run.result.ret == pytest.ExitCode.OK
    return run.copy_to(tmp_path / "baseline")


def test_the_same_seed_against_a_baseline_is_near_identical(
    project: pytest.Pytester, baseline_run: Path
) -> None:
    result, run_dir, _ = video_run(project, "--workflow", "smoke", f"--baseline={baseline_run}")
    assert result.ret == pytest.ExitCode.OK
    data = summary_of(run_dir)
    for scene in scenes(data).values():
        drift = scene["drift"]
        assert drift["comparable"] is True and drift["flagged"] is False
        assert drift["min_psnr"] is None or drift["min_psnr"] >= drift["tolerance"]
        assert len(drift["per_frame"]) == 8
    assert not [w for w in data["warnings"] if "drift" in w]


def scramble_one_frame(baseline: Path, scene_id: str) -> None:
    """Overwrite one PNG of the baseline's scene with noise of the same size."""
    frame = sorted((baseline / scene_id / "generated-frames").glob("*.png"))[3]
    with Image.open(frame) as image:
        size = image.size
    noise = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(frame)


def test_an_altered_baseline_scene_is_flagged_as_a_warning(
    project: pytest.Pytester, baseline_run: Path
) -> None:
    scramble_one_frame(baseline_run, "scene-002")
    result, run_dir, _ = video_run(project, "--workflow", "smoke", f"--baseline={baseline_run}")
    assert result.ret == pytest.ExitCode.OK  # drift is a warning by default
    data = summary_of(run_dir)
    by_scene = scenes(data)
    drift = by_scene["scene-002"]["drift"]
    assert drift["flagged"] is True and drift["min_psnr"] < drift["tolerance"]
    assert drift["per_frame"][3] == drift["min_psnr"]
    assert "--drift-tolerance" in drift["message"]
    assert by_scene["scene-001"]["drift"]["flagged"] is by_scene["scene-003"]["drift"]["flagged"] is False
    assert any("scene-002" in w and "drift" in w for w in data["warnings"])


def test_with_drift_fails_an_altered_scene_fails_its_frames(
    project: pytest.Pytester, baseline_run: Path
) -> None:
    scramble_one_frame(baseline_run, "scene-002")
    result, run_dir, _ = video_run(
        project, "--workflow", "smoke", f"--baseline={baseline_run}", "--drift-fails", "true"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    by_scene = scenes(data)
    assert by_scene["scene-002"]["status"] == "failed"
    assert by_scene["scene-001"]["status"] == by_scene["scene-003"]["status"] == "passed"
    message = items(data, "frames")["frames[scene-002]"]["message"]
    assert "drift" in message and "--drift-tolerance" in message and "--drift-fails" in message


def test_a_baseline_of_another_workflow_is_not_compared(project: pytest.Pytester, baseline_run: Path) -> None:
    result, run_dir, _ = video_run(project, "--workflow", "smoke_video", f"--baseline={baseline_run}")
    assert result.ret == pytest.ExitCode.OK
    data = summary_of(run_dir)
    for scene in scenes(data).values():
        drift = scene["drift"]
        assert drift["comparable"] is False and drift["flagged"] is False
        assert drift["reason"].startswith("not comparable: the workflow hash")
    assert any("not comparable" in w for w in data["warnings"])


def test_a_baseline_of_another_seed_is_not_compared(project: pytest.Pytester, baseline_run: Path) -> None:
    result, run_dir, _ = video_run(
        project, "--workflow", "smoke", f"--baseline={baseline_run}", "--llm-seed", "7"
    )
    assert result.ret == pytest.ExitCode.OK
    reason = scenes(summary_of(run_dir))["scene-001"]["drift"]["reason"]
    assert "the seed 7 differs from the baseline's 42" in reason


def test_the_summary_stage_checks_that_the_clip_exists() -> None:
    from pytest_gemdirect.stages.summary import _named_files

    data = {
        "artifacts": {},
        "scenes": [{"id": "scene-001", "files": {}, "video": {"clip": "scene-001/clip.mp4"}}],
    }
    assert ("scene-001.video.clip", "scene-001/clip.mp4") in _named_files(data)


# --- which output is the scene's video ------------------------------------------------------------


def downloaded(node_id: str, name: str, frames: int = 1) -> DownloadedFile:
    return DownloadedFile(f"/run/{name}", node_id, name, "0" * 64, 10, frames, 8, 8, False, name)


def test_with_several_save_nodes_the_one_expected_to_hold_the_most_frames_is_checked() -> None:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "width": 32, "height": 16}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}},
        "5": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 0], "fps": 8.0}},
    }
    files = [downloaded("2", f"f{i}.png") for i in range(8)] + [downloaded("5", "a.webp", 16)]
    source = choose_source(files, workflow)
    assert source is not None and (source.node_id, source.class_type) == ("5", "SaveAnimatedWEBP")
    assert source.paths == [Path("/run/a.webp")] and not source.is_sequence
    assert "node 5 (SaveAnimatedWEBP)" in source.note and "not checked: node 2 (SaveImage)" in source.note
    assert source.label("scene-001") == "scene-001 a.webp"


def test_one_save_node_of_stills_is_one_sequence_in_the_order_history_lists_it() -> None:
    files = [downloaded("7", f"frame_{i:05d}_.png") for i in (1, 2, 10)]
    source = choose_source(files, {"7": {"class_type": "SaveImage", "inputs": {}}})
    assert source is not None and source.is_sequence and source.note == ""
    assert [p.name for p in source.paths] == ["frame_00001_.png", "frame_00002_.png", "frame_00010_.png"]
    assert source.label("scene-002") == "scene-002 frame_00001_.png … frame_00010_.png (3 files)"
    assert choose_source([], {}) is None
