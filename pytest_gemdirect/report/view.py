"""The run summary read once into typed values: the report's only contact with the raw dict.

A summary may be partial (a run killed half-way), from an older harness or edited by hand: every
field is optional and any field may have the wrong type. ``build_view`` is where that is dealt with
(with ``coerce`` and ``evidence``); the sections, the charts and the templates see typed values only.
A scene's scene.json (its progress and GPU samples) is read here too, once per change of the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_gemdirect.report.coerce import as_dict, as_dicts, as_int, as_list, as_num, as_path, as_text
from pytest_gemdirect.report.evidence import Evidence, read_evidence
from pytest_gemdirect.report.format import compact, redact, secret_safe, secs, setting_value
from pytest_gemdirect.report.links import SCENE_ID, inside
from pytest_gemdirect.summary import STAGES, verdict


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


@dataclass(frozen=True)
class GpuSample:
    t: float  # seconds: from the start of the scene's first attempt, or on the run's clock
    used_mib: float | None
    util_pct: float | None
    total_mib: float | None


@dataclass(frozen=True)
class SceneRecord:
    """What a scene's scene.json adds to the summary."""

    last_progress: str | None = None  # "12/25 after 6.00 s"
    gpu_samples: tuple[GpuSample, ...] = ()
    gpu_note: str | None = None


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
            (str(name), path) for name, raw in sorted(as_dict(data.get("artifacts")).items()) if (path := as_path(raw))
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
        return tuple(Node(name, name, "not_reached", None, None) for name in STAGES)
    nodes = []
    for stage in stages:
        name = as_text(stage.get("name")) or "?"
        items = []
        for item in as_dicts(stage.get("items")):
            key = as_text(item.get("key")) or name
            scene = key[key.index("[") + 1 : -1] if "[" in key and key.endswith("]") else None
            items.append(_node(item, name, key, scene))
        node = _node(stage, name, name)
        nodes.append(Node(node.key, name, node.status, node.duration_s, node.message, items=tuple(items)))
    return tuple(nodes)


def _telemetry(raw: Any) -> Telemetry:
    tele = as_dict(raw)
    return Telemetry(
        *(as_num(tele.get(k)) for k in ("queue_wait_s", "generation_s", "retrieval_s", "seconds_per_step")),
        steps=as_int(tele.get("steps")),
        vram_free_before=as_num(tele.get("vram_free_before")),
        vram_free_after=as_num(tele.get("vram_free_after")),
    )


def _scene(raw: dict[str, Any], run_root: Path | None) -> SceneView:
    sid = as_text(raw.get("id"))
    files = {str(k): path for k, v in as_dict(raw.get("files")).items() if (path := as_path(v))}
    attempts = tuple(
        Attempt(*(as_text(a.get(k)) for k in ("number", "outcome", "started_at", "ended_at", "prompt_id", "reason")))
        for a in as_dicts(raw.get("attempts"))
    )
    record_path = files.get("scene") or (f"{sid}/scene.json" if SCENE_ID.match(sid) else None)
    return SceneView(
        id=sid,
        status=as_text(raw.get("status")) or "not_reached",
        title=_message(raw.get("title")),
        prompt_id=_message(raw.get("prompt_id")),
        message=_message(raw.get("message")),
        attempts=attempts,
        frame_count=as_int(raw.get("frame_count")) or 0,
        frames_dir=as_path(raw.get("frames_dir")),
        telemetry=_telemetry(raw.get("telemetry")),
        files=files,
        evidence=read_evidence(raw.get("evidence")),
        record=_scene_record(run_root, record_path),
    )


_RECORDS: dict[tuple[str, int, int], SceneRecord] = {}


def _scene_record(run_root: Path | None, rel: str | None) -> SceneRecord:
    """A scene's scene.json, read again only when it changed (the report is rewritten after each stage)."""
    path = inside(run_root, rel) if run_root is not None else None
    if path is None:
        return SceneRecord()
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _RECORDS:
            if len(_RECORDS) > 256:
                _RECORDS.clear()
            _RECORDS[key] = _read_record(as_dict(json.loads(path.read_text(encoding="utf-8"))))
        return _RECORDS[key]
    except (OSError, ValueError):
        return SceneRecord()


def _read_record(record: dict[str, Any]) -> SceneRecord:
    progress = [p for p in as_list(record.get("progress")) if isinstance(p, list) and len(p) >= 3]
    last = None
    if progress:
        t, value, maximum = progress[-1][:3]
        last = f"{value}/{maximum} after {secs(as_num(t)) or t}"
    note = as_text(record.get("gpu_note")) or None
    return SceneRecord(last, _scene_gpu_samples(as_dicts(record.get("gpu_samples"))), note)


def _scene_gpu_samples(samples: list[dict[str, Any]]) -> tuple[GpuSample, ...]:
    """The first GPU's nvidia-smi samples taken while the scene ran (attempts laid end to end)."""
    gpus = [s["gpu"] for s in samples if as_int(s.get("gpu")) is not None]
    first_gpu = min(gpus) if gpus else None
    found: list[GpuSample] = []
    offset, last = 0.0, -1.0
    for sample in samples:
        t = as_num(sample.get("t"))
        if t is None or sample.get("gpu", first_gpu) != first_gpu:
            continue
        if t < last:  # a new attempt: its sampler's clock began again
            offset += last
        last = t
        found.append(
            GpuSample(
                offset + t,
                as_num(sample.get("memory_used_mib")),
                as_num(sample.get("utilization_pct")),
                as_num(sample.get("memory_total_mib")),
            )
        )
    return tuple(found)


def _story(raw: Any) -> StoryView | None:
    story = as_dict(raw)
    if not story:
        return None
    meta = as_dict(story.get("metadata"))
    scenes = []
    for s in as_dicts(story.get("scenes")):
        extra = {k: v for k, v in s.items() if k not in ("id", "title", "visual_prompt", "motion_prompt")}
        texts = (as_text(s.get(k)) for k in ("id", "title", "visual_prompt", "motion_prompt"))
        scenes.append(StoryScene(*texts, more=compact(extra, 300) if extra else ""))
    return StoryView(
        path=as_path(story.get("path")),
        title=as_text(story.get("title")),
        logline=as_text(story.get("logline")),
        mode=as_text(meta.get("mode")),
        metadata=tuple((str(k).replace("_", " "), compact(secret_safe(str(k), v), 300)) for k, v in meta.items()),
        scenes=tuple(scenes),
    )


def _backend(name: str, raw: Any) -> BackendView:
    b = as_dict(raw)
    texts = (as_text(b.get(k)) for k in ("target", "url"))
    return BackendView(
        name, *texts, bool(b.get("simulated")), as_text(b.get("version")), as_text(b.get("pid")), as_path(b.get("log"))
    )


def _settings(raw: Any, raw_sources: Any) -> dict[str, SettingView]:
    sources = as_dict(raw_sources)
    return {
        str(name): SettingView(str(name), setting_value(secret_safe(str(name), value)), as_text(sources.get(name)))
        for name, value in as_dict(raw).items()
    }


def _mib(value: Any) -> str:
    return f"{value} MiB" if value not in (None, "") else ""


def _environment(raw: Any) -> EnvironmentView:
    env = as_dict(raw)
    gpu = as_dict(env.get("gpu"))
    gpus = tuple(
        NvidiaGpu(
            as_text(g.get("name")), _mib(g.get("memory_total_mib")), _mib(g.get("memory_free_mib")), as_text(g.get("driver"))
        )
        for g in as_dicts(gpu.get("gpus"))
    )
    return EnvironmentView(
        *(as_text(env.get(k)) for k in ("python", "platform", "node", "npm")),
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
    memory = (as_num(d.get(k)) for k in ("vram_total", "vram_free", "torch_vram_total", "torch_vram_free"))
    return Device(as_text(d.get("name")), as_text(d.get("type")), as_text(d.get("index")), *memory)


def _comfyui(raw: Any, started_at: str) -> ComfyView:
    comfy = as_dict(raw)
    texts = (as_text(comfy.get(k)) for k in ("url", "version", "python", "pytorch", "workflow", "workflow_hash"))
    samples = as_dicts(comfy.get("gpu_samples"))
    return ComfyView(
        *texts,
        node_classes=as_text(comfy.get("node_classes")),
        devices=tuple(_device(d) for d in as_dicts(comfy.get("devices"))),
        gpu_samples_recorded=bool(samples),
        gpu_samples=_run_gpu_samples(samples, _parse_time(started_at)),
        startup_warnings=tuple(_warning(w) for w in as_list(comfy.get("startup_warnings"))),
        preflight_problems=tuple(_warning(w) for w in as_list(comfy.get("preflight_problems"))),
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _sample_time(raw: Any, started: datetime | None) -> float | None:
    """Seconds of a run-wide sample: a number as it is, an ISO time from the start of the run."""
    when = as_num(raw)
    if when is not None:
        return when
    moment = _parse_time(raw)
    if moment is None:
        return None
    if started is not None and (moment.tzinfo is None) == (started.tzinfo is None):
        return (moment - started).total_seconds()
    return moment.timestamp()


def _run_gpu_samples(samples: list[dict[str, Any]], started: datetime | None) -> tuple[GpuSample, ...]:
    """The run-wide GPU samples (``comfyui.gpu_samples``) in seconds on the run's clock."""
    found: list[GpuSample] = []
    origin: float | None = None
    for sample in samples:
        when = _sample_time(sample.get("t"), started)
        if when is None:
            continue
        if when > 1e9:  # epoch seconds: relative to the first sample
            origin = when if origin is None else origin
            when -= origin
        used = as_num(sample.get("memory_used_mib"))
        bytes_used = as_num(sample.get("memory_used"))
        if used is None and bytes_used is not None:
            used = bytes_used / 1024**2
        found.append(GpuSample(when, used, as_num(sample.get("utilization_pct")), as_num(sample.get("memory_total_mib")) or None))
    return tuple(found)


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
