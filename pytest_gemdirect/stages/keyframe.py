"""ComfyUI draws a scene's keyframe(s) (``--keyframe-workflow``, ``--image-profile``) before its video job.

In bookend mode it draws two: the start (``keyframe.png``) and the end (``keyframe-end.png``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gemdirect.comfyui.client import ComfyError
from pytest_gemdirect.comfyui.job import JobFailed
from pytest_gemdirect.comfyui.keyframes import DrawnKeyframe, draw_keyframe
from pytest_gemdirect.comfyui.roles import RolePlan
from pytest_gemdirect.stages.attempts import Next, after_failure
from pytest_gemdirect.stages.comfyui import keyframe_patch
from pytest_gemdirect.stages.context import StageContext, now
from pytest_gemdirect.stages.pipeline import StageFailed

if TYPE_CHECKING:
    from pytest_gemdirect.stages.comfyui import ComfyUIService
    from pytest_gemdirect.stages.generation import Generation
    from pytest_gemdirect.stages.story import SceneScript


def end_keyframe_path(ctx: StageContext, scene: SceneScript) -> Path:
    """Where the scene's end keyframe (bookend mode) is: the story's, else scene-NNN/keyframe-end.png."""
    end = scene.end_keyframe
    return end if end is not None else ctx.run.scene_dir(scene.id) / "keyframe-end.png"


def draw_all(ctx: StageContext, generation: Generation, comfy: ComfyUIService, scene: SceneScript) -> None:
    """The scene's keyframe, and in bookend mode its end keyframe, drawn by the keyframe graph."""
    assert comfy.keyframe_workflow is not None, "called only when ComfyUI draws the keyframes"
    graph = comfy.graphs.keyframe if comfy.graphs is not None else None
    source = "keyframe workflow" if graph is None else graph.source
    if graph is not None and graph.path is not None:
        source = f"--keyframe-workflow {graph.path}"
    plan = graph.plan if graph is not None else None
    negative = scene.negative_prompt
    draw(
        ctx,
        generation,
        comfy.keyframe_workflow,
        scene.visual_prompt,
        source=source,
        negative=negative,
        plan=plan,
    )
    if comfy.graphs is not None and comfy.graphs.keyframe_mode == "bookend":
        motion = scene.motion
        text = (
            f"{scene.visual_prompt}, {motion}, the shot's last moment"
            if motion
            else (f"{scene.visual_prompt}, the shot's last moment")
        )
        draw(
            ctx,
            generation,
            comfy.keyframe_workflow,
            text,
            source=source,
            negative=negative,
            end=end_keyframe_path(ctx, scene),
            plan=plan,
        )


def draw(
    ctx: StageContext,
    generation: Generation,
    workflow: dict[str, Any],
    text: str,
    *,
    source: str,
    negative: str | None = None,
    end: Path | None = None,
    plan: RolePlan | None = None,
) -> None:
    """Draw, retrying like a video attempt; the keyframe replaces scene-NNN/keyframe.png (or ``end``)."""
    scene_id = generation.scene_id
    max_attempts = ctx.policy.max_attempts
    drawn: DrawnKeyframe | None = None
    for number in range(1, max_attempts + 1):
        ctx.event(scene_id, {"t": now(), "event": "keyframe_start", "keyframe_attempt": number})
        try:
            drawn = _draw_once(ctx, generation, workflow, text, number, negative=negative, end=end, plan=plan)
            break
        except JobFailed as failure:
            ctx.summary.update_scene(scene_id, evidence=failure.evidence)
            step = after_failure(failure, number, max_attempts, can_defer=False)
            if step is Next.RETRY:
                ctx.summary.warn(f"{scene_id}: keyframe attempt {number} failed ({failure.kind}); re-queued")
                continue
            if step is Next.SERVER_GONE:
                ctx.server_gone = f"ComfyUI server died during {scene_id}"
            raise StageFailed(f"{scene_id} keyframe ({source}): {failure}") from None
        except ComfyError as exc:
            raise StageFailed(f"{scene_id} keyframe ({source}): {exc}") from None
    assert drawn is not None, "the attempt loop breaks or raises"
    story_copy = ctx.run.story_dir / "keyframes" / (f"{scene_id}-end.png" if end else f"{scene_id}.png")
    story_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(drawn.path, story_copy)
    ctx.event(scene_id, {"t": now(), "event": "keyframe_end", "prompt_id": drawn.prompt_id})
    took = f" in {drawn.seconds:.1f} s" if drawn.seconds is not None else ""
    generation.notes.append(
        f"{'end ' if end else ''}keyframe drawn by ComfyUI{took}"
        f" (prompt {drawn.prompt_id}, {drawn.source}, sha256 {drawn.sha256[:12]})"
    )
    ctx.summary.update_scene(scene_id, notes=list(generation.notes))


def _draw_once(
    ctx: StageContext,
    generation: Generation,
    workflow: dict[str, Any],
    text: str,
    number: int,
    *,
    negative: str | None,
    end: Path | None,
    plan: RolePlan | None,
) -> DrawnKeyframe:
    scene_id = generation.scene_id
    scene_dir = ctx.run.scene_dir(scene_id)
    return draw_keyframe(
        generation.client,
        workflow,
        keyframe_patch(ctx, scene_id, text, end=end is not None, negative=negative),
        end or scene_dir / "keyframe.png",
        policy=ctx.policy,
        outputs_dir=scene_dir / ("keyframe-end-outputs" if end else "keyframe-outputs"),
        deadline=generation.deadline,
        on_event=lambda event: ctx.event(scene_id, {**event, "keyframe_attempt": number}),
        is_server_alive=generation.server.alive,
        active=ctx.active_jobs,
        on_abandon=ctx.abandoned(scene_id, "keyframe drawing"),
        plan=plan,
    )
