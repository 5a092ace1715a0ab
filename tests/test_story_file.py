"""A story someone else wrote: the app's story file read and mapped, bad files named at start-up,
the app's generator run under a deadline, and the end keyframe of bookend mode.

Loader and generator are tested as they are called (real files, real processes); the run itself
is in tests/test_pipeline_app_story.py.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pytest_gemdirect.settings import SettingError, Settings, resolve
from pytest_gemdirect.startup_checks import check_startup, with_files_read
from pytest_gemdirect.story import fallback_story, render_keyframe, render_keyframes, request_schema
from pytest_gemdirect.story.command import StoryCommandError, run_story_command, story_command_argv
from pytest_gemdirect.story.keyframes import later_keyframe
from pytest_gemdirect.story.story_file import StoryFileError, foreign_path, load_story_file

APP_STORY = Path(__file__).parent / "data" / "app-story"
GENERATOR = APP_STORY / "generate_story.py"


def app_story() -> dict:
    return json.loads((APP_STORY / "story.json").read_text(encoding="utf-8"))


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_the_apps_story_file_is_mapped_scene_by_scene() -> None:
    loaded = load_story_file(APP_STORY / "story.json")
    source = app_story()
    assert loaded.shape == "app" and loaded.scene_count == 3
    assert loaded.document["title"] == "story-harbour-courier"
    assert loaded.document["logline"] == source["logline"]
    for scene, original in zip(loaded.document["scenes"], source["scenes"], strict=True):
        assert scene["id"] == original["id"]
        assert scene["title"] == original["title"]
        assert scene["visual_prompt"] == original["prompt"]
        assert scene["motion_prompt"] == original["cameraMovement"]
        assert scene["negative_prompt"] == original["negativePrompt"]
        assert "source_id" not in scene
    assert loaded.notes == ("the story file says: scene-003: keyframe was not rendered (ComfyUI offline)",)
    assert loaded.raw == (APP_STORY / "story.json").read_bytes()


def test_keyframes_come_from_keyframe_path_then_beside_the_file_else_none() -> None:
    first, second, third = load_story_file(APP_STORY / "story.json").keyframes
    # C:\Users\… from the app's machine: not a file here, so keyframes/scene-001.png beside the story
    if sys.platform != "win32":
        assert "is a Windows path from another machine" in first.note
    assert first.path == APP_STORY / "keyframes" / "scene-001.png"
    assert first.note.startswith("keyframes/scene-001.png beside the story file")
    assert second.path == APP_STORY / "pictures" / "harbour-at-dawn.png"
    assert second.note == "keyframePath pictures/harbour-at-dawn.png"
    assert third.path is None
    assert "D:/renders/gemdirect/scene-003.png" in third.note


@pytest.mark.parametrize(
    ("path", "platform", "foreign"),
    [
        ("C:\\Users\\someone\\story\\keyframes\\scene-001.png", "linux", True),
        ("d:/renders/scene.png", "darwin", True),
        ("\\\\nas\\share\\scene.png", "linux", True),
        ("C:\\Users\\someone\\scene.png", "win32", False),
        ("/home/someone/scene.png", "linux", False),
        ("keyframes\\scene-001.png", "linux", False),
    ],
)
def test_a_windows_path_is_foreign_on_other_platforms(path: str, platform: str, foreign: bool) -> None:
    assert foreign_path(path, platform=platform) is foreign


def test_ids_are_renumbered_in_file_order_and_the_beside_file_keyframe_found_by_the_files_id(
    tmp_path: Path,
) -> None:
    (tmp_path / "keyframes").mkdir()
    shutil.copyfile(APP_STORY / "keyframes" / "scene-001.png", tmp_path / "keyframes" / "opening.png")
    story = {"scenes": [{"id": "opening", "prompt": "a quay"}, {"id": "scene-7", "prompt": "a door"}]}
    loaded = load_story_file(write(tmp_path / "story.json", story))
    assert [s["id"] for s in loaded.document["scenes"]] == ["scene-001", "scene-002"]
    assert [s["source_id"] for s in loaded.document["scenes"]] == ["opening", "scene-7"]
    assert [s["title"] for s in loaded.document["scenes"]] == ["opening", "scene-7"]
    assert loaded.document["title"] == "story from story.json"
    assert loaded.document["scenes"][0]["motion_prompt"] == "static camera"
    assert loaded.keyframes[0].path == tmp_path / "keyframes" / "opening.png"
    assert loaded.notes == ("scene ids renumbered in file order: opening -> scene-001, scene-7 -> scene-002",)


def test_the_harness_shape_is_read_too_with_its_keyframe_files(tmp_path: Path) -> None:
    story = fallback_story(2, seed=7)
    render_keyframes(story, tmp_path / "keyframes", size=(64, 36), moment="end")
    story["scenes"][0]["end_keyframe"] = "keyframes/scene-001-end.png"
    story["metadata"] = {"mode": "fallback"}  # an earlier run's story.json
    loaded = load_story_file(write(tmp_path / "story.json", story))
    assert loaded.shape == "harness"
    assert [s["visual_prompt"] for s in loaded.document["scenes"]] == [
        s["visual_prompt"] for s in story["scenes"]
    ]
    assert "metadata" not in loaded.document
    assert loaded.end_keyframes[0].path == tmp_path / "keyframes" / "scene-001-end.png"
    assert loaded.end_keyframes[1].path == tmp_path / "keyframes" / "scene-002-end.png"  # found beside
    assert loaded.keyframes[0].path is None


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s["scenes"][1].pop("prompt"), "field scenes/1/prompt is missing"),
        (lambda s: s["scenes"][2].update(prompt=42), "field scenes/2/prompt does not fit: 42 is not of type"),
        (lambda s: s["scenes"][0].update(prompt="   "), "field scenes/0/prompt does not fit"),
        (lambda s: s.update(scenes=[]), "field scenes does not fit"),
        (lambda s: s["scenes"][1].update(keyframePath=7), "field scenes/1/keyframePath does not fit"),
        (lambda s: s.update(warnings="none"), "field warnings does not fit"),
    ],
)
def test_a_story_that_does_not_fit_names_the_file_and_the_first_field(tmp_path: Path, edit, field) -> None:
    story = app_story()
    edit(story)
    path = write(tmp_path / "story.json", story)
    with pytest.raises(StoryFileError) as caught:
        load_story_file(path)
    message = str(caught.value)
    assert message.startswith(f"story {path}: read as the app's story shape"), message
    assert field in message, message


def test_the_harness_shape_is_checked_against_its_own_schema(tmp_path: Path) -> None:
    story = fallback_story(1, seed=1)
    story["scenes"][0]["visual_prompt"] = ""
    path = write(tmp_path / "story.json", story)
    with pytest.raises(StoryFileError, match=r"read as the harness's story shape .* scenes/0/visual_prompt"):
        load_story_file(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"scenes": [', "not valid JSON: Expecting value at line 1 column 13"),
        (b"[1, 2]", "the file holds a JSON list, not a story object"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_a_file_that_is_no_story_object_says_why(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "story.json"
    path.write_bytes(content)
    with pytest.raises(StoryFileError, match=problem):
        load_story_file(path)


def test_a_keyframe_that_is_no_image_is_named_with_its_scene(tmp_path: Path) -> None:
    (tmp_path / "keyframes").mkdir()
    (tmp_path / "keyframes" / "scene-002.png").write_text("not a picture", encoding="utf-8")
    story = {"scenes": [{"id": "scene-001", "prompt": "a"}, {"id": "scene-002", "prompt": "b"}]}
    with pytest.raises(StoryFileError, match="scene-002's keyframe keyframes/scene-002.png beside the story"):
        load_story_file(write(tmp_path / "story.json", story))


def test_a_story_file_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "story.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"scenes": [{"id": "a", "prompt": "b"}]}).encode())
    assert load_story_file(path).scene_count == 1


# --- settings -----------------------------------------------------------------------------------


def configured(flags: dict, environ: dict[str, str] | None = None) -> Settings:
    """The settings as the plugin makes them at configure time: resolved, the story file read, checked."""
    settings = with_files_read(resolve(flags, {}, environ=environ or {}))
    check_startup(settings, rootpath=Path.cwd(), inipath=None)
    return settings


def test_the_story_file_says_how_many_scenes_there_are() -> None:
    path = str(APP_STORY / "story.json")
    settings = configured({"story": path})
    assert settings.scenes == 3
    assert settings.sources["scenes"] == f"from the story file {path}"
    given = configured({"story": path, "scenes": "5"})
    assert given.scenes == 3
    assert (
        given.sources["scenes"]
        == f"from the story file {path} (3 scenes; scenes = 5 from --scenes is not used)"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"story": "STORY", "story_command": "python gen.py --out {out}"},
            "story (from --story) and story_command (from --story-command) each say where the story comes",
        ),
        (
            {"story": "STORY", "story_mode": "llm"},
            "story (from --story) and story_mode (from --story-mode) each say where",
        ),
        (
            {"story_command": "python gen.py"},
            "has no {out}: it must say where the generator writes the story",
        ),
        (
            {"story_command": "python 'gen.py --out {out}"},
            'story_command "python \'gen.py --out {out}" cannot be',
        ),
        (
            {"story_command_timeout": "0"},
            "story_command_timeout (from --story-command-timeout): must be a number",
        ),
    ],
)
def test_story_settings_that_cannot_work_are_refused(flags: dict, message: str) -> None:
    flags = {k: v.replace("STORY", str(APP_STORY / "story.json")) for k, v in flags.items()}
    with pytest.raises(SettingError) as caught:
        configured(flags)
    assert message in str(caught.value)


def test_a_bad_story_file_is_a_setting_error_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path / "story.json", {"storyId": "x", "scenes": [{"id": "scene-001"}]})
    with pytest.raises(SettingError, match=r"invalid value for story \(from GEMDIRECT_STORY\): story .*"):
        configured({}, {"GEMDIRECT_STORY": str(path)})
    with pytest.raises(SettingError, match="field scenes/0/prompt is missing"):
        configured({"story": str(path)})


# --- the generator ------------------------------------------------------------------------------


def command_line(*argv: str) -> str:
    """``argv`` as one command line, quoted for this platform's splitter (``cmdline.split_command``)."""
    if sys.platform == "win32":
        return subprocess.list2cmdline(argv)
    return shlex.join(argv)


def python_command(*args: str) -> str:
    """The generator run by this Python."""
    return command_line(sys.executable, str(GENERATOR), *args)


def run_generator(command: str, tmp_path: Path, *, timeout_s: float = 60) -> None:
    run_story_command(
        command,
        out=tmp_path / "story.json",
        cwd=tmp_path,
        log_path=tmp_path / "generator.log",
        timeout_s=timeout_s,
        run_dir=tmp_path,
    )


def test_the_generator_writes_the_story_at_out_and_it_is_read(tmp_path: Path) -> None:
    out = tmp_path / "story" / "generated" / "story.json"
    work = tmp_path / "app"
    work.mkdir()
    generated = run_story_command(
        python_command("--out", "{out}", "--scenes", "2"),
        out=out,
        cwd=work,
        log_path=tmp_path / "generator.log",
        timeout_s=60,
        run_dir=tmp_path,
    )
    assert generated.exit_code == 0 and generated.argv[-3] == str(out)
    assert generated.story.scene_count == 2 and generated.story.path == out
    assert json.loads(out.read_text(encoding="utf-8"))["generator"]["cwd"] == str(work)
    assert generated.story.keyframes[0].path == out.parent / "keyframes" / "scene-001.png"
    assert generated.story.keyframes[1].path is None
    assert "scene 2/2" in (tmp_path / "generator.log").read_text(encoding="utf-8")


def test_a_failing_generator_is_named_with_its_exit_code_and_its_logs_last_lines(tmp_path: Path) -> None:
    command = python_command("--out", "{out}", "--fail")
    with pytest.raises(StoryCommandError) as caught:
        run_generator(command, tmp_path)
    message = str(caught.value)
    log = tmp_path / "generator.log"
    assert message.startswith(f"story command {command} exited 3; its log ({log}) ends:"), message
    assert "error: LM Studio is not reachable (ECONNREFUSED 127.0.0.1:1234)" in message


def test_a_generator_past_its_deadline_is_ended_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids.txt"
    with pytest.raises(StoryCommandError) as caught:
        run_generator(
            python_command("--out", "{out}", "--hang", "--pids", str(pids)), tmp_path, timeout_s=1.5
        )
    message = str(caught.value)
    assert "timed out after 1.5 s (--story-command-timeout); its process tree was ended" in message
    assert "waiting for the LLM ..." in message
    for pid in map(int, pids.read_text(encoding="utf-8").split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_generator_that_writes_nothing_or_nonsense_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoryCommandError, match=r"exited 0 but wrote no story at .*story\.json"):
        run_generator(command_line(sys.executable, "-c", "pass", "{out}"), tmp_path)
    script = tmp_path / "bad.py"
    script.write_text("import sys; open(sys.argv[1], 'w').write('{\"scenes\": 3}')", encoding="utf-8")
    with pytest.raises(
        StoryCommandError, match="wrote a story that cannot be used: .* field scenes does not fit"
    ):
        run_generator(command_line(sys.executable, str(script), "{out}"), tmp_path)


def test_a_generator_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        StoryCommandError, match="story command no-such-generator --out {out} could not start"
    ):
        run_generator("no-such-generator --out {out}", tmp_path, timeout_s=5)


def test_out_is_replaced_wherever_it_stands_in_an_argument() -> None:
    argv = story_command_argv("gen --out={out} --log {out}.log", Path("run") / "story.json")
    assert argv == [
        "gen",
        f"--out={Path('run') / 'story.json'}",
        "--log",
        f"{Path('run') / 'story.json'}.log",
    ]


# --- keyframes ----------------------------------------------------------------------------------


def mean_change(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_the_end_keyframe_is_the_same_scene_visibly_later() -> None:
    story = fallback_story(3, seed=11)
    for scene in story["scenes"]:
        start = render_keyframe(scene, story["title"], (256, 144))
        end = render_keyframe(scene, story["title"], (256, 144), moment="end")
        assert end.size == start.size
        assert mean_change(start, end) > 8, "a first-last-frame video needs somewhere to go"
        assert end.tobytes() == render_keyframe(scene, story["title"], (256, 144), moment="end").tobytes()
        other = render_keyframe(
            story["scenes"][0 if scene is not story["scenes"][0] else 1], story["title"], (256, 144)
        )
        # the end is nearer its own start than another scene's start is
        assert mean_change(start, end) < mean_change(start, other) * 1.5
    with pytest.raises(ValueError, match="moment must be one of start, end"):
        render_keyframe(story["scenes"][0], story["title"], (64, 36), moment="middle")


def test_a_given_start_keyframe_later_is_pushed_in_and_warmer_not_another_picture() -> None:
    with Image.open(APP_STORY / "pictures" / "harbour-at-dawn.png") as image:
        start = image.convert("RGB")
    end = later_keyframe(start, "scene-002 a quay")
    assert end.size == start.size
    assert mean_change(start, end) > 8
    assert end.tobytes() == later_keyframe(start, "scene-002 a quay").tobytes()


def test_the_llm_is_asked_only_for_what_it_writes() -> None:
    scene = request_schema(2)["properties"]["scenes"]["items"]
    assert (
        sorted(scene["properties"])
        == sorted(scene["required"])
        == sorted(["id", "title", "visual_prompt", "motion_prompt"])
    )
