"""The story's keyframes put in place: ``story/keyframes/scene-NNN[-end].png`` and each scene's copy.

Per scene and moment (the start; in bookend mode the end too): the story file's own picture when it
has one, else the built-in renderer's (an end keyframe whose start came as a picture is that picture
later: :func:`later_keyframe`). With ``--keyframe-workflow`` or ``--image-profile`` ComfyUI draws them in
the generation stage instead. The story document records each file and where it came from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from pytest_gemdirect.rundir import atomic_write_bytes
from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.pipeline import StageFailed
from pytest_gemdirect.story import png_bytes, render_keyframes
from pytest_gemdirect.story.keyframes import keyframe_name, later_keyframe
from pytest_gemdirect.story.story_file import SourceKeyframe, StoryFile

if TYPE_CHECKING:
    from pytest_gemdirect.stages.story import SceneScript

RENDERER = "drawn by the built-in renderer"
LATER = "the start keyframe later (pushed in, evening light)"


def place_keyframes(
    ctx: StageContext, document: dict[str, Any], scripts: tuple[SceneScript, ...], source: StoryFile | None
) -> None:
    """Every scene's keyframe files made, copied into its folder and named in ``document``."""
    folder = ctx.run.story_dir / "keyframes"
    comfy_note = _comfy_draws(ctx)
    to_draw: dict[str, list[dict[str, Any]]] = {"start": [], "end": []}
    later: list[SceneScript] = []
    for index, (scene, script) in enumerate(zip(document["scenes"], scripts, strict=True)):
        moments = [("start", source.keyframes[index] if source else None)]
        if script.end_keyframe is not None:
            moments.append(("end", source.end_keyframes[index] if source else None))
        given_start = moments[0][1] is not None and moments[0][1].path is not None and comfy_note is None
        for moment, given in moments:
            prefix = "" if moment == "start" else "end_"
            name = keyframe_name(script.id, moment)
            scene[f"{prefix}keyframe"] = f"keyframes/{name}"
            if moment == "start" and comfy_note is not None:  # drawn in the generation stage
                scene["keyframe_source"] = _why(comfy_note, given)
            elif given is not None and given.path is not None:
                _copy(given.path, folder / name, script.id)
                scene[f"{prefix}keyframe_source"] = given.note
            elif comfy_note is not None:
                continue  # an end keyframe for ComfyUI to draw, from its start
            elif moment == "end" and given_start:
                later.append(script)
                scene["end_keyframe_source"] = _why(LATER, given)
            else:
                to_draw[moment].append(scene)
                scene[f"{prefix}keyframe_source"] = _why(RENDERER, given)
    for moment, scenes in to_draw.items():
        if scenes:
            render_keyframes(
                {**document, "scenes": scenes}, folder, size=ctx.settings.keyframe_size, moment=moment
            )
    for script in later:
        with Image.open(folder / keyframe_name(script.id)) as image:
            drawn = later_keyframe(image, f"{script.id} {script.visual_prompt}")
        atomic_write_bytes(folder / keyframe_name(script.id, "end"), png_bytes(drawn))
    for script in scripts:
        for moment, target in (("start", script.keyframe), ("end", script.end_keyframe)):
            made = folder / keyframe_name(script.id, moment)
            if target is not None and made.is_file():
                shutil.copyfile(made, target)


def _comfy_draws(ctx: StageContext) -> str | None:
    """How ComfyUI draws the keyframes in the generation stage, or None (they are made here)."""
    settings = ctx.settings
    if settings.keyframe_workflow is not None:
        return f"drawn by ComfyUI (--keyframe-workflow {settings.keyframe_workflow})"
    if settings.image_profile:
        return f"drawn by ComfyUI (--image-profile {settings.image_profile})"
    return None


def copy_keyframe(source: Path, target: Path) -> None:
    """A keyframe file copied as it is when it is a PNG, else converted to one (``target`` is .png)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as handle:
        is_png = handle.read(8) == b"\x89PNG\r\n\x1a\n"
    if is_png:
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        atomic_write_bytes(target, png_bytes(image.convert("RGB")))


def _copy(path: Path, target: Path, scene_id: str) -> None:
    try:
        copy_keyframe(path, target)
    except (OSError, ValueError) as exc:  # read at start-up; gone or changed since
        raise StageFailed(f"story: {scene_id}'s keyframe {path} cannot be used: {exc}") from None


def _why(how: str, given: SourceKeyframe | None) -> str:
    """How a keyframe was made, and why the story file's own was not used (when there was a file)."""
    return f"{how} ({given.note})" if given is not None else how
