"""Stage 3, story (marker ``story``): N scenes, valid against story.schema.json, one keyframe each."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.rundir import atomic_write_json
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.llm import LLMHealth
from pytest_gemdirect.stages.pipeline import NotReached, StageFailed, StageSkipped
from pytest_gemdirect.story import StoryError, make_story, render_keyframes


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


KEYFRAME_MODES: tuple[str, ...] = ("single", "bookend")


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
    mode = settings.story_mode
    healthy, unhealthy = _llm_for_mode(mode, llm)
    try:
        document = make_story(
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
    try:
        jsonschema.validate(document, load_schema("story.schema.json"))
    except jsonschema.ValidationError as exc:
        raise StageFailed(f"story does not match schemas/story.schema.json: {exc.message}") from None
    got = len(document["scenes"])
    if got != settings.scenes:
        raise StageFailed(f"story has {got} scenes, the scenes setting asks for {settings.scenes}")
    story = _save(ctx, document)
    if settings.keyframe_workflow is None and not settings.image_profile:  # else ComfyUI draws them
        keyframes = render_keyframes(document, ctx.run.story_dir / "keyframes", size=settings.keyframe_size)
        for scene, path in zip(story.scenes, keyframes, strict=True):
            shutil.copyfile(path, scene.keyframe)
    if story.fallback_reason:
        ctx.summary.warn(f"story: fell back to the deterministic story: {story.fallback_reason}")
    return story


def _save(ctx: StageContext, document: dict[str, Any]) -> Story:
    path = ctx.run.story_dir / "story.json"
    atomic_write_json(path, document)
    scenes = []
    for scene in document["scenes"]:
        ctx.summary.update_scene(scene["id"], title=scene["title"])
        scene_dir = ctx.run.scene_dir(scene["id"])
        scene_dir.mkdir(parents=True, exist_ok=True)
        scenes.append(
            SceneScript(scene["id"], scene["title"], scene["visual_prompt"], scene_dir / "keyframe.png")
        )
    ctx.summary.set_section("story", {"path": ctx.run.relative(path), **document})
    ctx.summary.artifact("story", path)
    return Story(document, path, tuple(scenes))
