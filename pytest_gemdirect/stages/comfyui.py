"""Stage 4, ComfyUI startup (marker ``comfyui``): ready, and the workflows' nodes and models offered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError
from pytest_gemdirect.comfyui.workflow import (
    KeyframePatch,
    WorkflowError,
    default_workflow_path,
    load_workflow,
    patch_keyframe_workflow,
    preflight,
    workflow_hash,
)
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.names import safe_file_name
from pytest_gemdirect.services import Backend, ServiceError
from pytest_gemdirect.stages.context import STARTUP_TIMEOUT_S, StageContext
from pytest_gemdirect.stages.pipeline import StageFailed
from pytest_gemdirect.startup_log import StartupWarning, find_startup_warnings


@dataclass(frozen=True)
class ComfyUIService:
    """A ready ComfyUI and the checked workflows the scenes run on it."""

    url: str
    client: ComfyClient
    workflow: dict[str, Any]
    keyframe_workflow: dict[str, Any] | None
    facts: dict[str, Any]  # the summary's ``comfyui`` section


def keyframe_patch(ctx: StageContext, scene_id: str, text: str) -> KeyframePatch:
    """How a scene's keyframe graph is filled in (prompt, save prefix, seed, size)."""
    return KeyframePatch(
        text=text,
        filename_prefix=f"gemdirect/{scene_id}/{safe_file_name(ctx.run.run_id)}/keyframe",
        seed=ctx.settings.llm_seed,
        size=ctx.settings.keyframe_size,
    )


def start(ctx: StageContext) -> ComfyUIService:
    try:
        backend = ctx.services.comfyui()
    except ServiceError as exc:
        raise StageFailed(f"ComfyUI: {exc}") from None
    client = ComfyClient(backend.url, max_body_bytes=ctx.max_body_bytes)
    deadline = Deadline(STARTUP_TIMEOUT_S)
    try:
        stats = client.system_stats(deadline=deadline)
        object_info = client.object_info(deadline=deadline)
    except ComfyError as exc:
        raise StageFailed(f"ComfyUI at {backend.url} did not answer: {exc}") from None
    backend.version = stats.get("system", {}).get("comfyui_version")
    ctx.summary.set_backend("comfyui", backend.to_dict())
    workflow_path = ctx.settings.workflow or default_workflow_path()
    try:
        workflow = load_workflow(workflow_path)
    except WorkflowError as exc:
        raise StageFailed(str(exc)) from None
    problems = preflight(workflow, object_info)
    keyframe_workflow = _keyframe_workflow(ctx, object_info, problems)
    facts = _facts(ctx, backend, stats, object_info, workflow_path, workflow, problems)
    ctx.summary.set_section("comfyui", facts)
    if problems:
        raise StageFailed(f"workflow {workflow_path} cannot run on {backend.url}: " + "; ".join(problems))
    return ComfyUIService(backend.url, client, workflow, keyframe_workflow, facts)


def _facts(
    ctx: StageContext,
    backend: Backend,
    stats: dict[str, Any],
    object_info: dict[str, Any],
    workflow_path: Path,
    workflow: dict[str, Any],
    problems: list[str],
) -> dict[str, Any]:
    system = stats.get("system", {})
    devices = stats.get("devices", [])
    if backend.simulated:  # a simulated "RTX 3090" must never read as a real one
        devices = [{**device, "name": f"{device.get('name')} (SIMULATED)"} for device in devices]
    return {
        "url": backend.url,
        "version": backend.version,
        "python": system.get("python_version"),
        "pytorch": system.get("pytorch_version"),
        "devices": devices,
        "workflow": str(workflow_path),
        "workflow_hash": workflow_hash(workflow),
        "keyframe_workflow": str(ctx.settings.keyframe_workflow or "") or None,
        "object_info_hash": workflow_hash(object_info),
        "node_classes": len(object_info),
        "preflight_problems": problems,
        "startup_log": ctx.run.relative(backend.log) if backend.log else None,
        "startup_warnings": [w.to_dict() for w in _startup_warnings(ctx, backend.log)],
    }


def _keyframe_workflow(
    ctx: StageContext, object_info: dict[str, Any], problems: list[str]
) -> dict[str, Any] | None:
    """The --keyframe-workflow graph, checked like the video one (its problems named by file)."""
    path = ctx.settings.keyframe_workflow
    if path is None:
        return None
    try:
        workflow = load_workflow(path)
        patch_keyframe_workflow(workflow, keyframe_patch(ctx, "scene-000", "check"), source=str(path))
    except WorkflowError as exc:
        problems.append(str(exc))
        return None
    problems += [f"keyframe workflow {path}: {problem}" for problem in preflight(workflow, object_info)]
    return workflow


def _startup_warnings(ctx: StageContext, log: str | None) -> list[StartupWarning]:
    """Non-blocking problems in a launched ComfyUI's startup log, as warnings of the run."""
    if not log or not Path(log).is_file() or ctx.services.comfyui_launched_locally() is False:
        return []
    warnings = find_startup_warnings(Path(log).read_text(encoding="utf-8", errors="replace"))
    for warning in warnings:
        ctx.summary.warn(f"ComfyUI startup ({warning.kind}): {warning.message}")
    return warnings
