"""Stage 6, frame retrieval (marker ``frames``), one per scene: outputs listed, downloaded, decoded and
checked as a video (count, size, black, flat, frozen; drift against a baseline: ``video_checks``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gemdirect.comfyui.client import ComfyError
from pytest_gemdirect.comfyui.history import trim_history
from pytest_gemdirect.comfyui.outputs import (
    DownloadedFile,
    OutputDownloadError,
    OutputFile,
    download_outputs,
)
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.policy import POLICY_NAMES
from pytest_gemdirect.rundir import atomic_write_json
from pytest_gemdirect.stages import video_checks
from pytest_gemdirect.stages.context import StageContext, as_json
from pytest_gemdirect.stages.generation import Generation
from pytest_gemdirect.stages.pipeline import StageFailed
from pytest_gemdirect.stages.pool import SceneTicket
from pytest_gemdirect.stages.video_checks import VideoCheck
from pytest_gemdirect.text import visible

if TYPE_CHECKING:
    from PIL import Image

    from pytest_gemdirect.video import Frame


@dataclass(frozen=True)
class SceneFrames:
    """One scene's frames on disk: what a user's own per-scene check gets."""

    scene_id: str
    files: tuple[DownloadedFile, ...]
    frames_dir: Path
    history_path: Path
    video: VideoCheck | None = None
    """The decoded clip's figures and checks (None when nothing was decoded)."""

    @property
    def frame_count(self) -> int:
        """Frames in every file (a video file counts its decoded frames)."""
        return sum(f.frames for f in self.files)

    @property
    def paths(self) -> list[Path]:
        return [Path(f.path) for f in self.files]


def retrieve(ctx: StageContext, generation: Generation, ticket: SceneTicket | None = None) -> SceneFrames:
    """The scene's frames downloaded, decoded and checked: in the scene's own thread, the moment
    its job ended (``ticket`` lets a download wait for a server that went away meanwhile)."""
    scene_id = generation.scene_id
    scene_dir = ctx.run.scene_dir(scene_id)
    if generation.deferred is not None:
        _scene_details(ctx, generation, [])
        raise StageFailed(f"{scene_id} frame retrieval: {generation.deferred}")
    result = generation.result
    assert result is not None, "a generation without a deferred failure has a result"
    history_path = scene_dir / "history.json"
    atomic_write_json(history_path, trim_history(result.history))  # what we use, and excerpts of the rest
    started = time.monotonic()
    if result.cached:
        ctx.summary.warn(
            f"{scene_id}: ComfyUI answered from its cache; no new files were written for this run"
        )
    if not result.outputs:
        _scene_details(ctx, generation, [])
        raise StageFailed(f"{scene_id}: /history/{result.prompt_id} lists no output files")
    try:
        files = _download(ctx, generation, ticket)
    except ComfyError as exc:
        _scene_details(ctx, generation, [])
        raise StageFailed(f"{scene_id} frame retrieval: {exc}") from None
    shown = _Shown(ctx.run.frames_dir(scene_id))
    video, failure = _check_video(ctx, scene_id, files, shown.keep)
    if video is not None:
        files = list(video.files)
    frames = SceneFrames(scene_id, tuple(files), ctx.run.frames_dir(scene_id), history_path, video)
    # The report's thumbnails and animated preview, cached beside the frames before the summary
    # names the frames folder: a report rendered from then on finds them made, from the frames the
    # scan decoded, so no frame is decoded a second time.
    _warm_previews(ctx, scene_id, ctx.run.relative(scene_dir / "keyframe.png"), frames.frames_dir, shown)
    telemetry = {
        **(ctx.summary.scene(scene_id).get("telemetry") or {}),
        "retrieval_s": round(time.monotonic() - started, 3),
    }
    scene_files = {
        "keyframe": ctx.run.relative(scene_dir / "keyframe.png"),
        "history": ctx.run.relative(history_path),
        "scene": ctx.run.relative(scene_dir / "scene.json"),
        "events": ctx.run.relative(ctx.run.events_path(scene_id)),
        "workflow": ctx.run.relative(scene_dir / "workflow.json"),
    }
    extra: dict[str, Any] = {}
    if video is not None:
        extra["video"] = video.to_summary(ctx.run.relative)
        if video.scan.clip is not None:
            scene_files["clip"] = ctx.run.relative(video.scan.clip.path)
        if video.drift is not None:
            extra["drift"] = video.drift.to_summary()
    ctx.summary.update_scene(
        scene_id,
        frame_count=frames.frame_count,
        frames_dir=ctx.run.relative(frames.frames_dir),
        telemetry=telemetry,
        files={**(ctx.summary.scene(scene_id).get("files") or {}), **scene_files},  # the story's keyframes
        **extra,
    )
    _scene_details(ctx, generation, files)
    if failure:
        raise StageFailed(failure)
    return frames


class _Shown:
    """The frames the report's previews show, kept as the scan passes them (small RGB copies)."""

    def __init__(self, frames_dir: Path) -> None:
        from pytest_gemdirect.report.previews import shown_frames

        self.names = shown_frames(frames_dir)
        self.images: dict[str, Image.Image] = {}

    def keep(self, frame: Frame) -> None:
        if frame.rgb is not None and frame.source.name in self.names:
            from PIL import Image

            self.images[frame.source.name] = Image.fromarray(frame.rgb)


def _warm_previews(
    ctx: StageContext, scene_id: str, keyframe: str | None, frames_dir: Path, shown: _Shown
) -> None:
    """The scene's previews made in its own thread; the report makes them itself (and names what
    went wrong) when this fails."""
    from pytest_gemdirect.report.previews import scene_preview

    files = ctx.summary.scene(scene_id).get("files") or {}
    try:
        scene_preview(
            ctx.run.root,
            scene_id,
            keyframe,
            ctx.run.relative(frames_dir),
            keyframe_end_rel=files.get("keyframe_end"),
            decoded=shown.images,
        )
    except Exception:  # noqa: BLE001 - only a head start for the report
        return


def _download(ctx: StageContext, generation: Generation, ticket: SceneTicket | None) -> list[DownloadedFile]:
    """Every output file; when the server goes away part-way (a later scene's crash), the rest are
    fetched once it is back, into the same folder, or the scene fails naming each file lost."""
    assert generation.result is not None
    scene_id, server, outputs = generation.scene_id, generation.server, generation.result.outputs
    dest = ctx.run.frames_dir(scene_id)
    try:  # pixels=False: the scan decodes each frame, once, right after
        return download_outputs(generation.client, outputs, dest, deadline=generation.deadline, pixels=False)
    except OutputDownloadError as exc:
        if not exc.server_gone or ticket is None:
            raise
        kept = exc.downloaded
    ctx.summary.warn(
        f"{scene_id}: {server.name} went away while the scene's frames were fetched after its job"
        f" had ended; {len(kept)} of {len(outputs)} saved, the rest wait for the server to be back"
    )
    back = ticket.server_back(server)
    if back is None or not back.back:
        saved = {(f.node_id, f.source) for f in kept}
        lost = [o.where() for o in map(OutputFile.coerce, outputs) if (o.node_id, o.where()) not in saved]
        why = back.detail if back is not None else ticket.cancelled() or "the run was stopped"
        raise StageFailed(
            visible(
                f"{scene_id} frame retrieval: its job had ended, then {server.name} at {server.url} went"
                f" away ({why}); {len(lost)} of {len(outputs)} files lost: {', '.join(lost)};"
                f" {len(kept)} saved in {dest}"
            )
        )
    deadline = Deadline(ctx.settings.scene_max_wait, setting="scene_max_wait")
    files = download_outputs(generation.client, outputs, dest, deadline=deadline, already=kept, pixels=False)
    ctx.summary.warn(
        f"{scene_id}: the rest of its frames were fetched after {server.name} was back ({back.how})"
    )
    return files


def _check_video(
    ctx: StageContext, scene_id: str, files: list[DownloadedFile], on_frame: Callable[[Frame], None]
) -> tuple[VideoCheck | None, str | None]:
    """The scene's video checks and the failure they make (None: the frames passed)."""
    from pytest_gemdirect.video import DecodeError

    try:
        video = video_checks.check_scene(ctx, scene_id, files, on_frame)
    except DecodeError as exc:
        return None, f"{scene_id} frames: {exc}"
    if video is None:
        return None, None
    problems = video.problems
    drift = video.drift
    if drift is not None and not drift.comparable:
        ctx.summary.warn(f"--baseline {ctx.settings.baseline}: {drift.reason}")
    elif drift is not None and drift.drift is not None and drift.flagged:
        if ctx.settings.drift_fails:
            problems.append(f"{drift.drift.message} (--drift-fails true)")
        else:
            ctx.summary.warn(drift.drift.message)
    if not problems:
        return video, None
    return video, "; ".join(problems)  # each names the scene and the file


def _scene_details(ctx: StageContext, generation: Generation, frames: list[DownloadedFile]) -> None:
    """scene.json: the scene's summary record plus the settings, frames and samples behind it."""
    public = ctx.settings.public()
    details: dict[str, Any] = {
        "settings": {name: public[name] for name in POLICY_NAMES},
        "frames": [{**as_json(f), "path": ctx.run.relative(f.path)} for f in frames],
        "gpu_samples": generation.gpu_samples,
        "gpu_note": generation.gpu_note,
    }
    if generation.result is not None:
        details["progress"] = generation.result.progress
    ctx.summary.set_scene_details(generation.scene_id, details)
