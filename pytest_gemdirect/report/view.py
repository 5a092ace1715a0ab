"""The run summary read once into typed values: the report's only contact with the raw dict.

A summary may be partial (a run killed half-way), from an older harness or edited by hand: every
field is optional and any field may have the wrong type. ``build_view`` is where that is dealt with
(with ``coerce`` and ``evidence``); the sections, the charts and the templates see typed values only.
A scene's scene.json (its progress and GPU samples) is read here too, through ``samples``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.catalogue import STAGE_NAMES, StageKey
from pytest_gemdirect.report.coerce import as_dict, as_dicts, as_int, as_list, as_num, as_path, as_text
from pytest_gemdirect.report.evidence import Evidence, read_evidence
from pytest_gemdirect.report.format import compact, redact, secret_safe, setting_value
from pytest_gemdirect.report.links import SCENE_ID
from pytest_gemdirect.report.samples import GpuSample, SceneRecord, read_scene_record, run_gpu_samples
from pytest_gemdirect.report.video_view import DriftView, VideoView, read_drift, read_video
from pytest_gemdirect.summary import verdict


@dataclass(frozen=True)
class Node:
    """A stage, or one of its items (a scene's generation or retrieval, a suite)."""

    key: str
    stage: str
    status: str
    duration_s: float | None
    message: str | None
    scene: str | None = None  # the item's scene (or suite) id, from ``key[...]``
    items: tuple[Node, ...] = ()


@dataclass(frozen=True)
class Telemetry:
    queue_wait_s: float | None = None
    generation_s: float | None = None
    retrieval_s: float | None = None
    seconds_per_step: float | None = None
    steps: int | None = None
    vram_free_before: float | None = None
    vram_free_after: float | None = None


@dataclass(frozen=True)
class Attempt:
    number: str
    outcome: str
    started_at: str
    ended_at: str
    prompt_id: str
    reason: str
    server: str = ""  # URL of the ComfyUI server the attempt ran on


@dataclass(frozen=True)
class SceneView:
    id: str
    status: str
    title: str | None
    prompt_id: str | None
    message: str | None
    attempts: tuple[Attempt, ...]
    frame_count: int
    frames_dir: str | None
    telemetry: Telemetry
    files: Mapping[str, str]
    evidence: Evidence | None
    record: SceneRecord
    video: VideoView | None = None  # the frames stage's figures of the decoded clip
    server: str | None = None  # URL of the ComfyUI server that ran the scene (its latest attempt)
    drift: DriftView | None = None  # with --baseline


@dataclass(frozen=True)
class StoryScene:
    id: str
    title: str
    visual_prompt: str
    motion_prompt: str
    more: str  # the scene's other fields, on one line


@dataclass(frozen=True)
class StoryView:
    path: str | None
    title: str
    logline: str
    mode: str
    metadata: tuple[tuple[str, str], ...]
    scenes: tuple[StoryScene, ...]


@dataclass(frozen=True)
class BackendView:
    name: str
    target: str
    url: str
    simulated: bool
    version: str
    pid: str
    log: str | None


@dataclass(frozen=True)
class SettingView:
    name: str
    shown: str  # secrets already replaced by ***
    source: str


@dataclass(frozen=True)
class NvidiaGpu:
    name: str
    memory_total: str
    memory_free: str
    driver: str


@dataclass(frozen=True)
class EnvironmentView:
    python: str = ""
    platform: str = ""
    node: str = ""
    npm: str = ""
    disk_free_bytes: float | None = None
    packages: tuple[tuple[str, str], ...] = ()
    gpu_recorded: bool = False  # nvidia-smi was asked (its answer may be: no GPU)
    gpus: tuple[NvidiaGpu, ...] = ()
    gpu_note: str = ""


@dataclass(frozen=True)
class Device:
    name: str
    type: str
    index: str
    vram_total: float | None
    vram_free: float | None
    torch_vram_total: float | None
    torch_vram_free: float | None


@dataclass(frozen=True)
class WarningView:
    text: str
    kind: str = ""
    line_no: str = ""


@dataclass(frozen=True)
class ComfyView:
    url: str = ""
    version: str = ""
    python: str = ""
    pytorch: str = ""
    workflow: str = ""
    workflow_hash: str = ""
    node_classes: str = ""
    devices: tuple[Device, ...] = ()
    gpu_samples_recorded: bool = False
    gpu_samples: tuple[GpuSample, ...] = ()  # on the run's clock
    startup_warnings: tuple[WarningView, ...] = ()
    preflight_problems: tuple[WarningView, ...] = ()


@dataclass(frozen=True)
class LlmView:
    model: str
    latency_s: float | None
    facts: tuple[tuple[str, str], ...]  # every recorded field, secrets redacted


@dataclass(frozen=True)
class SuiteCase:
    classname: str
    name: str
    file: str
    line: str
    message: str
    body: str


@dataclass(frozen=True)
class SuiteView:
    name: str
    command: str
    status: str
    duration_s: float | None
    totals: Mapping[str, str]
    failures: tuple[SuiteCase, ...]
    failures_total: float | None
    log: str | None
    junit: str | None


@dataclass(frozen=True)
class CheckView:
    """A user's own check over a stage's result (a test asking for a stage fixture)."""

    test: str
    scene: str | None
    status: str
    message: str


@dataclass(frozen=True)
class RunView:
    run_id: str
    status: str  # "running" when the summary does not say
    status_reason: str
    verdict: str
    started_at: str
    finished_at: str
    duration_s: float | None
    run_dir: str
    simulated: bool
    replayed: str  # --replay: "REPLAYED from run …" (empty for any other run)
    harness_version: str
    nodes: tuple[Node, ...]
    scenes: tuple[SceneView, ...]
    story: StoryView | None
    backends: tuple[BackendView, ...]
    settings: Mapping[str, SettingView]
    environment: EnvironmentView
    llm: LlmView
    comfyui: ComfyView
    suites: tuple[SuiteView, ...]
    warnings: tuple[WarningView, ...]
    artifacts: tuple[tuple[str, str], ...]
    checks: tuple[CheckView, ...] = ()

    def scene(self, scene_id: str | None) -> SceneView | None:
        return next((s for s in self.scenes if s.id == scene_id), None)

    def story_scene(self, scene_id: str | None) -> StoryScene | None:
        scenes = self.story.scenes if self.story else ()
        return next((s for s in scenes if s.id == scene_id), None)

    def suite(self, name: str | None) -> SuiteView | None:
        return next((s for s in self.suites if s.name == name), None)

    @property
    def vram_total(self) -> float | None:
        """The first device's VRAM in bytes, as ComfyUI reported it."""
        return next((d.vram_total for d in self.comfyui.devices if d.vram_total), None)

    def peak_vram_used(self, scene: SceneView) -> float | None:
        """Bytes of VRAM in use at the scene's peak: its nvidia-smi samples when there are some, else
        the lowest free figure ComfyUI reported before/after it ran."""
        used = [s.used_mib for s in scene.record.gpu_samples if s.used_mib is not None]
        if used:
            return max(used) * 1024**2
        tele = scene.telemetry
        frees = [v for v in (tele.vram_free_before, tele.vram_free_after) if v is not None]
        total = self.vram_total
        if total is None or not frees:
            return None
        return total - min(frees)


# --- reading ----------------------------------------------------------------------------------------


def build_view(data: Mapping[str, Any], run_root: Path | None) -> RunView:
    """The typed view of a run summary; ``run_root`` (when known) gives each scene's scene.json."""
    data = data if isinstance(data, Mapping) else {}
    status = as_text(data.get("status")) or "running"
    started_at = as_text(data.get("started_at"))
    return RunView(
        run_id=as_text(data.get("run_id")),
        status=status,
        status_reason=as_text(data.get("status_reason")),
        verdict=verdict({**data, "status": status}),
        started_at=started_at,
        finished_at=as_text(data.get("finished_at")),
        duration_s=as_num(data.get("duration_s")),
        run_dir=as_text(data.get("run_dir")),
        simulated=bool(data.get("simulated")),
        replayed=as_text((data.get("replayed") or {}).get("label"))
        if isinstance(data.get("replayed"), Mapping)
        else "",
        harness_version=as_text(data.get("harness_version")),
        nodes=_nodes(data.get("stages")),
        scenes=tuple(_scene(raw, run_root) for raw in as_dicts(data.get("scenes"))),
        story=_story(data.get("story")),
        backends=tuple(_backend(str(name), b) for name, b in sorted(as_dict(data.get("backends")).items())),
        settings=_settings(data.get("settings"), data.get("setting_sources")),
        environment=_environment(data.get("environment")),
        llm=_llm(data.get("llm")),
        comfyui=_comfyui(data.get("comfyui"), started_at),
        suites=tuple(_suite(raw) for raw in as_dicts(data.get("suites"))),
        warnings=tuple(_warning(item) for item in as_list(data.get("warnings"))),
        artifacts=tuple(
            (str(name), path)
            for name, raw in sorted(as_dict(data.get("artifacts")).items())
            if (path := as_path(raw))
        ),
        checks=tuple(
            CheckView(
                as_text(raw.get("test")),
                as_text(raw.get("scene")) or None,
                as_text(raw.get("status")) or "passed",
                as_text(raw.get("message")),
            )
            for raw in as_dicts(data.get("checks"))
        ),
    )


def _message(value: Any) -> str | None:
    return as_text(value) or None


def _node(raw: dict[str, Any], stage: str, key: str, scene: str | None = None) -> Node:
    status = as_text(raw.get("status")) or "not_reached"
    return Node(key, stage, status, as_num(raw.get("duration_s")), _message(raw.get("message")), scene)


def _nodes(raw: Any) -> tuple[Node, ...]:
    stages = as_dicts(raw)
    if not stages:
        return tuple(Node(name, name, "not_reached", None, None) for name in STAGE_NAMES)
    nodes = []
    for stage in stages:
        name = as_text(stage.get("name")) or "?"
        items = []
        for item in as_dicts(stage.get("items")):
            key = as_text(item.get("key")) or name
            items.append(_node(item, name, key, _item_of(key)))
        node = _node(stage, name, name)
        nodes.append(Node(node.key, name, node.status, node.duration_s, node.message, items=tuple(items)))
    return tuple(nodes)


def _telemetry(raw: Any) -> Telemetry:
    tele = as_dict(raw)
    return Telemetry(
        queue_wait_s=as_num(tele.get("queue_wait_s")),
        generation_s=as_num(tele.get("generation_s")),
        retrieval_s=as_num(tele.get("retrieval_s")),
        seconds_per_step=as_num(tele.get("seconds_per_step")),
        steps=as_int(tele.get("steps")),
        vram_free_before=as_num(tele.get("vram_free_before")),
        vram_free_after=as_num(tele.get("vram_free_after")),
    )


def _scene(raw: dict[str, Any], run_root: Path | None) -> SceneView:
    sid = as_text(raw.get("id"))
    files = {str(k): path for k, v in as_dict(raw.get("files")).items() if (path := as_path(v))}
    attempts = tuple(
        Attempt(
            *(
                as_text(a.get(k))
                for k in ("number", "outcome", "started_at", "ended_at", "prompt_id", "reason", "server")
            )
        )
        for a in as_dicts(raw.get("attempts"))
    )
    record_path = files.get("scene") or (f"{sid}/scene.json" if SCENE_ID.match(sid) else None)
    return SceneView(
        id=sid,
        status=as_text(raw.get("status")) or "not_reached",
        title=_message(raw.get("title")),
        prompt_id=_message(raw.get("prompt_id")),
        server=_message(raw.get("server")),
        message=_message(raw.get("message")),
        attempts=attempts,
        frame_count=as_int(raw.get("frame_count")) or 0,
        frames_dir=as_path(raw.get("frames_dir")),
        telemetry=_telemetry(raw.get("telemetry")),
        files=files,
        evidence=read_evidence(raw.get("evidence")),
        record=read_scene_record(run_root, record_path),
        video=read_video(raw.get("video")),
        drift=read_drift(raw.get("drift")),
    )


def _story(raw: Any) -> StoryView | None:
    story = as_dict(raw)
    if not story:
        return None
    meta = as_dict(story.get("metadata"))
    scenes = []
    for s in as_dicts(story.get("scenes")):
        extra = {k: v for k, v in s.items() if k not in ("id", "title", "visual_prompt", "motion_prompt")}
        scenes.append(
            StoryScene(
                id=as_text(s.get("id")),
                title=as_text(s.get("title")),
                visual_prompt=as_text(s.get("visual_prompt")),
                motion_prompt=as_text(s.get("motion_prompt")),
                more=compact(extra, 300) if extra else "",
            )
        )
    return StoryView(
        path=as_path(story.get("path")),
        title=as_text(story.get("title")),
        logline=as_text(story.get("logline")),
        mode=as_text(meta.get("mode")),
        metadata=tuple(
            (str(k).replace("_", " "), compact(secret_safe(str(k), v), 300)) for k, v in meta.items()
        ),
        scenes=tuple(scenes),
    )


def _backend(name: str, raw: Any) -> BackendView:
    b = as_dict(raw)
    return BackendView(
        name=name,
        target=as_text(b.get("target")),
        url=as_text(b.get("url")),
        simulated=bool(b.get("simulated")),
        version=as_text(b.get("version")),
        pid=as_text(b.get("pid")),
        log=as_path(b.get("log")),
    )


def _settings(raw: Any, raw_sources: Any) -> dict[str, SettingView]:
    sources = as_dict(raw_sources)
    return {
        str(name): SettingView(
            str(name), setting_value(secret_safe(str(name), value)), as_text(sources.get(name))
        )
        for name, value in as_dict(raw).items()
    }


def _mib(value: Any) -> str:
    return f"{value} MiB" if value not in (None, "") else ""


def _environment(raw: Any) -> EnvironmentView:
    env = as_dict(raw)
    gpu = as_dict(env.get("gpu"))
    gpus = tuple(
        NvidiaGpu(
            as_text(g.get("name")),
            _mib(g.get("memory_total_mib")),
            _mib(g.get("memory_free_mib")),
            as_text(g.get("driver")),
        )
        for g in as_dicts(gpu.get("gpus"))
    )
    return EnvironmentView(
        python=as_text(env.get("python")),
        platform=as_text(env.get("platform")),
        node=as_text(env.get("node")),
        npm=as_text(env.get("npm")),
        disk_free_bytes=as_num(env.get("disk_free_bytes")),
        packages=tuple((str(k), as_text(v)) for k, v in sorted(as_dict(env.get("packages")).items())),
        gpu_recorded=bool(gpu),
        gpus=gpus,
        gpu_note=as_text(gpu.get("note")),
    )


def _llm(raw: Any) -> LlmView:
    llm = as_dict(raw)
    facts = tuple(
        (str(k).replace("_", " "), compact(secret_safe(str(k), v), 300)) for k, v in redact(llm).items()
    )
    model = llm.get("model") or llm.get("chosen_model")
    return LlmView(as_text(model), as_num(llm.get("first_latency_s") or llm.get("latency_s")), facts)


def _warning(item: Any) -> WarningView:
    if isinstance(item, dict) and item.get("message"):
        return WarningView(as_text(item["message"]), as_text(item.get("kind")), as_text(item.get("line_no")))
    return WarningView(item if isinstance(item, str) else compact(item, 500))


def _device(d: dict[str, Any]) -> Device:
    return Device(
        name=as_text(d.get("name")),
        type=as_text(d.get("type")),
        index=as_text(d.get("index")),
        vram_total=as_num(d.get("vram_total")),
        vram_free=as_num(d.get("vram_free")),
        torch_vram_total=as_num(d.get("torch_vram_total")),
        torch_vram_free=as_num(d.get("torch_vram_free")),
    )


def _comfyui(raw: Any, started_at: str) -> ComfyView:
    comfy = as_dict(raw)
    samples = as_dicts(comfy.get("gpu_samples"))
    return ComfyView(
        url=as_text(comfy.get("url")),
        version=as_text(comfy.get("version")),
        python=as_text(comfy.get("python")),
        pytorch=as_text(comfy.get("pytorch")),
        workflow=as_text(comfy.get("workflow")),
        workflow_hash=as_text(comfy.get("workflow_hash")),
        node_classes=as_text(comfy.get("node_classes")),
        devices=tuple(_device(d) for d in as_dicts(comfy.get("devices"))),
        gpu_samples_recorded=bool(samples),
        gpu_samples=run_gpu_samples(samples, started_at),
        startup_warnings=tuple(_warning(w) for w in as_list(comfy.get("startup_warnings"))),
        preflight_problems=tuple(_warning(w) for w in as_list(comfy.get("preflight_problems"))),
    )


def _suite(raw: dict[str, Any]) -> SuiteView:
    cases = tuple(
        SuiteCase(*(as_text(f.get(k)) for k in ("classname", "name", "file", "line", "message", "body")))
        for f in as_dicts(raw.get("failures"))
    )
    return SuiteView(
        name=as_text(raw.get("name")),
        command=as_text(raw.get("command")),
        status=as_text(raw.get("status")),
        duration_s=as_num(raw.get("duration_s")),
        totals={str(k): as_text(v) for k, v in as_dict(raw.get("totals")).items()},
        failures=cases,
        failures_total=as_num(raw.get("failures_total")),
        log=as_path(raw.get("log")),
        junit=as_path(raw.get("junit")),
    )


def _item_of(key: str) -> str | None:
    """The scene (or suite) of a node key as the summary wrote it; None for a stage or a strange key."""
    try:
        return StageKey.parse(key).item
    except ValueError:
        return None
