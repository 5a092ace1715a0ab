"""Stage 4, ComfyUI startup (marker ``comfyui``): ready, and the workflows' nodes and models offered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.app_settings import AppSettingsError, Graph, RunGraphs, run_graphs
from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError
from pytest_gemdirect.comfyui.workflow import (
    KeyframePatch,
    WorkflowError,
    adapt_to_server,
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
class ComfyServer:
    """One ComfyUI server of the pool: where it is, a client for it, and whether it still lives."""

    name: str  # server-1, server-2 … in the order the servers were given
    url: str
    client: ComfyClient
    alive: Callable[[], bool]


@dataclass(frozen=True)
class ComfyUIService:
    """The ready ComfyUI servers and the checked workflows the scenes run on them."""

    servers: tuple[ComfyServer, ...]  # every server that answered and can run the workflow
    workflow: dict[str, Any]
    keyframe_workflow: dict[str, Any] | None
    facts: dict[str, Any]  # the summary's ``comfyui`` section
    graphs: RunGraphs | None = None  # where each graph came from and where its roles go

    @property
    def url(self) -> str:
        """The first server's URL."""
        return self.servers[0].url

    @property
    def client(self) -> ComfyClient:
        """A client of the first server."""
        return self.servers[0].client


@dataclass
class _Candidate:
    backend: Backend
    server: ComfyServer
    stats: dict[str, Any]
    object_info: dict[str, Any]
    problems: list[str]


def keyframe_patch(
    ctx: StageContext, scene_id: str, text: str, *, end: bool = False, negative: str | None = None
) -> KeyframePatch:
    """How a scene's keyframe graph is filled in (prompt, save prefix, seed, size); ``end``: bookend's end."""
    return KeyframePatch(
        text=text,
        filename_prefix=f"gemdirect/{scene_id}/{safe_file_name(ctx.run.run_id)}/keyframe"
        + ("-end" if end else ""),
        seed=ctx.settings.llm_seed + (1 if end else 0),
        size=ctx.settings.keyframe_size,
        negative=negative,
    )


def start(ctx: StageContext) -> ComfyUIService:
    try:
        backends = ctx.services.comfyui_pool()
    except ServiceError as exc:
        raise StageFailed(f"ComfyUI: {exc}") from None
    for left_out in ctx.services.left_out:
        ctx.summary.warn(left_out)
    try:
        graphs = run_graphs(ctx.settings)
    except (AppSettingsError, WorkflowError) as exc:
        raise StageFailed(str(exc)) from None
    for note in graphs.notes:
        ctx.summary.warn(note)
    workflow = graphs.video.workflow
    silent: list[str] = []  # servers that did not answer, in words
    candidates = [_check(ctx, b, n, workflow, len(backends), silent) for n, b in enumerate(backends, 1)]
    ready = [c for c in candidates if c is not None and not c.problems]
    first = ready[0] if ready else next((c for c in candidates if c is not None), None)
    if first is None:
        raise StageFailed("no ComfyUI server answered: " + "; ".join(silent))
    for number, candidate in enumerate(ready or [first]):
        ctx.summary.set_backend(
            "comfyui" if number == 0 else f"comfyui-{number + 1}", candidate.backend.to_dict()
        )
    problems = list(first.problems)
    workflow, spelled = adapt_to_server(workflow, first.object_info)
    keyframe_workflow = _keyframe_workflow(ctx, graphs.keyframe, first.object_info, problems, spelled)
    facts = _facts(ctx, first.backend, first.stats, first.object_info, graphs, workflow, problems)
    facts["model_names"] = spelled
    facts["servers"] = [
        {"name": c.server.name, "url": c.server.url, "version": c.backend.version} for c in ready
    ]
    for other in ready[1:]:  # one ComfyUI per GPU: each start-up log may hold its own warnings
        facts["startup_warnings"] += [w.to_dict() for w in _startup_warnings(ctx, other.backend.log)]
    ctx.summary.set_section("comfyui", facts)
    if problems:
        raise StageFailed(f"{graphs.video.source} cannot run on {first.backend.url}: " + "; ".join(problems))
    return ComfyUIService(tuple(c.server for c in ready), workflow, keyframe_workflow, facts, graphs)


def _check(
    ctx: StageContext,
    backend: Backend,
    number: int,
    workflow: dict[str, Any],
    pool_size: int,
    silent: list[str],
) -> _Candidate | None:
    """One server's health check and preflight; a failing server of a pool is left out with a warning."""
    client = ComfyClient(backend.url, max_body_bytes=ctx.max_body_bytes, recorder=ctx.services.recorder)
    deadline = Deadline(STARTUP_TIMEOUT_S)
    try:
        stats = client.system_stats(deadline=deadline)
        object_info = client.object_info(deadline=deadline)
    except ComfyError as exc:
        if pool_size == 1:
            raise StageFailed(f"ComfyUI at {backend.url} did not answer: {exc}") from None
        silent.append(f"server-{number} at {backend.url}: {exc}")
        ctx.summary.warn(f"ComfyUI server-{number} at {backend.url} was left out: it did not answer: {exc}")
        return None
    backend.version = stats.get("system", {}).get("comfyui_version")
    problems = preflight(workflow, object_info)
    if problems and pool_size > 1:
        ctx.summary.warn(
            f"ComfyUI server-{number} at {backend.url} cannot run the workflow: " + "; ".join(problems)
        )
    server = ComfyServer(f"server-{number}", backend.url, client, backend.alive)
    return _Candidate(backend, server, stats, object_info, problems)


def _facts(
    ctx: StageContext,
    backend: Backend,
    stats: dict[str, Any],
    object_info: dict[str, Any],
    graphs: RunGraphs,
    workflow: dict[str, Any],
    problems: list[str],
) -> dict[str, Any]:
    system = stats.get("system", {})
    devices = stats.get("devices", [])
    pytorch = system.get("pytorch_version")
    if backend.simulated:  # the simulator speaks like an RTX card; the run must never read as one
        devices = [{**device, "name": simulated_device_name(device)} for device in devices]
        pytorch = "none (simulated)"
    return {
        "url": backend.url,
        "version": backend.version,
        "python": system.get("python_version"),
        "pytorch": pytorch,
        "devices": devices,
        "workflow": graphs.video.shown,
        "workflow_hash": workflow_hash(workflow),
        "keyframe_workflow": graphs.keyframe.shown if graphs.keyframe else None,
        "keyframe_mode": graphs.keyframe_mode,
        "object_info_hash": workflow_hash(object_info),
        "node_classes": len(object_info),
        "preflight_problems": problems,
        "startup_log": ctx.run.relative(backend.log) if backend.log else None,
        "startup_warnings": [w.to_dict() for w in _startup_warnings(ctx, backend.log)],
    }


def simulated_device_name(device: dict[str, Any]) -> str:
    """``simulated GPU, 24 GiB``: what a simulated device is called everywhere the run shows it."""
    total = device.get("vram_total")
    if isinstance(total, int | float) and total > 0:
        return f"simulated GPU, {total / 1024**3:g} GiB"
    return "simulated GPU"


def _keyframe_workflow(
    ctx: StageContext,
    graph: Graph | None,
    object_info: dict[str, Any],
    problems: list[str],
    spelled: list[str],
) -> dict[str, Any] | None:
    """The keyframe graph (--keyframe-workflow, --image-profile), checked like the video one."""
    if graph is None:
        return None
    try:
        patch_keyframe_workflow(
            graph.workflow, keyframe_patch(ctx, "scene-000", "check"), plan=graph.plan, source=graph.source
        )
    except WorkflowError as exc:
        problems.append(str(exc))
        return None
    problems += [f"{graph.source}: {problem}" for problem in preflight(graph.workflow, object_info)]
    workflow, notes = adapt_to_server(graph.workflow, object_info)
    spelled += [f"{graph.source}: {note}" for note in notes]
    return workflow


def _startup_warnings(ctx: StageContext, log: str | None) -> list[StartupWarning]:
    """Non-blocking problems in a launched ComfyUI's startup log, as warnings of the run."""
    if not log or not Path(log).is_file() or not ctx.services.comfyui_launched_locally():
        return []
    warnings = find_startup_warnings(Path(log).read_text(encoding="utf-8", errors="replace"))
    for warning in warnings:
        ctx.summary.warn(f"ComfyUI startup ({warning.kind}): {warning.message}")
    return warnings
