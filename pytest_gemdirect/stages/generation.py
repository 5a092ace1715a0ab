"""Stage 5, generation (marker ``svd``), one per scene: the workflow queued and followed to the end.

Each attempt is bounded by ``--scene-max-wait``; a failure a re-queue can cure is retried up to
``--max-scene-retries`` times; every attempt and event is recorded as it happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, PromptRejected
from pytest_gemdirect.comfyui.job import JobFailed, JobResult, run_job
from pytest_gemdirect.comfyui.workflow import ScenePatch, WorkflowError, patch_workflow
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.gpu_sampler import GpuSampler
from pytest_gemdirect.names import safe_file_name
from pytest_gemdirect.rundir import atomic_write_json
from pytest_gemdirect.stages import keyframe
from pytest_gemdirect.stages.attempts import Next, after_failure
from pytest_gemdirect.stages.comfyui import ComfyServer, ComfyUIService
from pytest_gemdirect.stages.context import StageContext, now
from pytest_gemdirect.stages.pipeline import NotReached, StageFailed
from pytest_gemdirect.stages.pool import SceneTicket
from pytest_gemdirect.stages.story import SceneScript, Story


@dataclass
class Generation:
    """One scene's generation: what the frame-retrieval stage (and a user's own check) gets."""

    scene_id: str
    client: ComfyClient
    deadline: Deadline
    server: ComfyServer  # the server of the latest attempt (another one after a server died)
    result: JobResult | None = None
    deferred: JobFailed | None = None  # completion seen, outputs never in /history: frames fails
    attempts: list[dict[str, Any]] = field(default_factory=list)
    vram_free_before: int | None = None
    vram_free_after: int | None = None
    gpu_samples: list[dict[str, Any]] = field(default_factory=list)
    gpu_note: str | None = None
    notes: list[str] = field(default_factory=list)  # the harness's own, before the job's notes

    @property
    def prompt_id(self) -> str | None:
        return self.result.prompt_id if self.result else None


def generate(ctx: StageContext, ticket: SceneTicket, story: Story, comfy: ComfyUIService) -> Generation:
    """The scene's attempts on its server (another one after a server died), each recorded as it goes."""
    scene_id = ticket.scene_id
    if ctx.server_gone:
        raise NotReached(f"not reached: {ctx.server_gone}")
    deadline = ctx.policy.scene_deadline()
    generation = Generation(scene_id, ticket.server.client, deadline, ticket.server)
    ctx.summary.start_scene(scene_id)
    ctx.summary.update_scene(scene_id, server=ticket.server.url)
    scene = story.scene(scene_id)
    if comfy.keyframe_workflow is not None:
        keyframe.draw_all(ctx, generation, comfy, scene)
    prompt = _prepare(ctx, generation, scene, comfy)
    max_attempts = ctx.policy.max_attempts
    for number in range(1, max_attempts + 1):
        stop = ticket.cancelled()
        if stop is not None:
            raise StageFailed(f"{scene_id}: stopped before attempt {number}: {stop}")
        attempt = {
            "number": number,
            "started_at": now(),
            "ended_at": None,
            "outcome": "running",
            "reason": None,
        }
        attempt["server"] = generation.server.url
        generation.attempts.append(attempt)
        record_scene(ctx, generation)
        ctx.event(scene_id, {"t": now(), "event": "attempt_start", "attempt": number, "scene": scene_id})
        try:
            result = _follow(ctx, generation, prompt, number, ticket)
        except PromptRejected as exc:
            attempt.update(ended_at=now(), outcome="rejected", reason=str(exc))
            record_scene(ctx, generation)
            raise StageFailed(f"{scene_id}: ComfyUI rejected the workflow: {exc}") from None
        except JobFailed as failure:
            if _after_failed_attempt(ctx, generation, attempt, failure, max_attempts, ticket) is Next.DEFER:
                return generation
            if generation.server.url != attempt["server"]:  # the keyframe goes to the new server
                prompt = _prepare(ctx, generation, scene, comfy)
            generation.deadline = ctx.policy.scene_deadline()
            continue
        attempt.update(ended_at=now(), outcome="success", prompt_id=result.prompt_id)
        ctx.event(scene_id, {"t": now(), "event": "attempt_end", "attempt": number, "outcome": "success"})
        generation.result = result
        # The wait behind our own previous scene is not this scene's: frames get that time back.
        generation.deadline = generation.deadline.extended(result.timings.get("behind_own_s") or 0.0)
        generation.vram_free_after = _vram_free(generation.client, generation.deadline)
        record_scene(ctx, generation)
        for note in result.notes:
            ctx.summary.warn(f"{scene_id}: {note}")
        return generation
    raise AssertionError("unreachable: the attempt loop returns or raises")


def _prepare(
    ctx: StageContext, generation: Generation, scene: SceneScript, comfy: ComfyUIService
) -> dict[str, Any]:
    """Upload the keyframe(s) to the scene's server and fill in the workflow (written to workflow.json).

    The scene's words go where the profile's mapping (or the graph's wiring) says, the run's seed
    into every sampler; in bookend mode the start and end keyframes go to start_image/end_image.
    """
    scene_id = generation.scene_id
    graphs = comfy.graphs
    bookend = graphs is not None and graphs.video.plan.end is not None  # the graph takes an end keyframe
    base = f"gemdirect-{ctx.run.run_id}-{scene_id}"
    image_name = _upload(generation, scene.keyframe, f"{base}.png", "keyframe")
    end_name = None
    if bookend:
        end_name = _upload(
            generation, keyframe.end_keyframe_path(ctx, scene), f"{base}-end.png", "end keyframe"
        )
    try:
        generation.vram_free_before = _vram_free(generation.client, generation.deadline)
        prompt = patch_workflow(
            comfy.workflow,
            ScenePatch(
                image_name=image_name,
                filename_prefix=f"gemdirect/{scene_id}/{safe_file_name(ctx.run.run_id)}/frame",
                seed=ctx.settings.llm_seed,
                end_image_name=end_name,
                prompt=scene.visual_prompt,
                negative_prompt=scene.negative_prompt,
            ),
            plan=graphs.video.plan if graphs is not None else None,
            source=graphs.video.source if graphs is not None else "workflow",
        )
    except WorkflowError as exc:
        raise StageFailed(f"{scene_id}: {exc}") from None
    atomic_write_json(ctx.run.scene_dir(scene_id) / "workflow.json", prompt)
    return prompt


def _upload(generation: Generation, png: Path, name: str, what: str) -> str:
    """POST /upload/image; the name the LoadImage input takes (``subfolder/name`` when in a subfolder)."""
    if not png.is_file():
        raise StageFailed(f"{generation.scene_id}: the {what} {png} is missing: nothing to upload")
    try:
        uploaded = generation.client.upload_image(png, name=name, deadline=generation.deadline)
    except ComfyError as exc:
        raise StageFailed(f"{generation.scene_id}: uploading the {what} to ComfyUI failed: {exc}") from None
    return (
        f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else str(uploaded["name"])
    )


def _after_failed_attempt(
    ctx: StageContext,
    generation: Generation,
    attempt: dict[str, Any],
    failure: JobFailed,
    max_attempts: int,
    ticket: SceneTicket,
) -> Next:
    """Record the failed attempt; return RETRY or DEFER, or raise the stage's failure."""
    scene_id, number = generation.scene_id, attempt["number"]
    stopped = ticket.cancelled()  # the harness itself stopped the job (Ctrl-C, the test's timeout)
    reason = f"stopped by the harness: {stopped}" if stopped else str(failure)
    attempt.update(ended_at=now(), outcome=failure.kind, reason=reason)
    attempt["prompt_id"] = failure.evidence.get("prompt_id")
    record_scene(ctx, generation, evidence=failure.evidence)
    ctx.event(scene_id, {"t": now(), "event": "attempt_end", "attempt": number, "outcome": failure.kind})
    if stopped:
        raise StageFailed(f"{scene_id}: {reason}") from None
    step = after_failure(failure, number, max_attempts, can_defer=True)
    if step is Next.DEFER:
        generation.deferred = failure
    elif step is Next.SERVER_GONE:
        ctx.summary.warn(f"{scene_id}: {failure}")
        other = ticket.replace_server()
        if other is None:
            ctx.server_gone = f"ComfyUI server died during {scene_id}"
            raise StageFailed(f"{scene_id}: {failure}") from None
        if number >= max_attempts:
            tried = f" (attempt {number} of {max_attempts}, --max-scene-retries = {max_attempts - 1})"
            raise StageFailed(f"{scene_id} generation: {failure}{tried}") from None
        ctx.summary.warn(
            f"{scene_id}: {generation.server.name} went away; attempt {number + 1} goes to {other.name}"
        )
        generation.server, generation.client = other, other.client
        ctx.summary.update_scene(scene_id, server=other.url)
        step = Next.RETRY
    elif step is Next.RETRY:
        ctx.summary.warn(f"{scene_id}: attempt {number} failed ({failure.kind}); re-queued")
    else:
        tried = f" (attempt {number} of {max_attempts}, --max-scene-retries = {max_attempts - 1})"
        raise StageFailed(f"{scene_id} generation: {failure}{tried}") from None
    return step


def _follow(
    ctx: StageContext, generation: Generation, prompt: dict[str, Any], number: int, ticket: SceneTicket
) -> JobResult:
    """One attempt: queue and follow the job; sample the GPU meanwhile when ComfyUI runs here."""
    scene_id = generation.scene_id
    sampler = GpuSampler(interval_s=1.0) if ctx.services.comfyui_launched_locally() else None
    if sampler is not None:
        sampler.start()
    progress = ctx.progress

    def on_event(event: dict[str, Any]) -> None:
        ctx.event(scene_id, {**event, "scene_attempt": number})
        if event.get("event") == "queued":
            ticket.posted()
        node = event.get("node") if event.get("type") == "executing" else None
        if progress is not None and isinstance(node, str):
            progress.node(scene_id, f"{prompt.get(node, {}).get('class_type', '?')} (node {node})")

    try:
        return run_job(
            generation.client,
            prompt,
            policy=ctx.policy,
            on_event=on_event,
            on_progress=lambda value, maximum: progress(scene_id, value, maximum) if progress else None,
            is_server_alive=generation.server.alive,
            active=ctx.active_jobs,
            on_abandon=ctx.abandoned(scene_id, f"generation (attempt {number})"),
            behind=ticket.behind,
            tag=scene_id,
        )
    finally:
        if progress is not None:
            progress.done(scene_id)
        if sampler is not None:
            generation.gpu_samples += sampler.stop()
            generation.gpu_note = sampler.note
        else:
            generation.gpu_note = "GPU not sampled: ComfyUI was not launched by the harness on this machine"


def record_scene(
    ctx: StageContext, generation: Generation, *, evidence: dict[str, Any] | None = None
) -> None:
    """The scene's attempts, telemetry and notes in the summary, as they stand now."""
    result = generation.result
    timings = result.timings if result else {}
    telemetry = {
        "queue_wait_s": _delta(timings, "started_s", None),
        "behind_own_s": timings.get("behind_own_s"),  # part of the queue wait: behind our own previous scene
        "generation_s": _delta(
            timings, "completed_s", "started_s" if timings.get("started_s") else "queued_s"
        ),
        "seconds_per_step": result.seconds_per_step if result else None,
        "steps": result.progress[-1][2] if result and result.progress else None,
        "vram_free_before": generation.vram_free_before,
        "vram_free_after": generation.vram_free_after,
        "history_polls": result.poll_attempts if result else None,  # the app contract's HistoryAttempts
    }
    fields: dict[str, Any] = {"attempts": generation.attempts}
    if result:
        fields["prompt_id"] = result.prompt_id
        fields["notes"] = generation.notes + list(result.notes)
    if evidence is not None:
        fields["evidence"] = evidence
    old = ctx.summary.scene(generation.scene_id).get("telemetry") or {}
    fields["telemetry"] = {**old, **{k: v for k, v in telemetry.items() if v is not None}}
    ctx.summary.update_scene(generation.scene_id, **fields)


def _vram_free(client: ComfyClient, deadline: Deadline) -> int | None:
    try:
        devices = client.system_stats(deadline=deadline).get("devices") or []
    except ComfyError:
        return None
    free = devices[0].get("vram_free") if devices else None
    return int(free) if isinstance(free, int | float) else None


def _delta(timings: dict[str, Any], end: str, start: str | None) -> float | None:
    if timings.get(end) is None or (start is not None and timings.get(start) is None):
        return None
    return round(float(timings[end]) - (float(timings[start]) if start else 0.0), 3)
