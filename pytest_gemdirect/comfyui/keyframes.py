"""Draw a scene's keyframe with a ComfyUI text-to-image graph (``--keyframe-workflow``, ``--image-profile``).

The job is followed by the same client, policy and deadlines as the video job, so a keyframe
that never arrives fails the scene within scene-max-wait instead of hanging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError
from pytest_gemdirect.comfyui.job import ActiveJobs, run_job
from pytest_gemdirect.comfyui.outputs import DownloadedFile, download_outputs
from pytest_gemdirect.comfyui.roles import RolePlan
from pytest_gemdirect.comfyui.workflow import KeyframePatch, Workflow, patch_keyframe_workflow
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.policy import QueuePolicy
from pytest_gemdirect.rundir import atomic_write_bytes
from pytest_gemdirect.story import png_bytes


class KeyframeError(ComfyError):
    """The workflow ran but gave no usable picture."""


@dataclass
class DrawnKeyframe:
    """A keyframe drawn by ComfyUI: where it was saved and what made it."""

    path: Path
    prompt_id: str
    source: str  # subfolder/filename on the server
    sha256: str
    seconds: float | None  # queued to completed


def draw_keyframe(  # noqa: PLR0913 - keyword-only options, passed on to run_job
    client: ComfyClient,
    workflow: Workflow,
    patch: KeyframePatch,
    dest: Path,
    *,
    policy: QueuePolicy,
    outputs_dir: Path,
    deadline: Deadline,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    is_server_alive: Callable[[], bool] | None = None,
    active: ActiveJobs | None = None,
    on_abandon: Callable[[dict[str, Any]], None] | None = None,
    plan: RolePlan | None = None,
) -> DrawnKeyframe:
    """Queue the patched workflow, follow it, fetch its first image and save it as ``dest`` (PNG, sized).

    Raises ``JobFailed`` (from the job) or ``ComfyError`` (download, no image) with the reason.
    """
    prompt = patch_keyframe_workflow(workflow, patch, plan=plan)
    result = run_job(
        client,
        prompt,
        policy=policy,
        on_event=on_event,
        is_server_alive=is_server_alive,
        active=active,
        on_abandon=on_abandon,
    )
    if not result.outputs:
        raise KeyframeError(f"/history/{result.prompt_id} lists no output image for the keyframe")
    files = download_outputs(client, result.outputs, outputs_dir, deadline=deadline)
    first = _first_image(files)
    with Image.open(first.path) as image:
        picture = image.convert("RGB")
    if picture.size != patch.size:
        picture = picture.resize(patch.size, Image.Resampling.LANCZOS)
    atomic_write_bytes(dest, png_bytes(picture))
    started, completed = result.timings.get("queued_s"), result.timings.get("completed_s")
    return DrawnKeyframe(
        path=dest,
        prompt_id=result.prompt_id,
        source=first.source,
        sha256=first.sha256,
        seconds=round(completed - started, 3) if completed is not None and started is not None else None,
    )


def _first_image(files: list[DownloadedFile]) -> DownloadedFile:
    for file in files:
        if file.width and file.height and file.decoded:
            if file.flat:
                raise KeyframeError(f"the keyframe {file.source} is one flat colour: the graph drew nothing")
            return file
    names = ", ".join(f.source for f in files) or "none"
    raise KeyframeError(f"no output of the keyframe workflow is an image Pillow can read (got: {names})")
