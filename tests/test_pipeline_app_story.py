"""The app's story drives the run (``--story``, ``--story-command``), bookend keyframes shown everywhere.

Outside in: a user project runs ``pytest -m e2e`` in a subprocess; we read the run directory, the
summary and the report. Whole runs are few: one bookend run with the app's story checks what the
story, the keyframes, the summary and the gallery say; the generator runs are story-only
(``-m "e2e and story"``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from PIL import Image

from pytest_gemdirect.story import render_keyframe
from tests.outside import run_e2e, scenes, stages, summary_of

APP_STORY = Path(__file__).parent / "data" / "app-story"
FIRST_LAST_FRAME = Path(__file__).parent / "data" / "graphs" / "wan22_flf.json"
"""A WAN 2.2 first-last-frame graph: two LoadImage (7 start, 8 end), positive text 5, negative text 6."""
GENERATOR = APP_STORY / "generate_story.py"


def command_line(*argv: str) -> str:
    """``argv`` as one command line, quoted for this platform's splitter."""
    return subprocess.list2cmdline(argv) if sys.platform == "win32" else shlex.join(argv)


def small_first_last_frame_graph(folder: Path) -> Path:
    """The first-last-frame graph at 256x144 and 9 frames: the story is under test, not the size."""
    graph = json.loads(FIRST_LAST_FRAME.read_text(encoding="utf-8"))
    graph["9"]["inputs"].update(width=256, height=144, length=9)
    path = folder / "flf-small.json"
    path.write_text(json.dumps(graph), encoding="utf-8")
    return path


def test_the_apps_story_drives_a_bookend_run(project: pytest.Pytester, tmp_path: Path) -> None:
    story_file = APP_STORY / "story.json"
    result, run_dir, _ = run_e2e(
        project,
        f"--story={story_file}",
        "--scenes=2",  # the file has 3: the file wins, and the run says so
        "--keyframes=bookend",
        f"--workflow={small_first_last_frame_graph(tmp_path)}",
        "--keyframe-size=128x72",
        "--sim-keep-files=true",
        "--sim-step-seconds=0",
    )
    result.assert_outcomes(passed=11, skipped=1)  # 3 scenes (the file's), no suites
    app = json.loads(story_file.read_text(encoding="utf-8"))
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    data = summary_of(run_dir)

    # the original is kept; the story is the app's, mapped
    assert (run_dir / "story" / "source-story.json").read_bytes() == story_file.read_bytes()
    meta = story["metadata"]
    assert (meta["mode"], meta["keyframe_mode"]) == ("file", "bookend")
    assert meta["source"]["shape"] == "app" and meta["source"]["kept_as"] == "story/source-story.json"
    assert [s["visual_prompt"] for s in story["scenes"]] == [s["prompt"] for s in app["scenes"]]
    assert [s["negative_prompt"] for s in story["scenes"]] == [s["negativePrompt"] for s in app["scenes"]]
    assert [s["motion_prompt"] for s in story["scenes"]] == [s["cameraMovement"] for s in app["scenes"]]
    assert data["story"]["scenes"] == story["scenes"]
    warnings = "\n".join(data["warnings"])
    assert "scenes = 2 from --scenes is not used" in warnings
    assert "the story file says: scene-003: keyframe was not rendered (ComfyUI offline)" in warnings

    # keyframes: beside the file (scene-001), keyframePath (scene-002), drawn (scene-003)
    keyframes = run_dir / "story" / "keyframes"
    assert (keyframes / "scene-001.png").read_bytes() == (
        APP_STORY / "keyframes" / "scene-001.png"
    ).read_bytes()
    assert (keyframes / "scene-002.png").read_bytes() == (
        APP_STORY / "pictures" / "harbour-at-dawn.png"
    ).read_bytes()
    drawn = render_keyframe(story["scenes"][2], story["title"], (128, 72))
    with Image.open(keyframes / "scene-003.png") as image:
        assert image.convert("RGB").tobytes() == drawn.tobytes()
    sources = [s["keyframe_source"] for s in story["scenes"]]
    assert sources[0].startswith("keyframes/scene-001.png beside the story file")
    assert sources[1] == "keyframePath pictures/harbour-at-dawn.png"
    assert sources[2].startswith(
        "drawn by the built-in renderer (keyframePath D:/renders/gemdirect/scene-003.png"
    )
    assert story["scenes"][0]["end_keyframe_source"].startswith("the start keyframe later")
    assert story["scenes"][2]["end_keyframe_source"].startswith("drawn by the built-in renderer")

    for scene in story["scenes"]:
        scene_id, folder = scene["id"], run_dir / scene["id"]
        # both keyframes, different pictures, in the story, the scene folder and the summary
        assert (scene["keyframe"], scene["end_keyframe"]) == (
            f"keyframes/{scene_id}.png",
            f"keyframes/{scene_id}-end.png",
        )
        start, end = (
            (keyframes / f"{scene_id}.png").read_bytes(),
            (keyframes / f"{scene_id}-end.png").read_bytes(),
        )
        assert start != end
        assert (folder / "keyframe.png").read_bytes() == start
        assert (folder / "keyframe-end.png").read_bytes() == end
        files = scenes(data)[scene_id]["files"]
        assert (files["keyframe"], files["keyframe_end"]) == (
            f"{scene_id}/keyframe.png",
            f"{scene_id}/keyframe-end.png",
        )
        assert files["workflow"] == f"{scene_id}/workflow.json", "the frames stage keeps the story's files"
        # the scene's words and both keyframes are what ComfyUI was given
        queued = json.loads((folder / "workflow.json").read_text(encoding="utf-8"))
        assert queued["5"]["inputs"]["text"] == scene["visual_prompt"]
        assert queued["6"]["inputs"]["text"] == scene["negative_prompt"]
        uploaded = run_dir / "simulator" / "input"
        assert (uploaded / queued["7"]["inputs"]["image"]).read_bytes() == start
        assert (uploaded / queued["8"]["inputs"]["image"]).read_bytes() == end

    # the gallery shows both keyframes of every scene, linked to their files
    page = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    for scene in story["scenes"]:
        card = page.select_one(f'.gd-scene-card[data-scene="{scene["id"]}"]')
        assert card is not None
        shown = [(f.figcaption.get_text(), f.a["href"]) for f in card.select("figure.gd-keyframe")]
        assert shown == [
            ("start keyframe", f"{scene['id']}/keyframe.png"),
            ("end keyframe", f"{scene['id']}/keyframe-end.png"),
        ]
        assert all(
            img["src"].startswith("data:image/jpeg;base64,") for img in card.select("figure.gd-keyframe img")
        )


def story_only(project: pytest.Pytester, *args: str):
    return run_e2e(project, *args, markexpr="e2e and story")


def test_the_apps_generator_runs_and_its_story_is_loaded(project: pytest.Pytester) -> None:
    command = command_line(sys.executable, str(GENERATOR), "--out", "{out}", "--scenes", "2")
    result, run_dir, _ = story_only(project, f"--story-command={command}", "--scenes=2")
    result.assert_outcomes(passed=1)
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    out = run_dir / "story" / "generated" / "story.json"
    generated = json.loads(out.read_text(encoding="utf-8"))
    assert [s["visual_prompt"] for s in story["scenes"]] == [s["prompt"] for s in generated["scenes"]]
    assert generated["generator"]["cwd"] == str(project.path), "it runs in the suite folder (the rootdir)"
    assert (run_dir / "story" / "source-story.json").read_bytes() == out.read_bytes()
    source = story["metadata"]["source"]
    assert (story["metadata"]["mode"], source["command"], source["exit_code"]) == ("command", command, 0)
    assert source["log"] == "story/generator.log"
    assert "scene 2/2" in (run_dir / "story" / "generator.log").read_text(encoding="utf-8")
    # its keyframe beside the file is used; the one it did not write is drawn
    assert (run_dir / "scene-001" / "keyframe.png").read_bytes() == (
        out.parent / "keyframes" / "scene-001.png"
    ).read_bytes()
    assert story["scenes"][1]["keyframe_source"].startswith("drawn by the built-in renderer")


def test_a_failing_hanging_or_miscounting_generator_fails_the_story_stage_naming_it(
    project: pytest.Pytester,
) -> None:
    failing = command_line(sys.executable, str(GENERATOR), "--out", "{out}", "--fail")
    result, run_dir, _ = story_only(project, f"--story-command={failing}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*story: story command {failing} exited 3; its log ({run_dir / 'story' / 'generator.log'}) ends:*"]
    )
    result.stdout.fnmatch_lines(["*error: LM Studio is not reachable (ECONNREFUSED 127.0.0.1:1234)*"])
    assert stages(summary_of(run_dir))["story"]["status"] == "failed"

    hanging = command_line(sys.executable, str(GENERATOR), "--out", "{out}", "--hang")
    (project.path / "run").rename(project.path / "run-failing")
    result, run_dir, _ = story_only(project, f"--story-command={hanging}", "--story-command-timeout=1")
    result.assert_outcomes(failed=1)
    timed_out = "timed out after 1 s (--story-command-timeout); its process tree was ended"
    result.stdout.fnmatch_lines([f"*story command {hanging} {timed_out}*"])

    # the run was collected for --scenes; a generator that writes another count is named
    three = command_line(sys.executable, str(GENERATOR), "--out", "{out}", "--scenes", "3")
    (project.path / "run").rename(project.path / "run-hanging")
    result, run_dir, _ = story_only(project, f"--story-command={three}", "--scenes=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*story has 3 scenes, the scenes setting asks for 2 (from --scenes); set --scenes=3*"]
    )


def test_a_story_file_that_fits_neither_shape_stops_the_run_at_start_up(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    app = json.loads((APP_STORY / "story.json").read_text(encoding="utf-8"))
    del app["scenes"][1]["prompt"]
    bad = tmp_path / "story.json"
    bad.write_text(json.dumps(app), encoding="utf-8")
    result, run_dir, _ = run_e2e(project, f"--story={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*pytest-gemdirect: invalid value for story (from --story): story {bad}: read as the app's story"
            " shape (app-story.schema.json), field scenes/1/prompt is missing*"
        ]
    )
    assert not run_dir.exists(), "nothing is created for a run that cannot start"
