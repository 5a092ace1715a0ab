"""Stage 3, story (marker ``story``): N scenes, valid against story.schema.json, a keyframe (or two) each.

The story comes from one of: a story file (``--story``, the app's shape or the harness's), the
app's generator (``--story-command``), or the LLM / the deterministic fallback (``--story-mode``).
A story file's original is kept as ``story/source-story.json``. Keyframes: the story file's own
pictures where it has them, else drawn by the built-in renderer (or later by ComfyUI with
``--keyframe-workflow``); in bookend mode each scene has a start and an end keyframe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.rundir import atomic_write_bytes, atomic_write_json
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.llm import LLMHealth
from pytest_gemdirect.stages.pipeline import NotReached, StageFailed, StageSkipped
from pytest_gemdirect.stages.story_keyframes import place_keyframes
from pytest_gemdirect.story import StoryError, make_story, story_hash
from pytest_gemdirect.story.schema import story_metadata
from pytest_gemdirect.story.story_file import StoryFile, StoryFileError

SOURCE_COPY = "source-story.json"
"""The story file as it was given (or as the generator wrote it), kept in the run's story/."""


@dataclass(frozen=True)
class SceneScript:
    """One scene of the story, as the generation stage uses it."""

    id: str
    title: str
    visual_prompt: str
    keyframe: Path  # scene-NNN/keyframe.png (drawn later when ComfyUI draws keyframes); bookend: the start
    end_keyframe: Path | None = None  # bookend mode: scene-NNN/keyframe-end.png, the scene's last frame
    negative_prompt: str | None = None  # what the scene's video must not show (the app's negativePrompt)
    motion: str | None = None  # the camera movement (the app's cameraMovement, the LLM's motion_prompt)


@dataclass(frozen=True)
class Story:
    """The run's story: the document itself (schema-valid) and its scenes."""

    document: dict[str, Any]
    path: Path
    scenes: tuple[SceneScript, ...]

    def scene(self, scene_id: str) -> SceneScript:
        return next(scene for scene in self.scenes if scene.id == scene_id)

    @property
    def fallback_reason(self) -> str | None:
        reason = self.document.get("metadata", {}).get("fallback_reason")
        return str(reason) if reason else None


def keyframe_mode(settings: Settings) -> str:
    """``single`` (one keyframe a scene) or ``bookend`` (a start and an end keyframe a scene)."""
    from pytest_gemdirect.app_settings import keyframe_mode as chosen_mode

    return chosen_mode(settings)  # --keyframes, else the app settings' keyframeMode, else single


def _llm_for_mode(mode: str, llm: Callable[[], LLMHealth]) -> tuple[LLMHealth | None, str | None]:
    """The LLM the story mode asks for, or (auto mode) why the deterministic story is used."""
    if mode == "llm":
        try:
            return llm(), None
        except StageFailed:
            raise NotReached("not reached: llm failed") from None
    if mode == "auto":
        try:
            return llm(), None
        except (StageFailed, NotReached, StageSkipped) as exc:
            return None, str(exc)
    return None, None


def write(ctx: StageContext, llm: Callable[[], LLMHealth]) -> Story:
    settings = ctx.settings
    source: StoryFile | None = None
    if settings.story is not None or settings.story_command is not None:
        source, document = _from_file(ctx)
    else:
        document = _written(ctx, llm)
    got = len(document["scenes"])
    if got != settings.scenes:
        asked = f"the scenes setting asks for {settings.scenes} ({settings.sources['scenes']})"
        hint = f"; set --scenes={got}" if settings.story_command is not None else ""
        raise StageFailed(f"story has {got} scenes, {asked}{hint}")
    mode = keyframe_mode(settings)
    document["metadata"]["keyframe_mode"] = mode
    scripts = _scripts(ctx, document, mode)
    place_keyframes(ctx, document, scripts, source)
    try:
        jsonschema.validate(document, load_schema("story.schema.json"))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(top)"
        raise StageFailed(
            f"story does not match schemas/story.schema.json at {where}: {exc.message}"
        ) from None
    story = _save(ctx, document, scripts)
    if story.fallback_reason:
        ctx.summary.warn(f"story: fell back to the deterministic story: {story.fallback_reason}")
    if settings.sources["scenes"].endswith("is not used)"):
        ctx.summary.warn(f"story: scenes {settings.sources['scenes']}")
    for note in source.notes if source else ():
        ctx.summary.warn(f"story: {note}")
    return story


def _written(ctx: StageContext, llm: Callable[[], LLMHealth]) -> dict[str, Any]:
    """The story the LLM writes (or the deterministic fallback), by the story mode."""
    settings = ctx.settings
    mode = settings.story_mode
    healthy, unhealthy = _llm_for_mode(mode, llm)
    try:
        return make_story(
            mode,
            client=healthy.client if healthy else None,
            health=healthy.health if healthy else None,
            unhealthy_reason=unhealthy,
            scene_count=settings.scenes,
            model=settings.llm_model,
            seed=settings.llm_seed,
            temperature=settings.llm_temperature,
            deadline=Deadline(settings.llm_timeout * 4, setting="llm_timeout"),
        )
    except StoryError as exc:
        raise StageFailed(f"story ({mode} mode): {exc}") from None


def _from_file(ctx: StageContext) -> tuple[StoryFile, dict[str, Any]]:
    """The story of ``--story`` (read again: it was read at start-up) or of ``--story-command``."""
    from pytest_gemdirect.story.command import StoryCommandError, run_story_command
    from pytest_gemdirect.story.story_file import load_story_file

    settings = ctx.settings
    kept = ctx.run.story_dir / SOURCE_COPY
    source_info: dict[str, Any] = {"command": None, "exit_code": None, "log": None, "duration_s": None}
    try:
        if settings.story is not None:
            mode, source = "file", load_story_file(settings.story)
        else:
            mode, log = "command", ctx.run.story_dir / "generator.log"
            assert settings.story_command is not None, "a story source is set: a file or a command"
            ctx.summary.artifact("story_generator_log", log)
            generated = run_story_command(
                settings.story_command,
                out=ctx.run.story_dir / "generated" / "story.json",
                cwd=ctx.suite_cwd,
                log_path=log,
                timeout_s=settings.story_command_timeout,
                run_dir=ctx.run.root,
            )
            source = generated.story
            source_info.update(
                command=generated.command,
                exit_code=generated.exit_code,
                log=ctx.run.relative(log),
                duration_s=round(generated.duration_s, 3),
            )
    except (StoryFileError, StoryCommandError) as exc:
        raise StageFailed(f"story: {exc}") from None
    atomic_write_bytes(kept, source.raw)
    ctx.summary.artifact("story_source", kept)
    document = dict(source.document)
    document["metadata"] = story_metadata(
        mode=mode,
        requested_mode=mode,
        fallback_reason=None,
        model=None,
        seed=settings.llm_seed,
        temperature=None,
        request_form=None,
        attempts=0,
        latency_s=source_info["duration_s"],
        story_hash=story_hash(document),
        attempt_log=[],
    )
    document["metadata"]["source"] = {
        "path": str(source.path),
        "shape": source.shape,
        "kept_as": ctx.run.relative(kept),
        **source_info,
        "notes": list(source.notes),
    }
    return source, document


def _scripts(ctx: StageContext, document: dict[str, Any], mode: str) -> tuple[SceneScript, ...]:
    scripts = []
    for scene in document["scenes"]:
        scene_dir = ctx.run.scene_dir(scene["id"])
        scene_dir.mkdir(parents=True, exist_ok=True)
        scripts.append(
            SceneScript(
                scene["id"],
                scene["title"],
                scene["visual_prompt"],
                scene_dir / "keyframe.png",
                end_keyframe=scene_dir / "keyframe-end.png" if mode == "bookend" else None,
                negative_prompt=scene.get("negative_prompt"),
                motion=scene.get("motion_prompt"),
            )
        )
    return tuple(scripts)


def _save(ctx: StageContext, document: dict[str, Any], scripts: tuple[SceneScript, ...]) -> Story:
    path = ctx.run.story_dir / "story.json"
    atomic_write_json(path, document)
    for script in scripts:
        files = {"keyframe": ctx.run.relative(script.keyframe)}
        if script.end_keyframe is not None:
            files["keyframe_end"] = ctx.run.relative(script.end_keyframe)
        ctx.summary.update_scene(script.id, title=script.title, files=files)
    ctx.summary.set_section("story", {"path": ctx.run.relative(path), **document})
    ctx.summary.artifact("story", path)
    return Story(document, path, scripts)
