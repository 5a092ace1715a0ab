"""ComfyUI draws a scene's keyframe (``--keyframe-workflow``) before its video job needs it."""

from __future__ import annotations

import shutil
from typing import Any, Protocol

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError
from pytest_gemdirect.comfyui.job import JobFailed
from pytest_gemdirect.comfyui.keyframes import DrawnKeyframe, draw_keyframe
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.stages.attempts import Next, after_failure
from pytest_gemdirect.stages.comfyui import ComfyServer, keyframe_patch
from pytest_gemdirect.stages.context import StageContext, now
from pytest_gemdirect.stages.pipeline import StageFailed


class Generation(Protocol):
    """What drawing a keyframe needs of the scene's generation (``generation.Generation`` is one);
    a protocol, so that this module, which generation imports, does not import it back."""

    scene_id: str
    client: ComfyClient
    deadline: Deadline
    server: ComfyServer
    notes: list[str]


def draw(ctx: StageContext, generation: Generation, workflow: dict[str, Any], text: str) -> None:
    """Draw, retrying like a video attempt; the drawn keyframe replaces scene-NNN/keyframe.png."""
    scene_id = generation.scene_id
    source = f"--keyframe-workflow {ctx.settings.keyframe_workflow}"
    max_attempts = ctx.policy.max_attempts
    drawn: DrawnKeyframe | None = None
    for number in range(1, max_attempts + 1):
        ctx.event(scene_id, {"t": now(), "event": "keyframe_start", "keyframe_attempt": number})
        try:
            drawn = _draw_once(ctx, generation, workflow, text, number)
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
    story_copy = ctx.run.story_dir / "keyframes" / f"{scene_id}.png"
    story_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(drawn.path, story_copy)
    ctx.event(scene_id, {"t": now(), "event": "keyframe_end", "prompt_id": drawn.prompt_id})
    took = f" in {drawn.seconds:.1f} s" if drawn.seconds is not None else ""
    generation.notes.append(
        f"keyframe drawn by ComfyUI{took}"
        f" (prompt {drawn.prompt_id}, {drawn.source}, sha256 {drawn.sha256[:12]})"
    )
    ctx.summary.update_scene(scene_id, notes=list(generation.notes))


def _draw_once(
    ctx: StageContext, generation: Generation, workflow: dict[str, Any], text: str, number: int
) -> DrawnKeyframe:
    scene_id = generation.scene_id
    scene_dir = ctx.run.scene_dir(scene_id)
    return draw_keyframe(
        generation.client,
        workflow,
        keyframe_patch(ctx, scene_id, text),
        scene_dir / "keyframe.png",
        policy=ctx.policy,
        outputs_dir=scene_dir / "keyframe-outputs",
        deadline=generation.deadline,
        on_event=lambda event: ctx.event(scene_id, {**event, "keyframe_attempt": number}),
        is_server_alive=generation.server.alive,
        active=ctx.active_jobs,
        on_abandon=ctx.abandoned(scene_id, "keyframe drawing"),
    )
