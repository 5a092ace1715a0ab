"""The work of each of the eight stages, wired to the clients, the run directory and the summary."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, PromptRejected
from pytest_gemdirect.comfyui.job import JobFailed, JobPolicy, JobResult, run_job
from pytest_gemdirect.comfyui.keyframes import draw_keyframe
from pytest_gemdirect.comfyui.outputs import download_outputs, safe_name
from pytest_gemdirect.comfyui.workflow import (
    KeyframePatch,
    ScenePatch,
    WorkflowError,
    default_workflow_path,
    load_workflow,
    patch_keyframe_workflow,
    patch_workflow,
    preflight,
    workflow_hash,
)
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.environment import EnvironmentProblem, check_environment
from pytest_gemdirect.gpu_sampler import GpuSampler
from pytest_gemdirect.llm import LLMClient, LLMError, check_health
from pytest_gemdirect.pipeline import NotReached, Pipeline, StageFailed, StageSkipped
from pytest_gemdirect.rundir import RunDirectory, append_jsonl, atomic_write_json
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.services import ServiceError, Services
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.startup_log import find_startup_warnings
from pytest_gemdirect.story import StoryError, make_story, render_keyframes
from pytest_gemdirect.suites import SuiteSpec, parse_suite_specs, run_suite
from pytest_gemdirect.summary import RunSummary, scene_ids, validate_summary

# Failures a re-queue can cure; a spent deadline or a missing history entry cannot.
RETRYABLE_KINDS = ("execution_error", "interrupted")
# The completion signal came, but the outputs never reached /history: that is the frames stage's failure.
FRAMES_KINDS = ("completion_grace", "history_max_attempts")
STARTUP_TIMEOUT_S = 30.0

ProgressSink = Callable[[str, int, int], None]


def scene_of(key: str) -> str:
    return key[key.index("[") + 1 : -1]


@dataclass
class Generation:
    """What the generation stage hands the frame-retrieval stage for one scene."""

    scene_id: str
    client: ComfyClient
    deadline: Deadline
    result: JobResult | None = None
    deferred: JobFailed | None = None  # completion seen, outputs never in /history: frames fails
    attempts: list[dict[str, Any]] = field(default_factory=list)
    vram_free_before: int | None = None
    vram_free_after: int | None = None
    gpu_samples: list[dict[str, Any]] = field(default_factory=list)
    gpu_note: str | None = None
    notes: list[str] = field(default_factory=list)  # the harness's own, before the job's notes


class Stages:
    """One run's stage work; ``pipeline`` runs it by key."""

    def __init__(
        self,
        settings: Settings,
        run: RunDirectory,
        summary: RunSummary,
        services: Services,
        *,
        suite_cwd: Path,
        progress: ProgressSink | None = None,
    ) -> None:
        self.settings = settings
        self.run = run
        self.summary = summary
        self.services = services
        self.suite_cwd = suite_cwd
        self.progress = progress
        self.server_gone: str | None = None
        self.pipeline = Pipeline(
            summary,
            {
                "env": self.env,
                "llm": self.llm,
                "story": self.story,
                "comfyui": self.comfyui,
                "svd": self.svd,
                "frames": self.frames,
                "suites": self.suites,
                "summary": self.summary_stage,
            },
        )

    # --- keys ----------------------------------------------------------------------------

    def scene_ids(self) -> list[str]:
        return scene_ids(self.settings.scenes)

    def suite_specs(self) -> list[SuiteSpec]:
        return parse_suite_specs(list(self.settings.suites))

    def all_keys(self) -> list[str]:
        keys = ["env", "llm", "story", "comfyui"]
        keys += [f"svd[{s}]" for s in self.scene_ids()] + [f"frames[{s}]" for s in self.scene_ids()]
        keys += [f"suites[{spec.name}]" for spec in self.suite_specs()] or ["suites"]
        return keys

    # --- 1 environment ---------------------------------------------------------------------

    def env(self, key: str) -> dict[str, Any]:
        try:
            facts = check_environment(self.run.root, deadline=Deadline(STARTUP_TIMEOUT_S))
        except EnvironmentProblem as exc:
            raise StageFailed(f"environment: {exc}") from None
        self.summary.set_section("environment", facts)
        return facts

    # --- 2 LLM health ----------------------------------------------------------------------

    def _llm_client(self) -> LLMClient:
        try:
            backend = self.services.llm()
        except ServiceError as exc:
            raise StageFailed(f"LLM: {exc}") from None
        self.summary.set_backend("llm", backend.to_dict())
        return LLMClient(backend.url, api_key=self.settings.llm_api_key, timeout_s=self.settings.llm_timeout)

    def llm(self, key: str) -> Any:
        if self.settings.story_mode == "fallback" and not self.settings.llm_url:
            raise StageSkipped("story mode is fallback and no --llm-url is set: no LLM is used")
        client = self._llm_client()
        try:
            health = check_health(client, model=self.settings.llm_model, timeout_s=self.settings.llm_timeout)
        except LLMError as exc:
            self.summary.set_section("llm", {"healthy": False, "error": str(exc)})
            raise StageFailed(f"LLM health: {exc}") from None
        self.summary.set_section("llm", {"healthy": True, **_as_dict(health)})
        return (client, health)

    # --- 3 story -------------------------------------------------------------------------

    def story(self, key: str) -> dict[str, Any]:
        mode = self.settings.story_mode
        client, health, unhealthy = None, None, None
        if mode == "llm":
            client, health = self.pipeline.require("llm")
        elif mode == "auto":
            try:
                client, health = self.pipeline.run("llm")
            except (StageFailed, NotReached, StageSkipped) as exc:
                unhealthy = str(exc)
        try:
            story = make_story(
                mode,
                client=client,
                health=health,
                unhealthy_reason=unhealthy,
                scene_count=self.settings.scenes,
                model=self.settings.llm_model,
                seed=self.settings.llm_seed,
                temperature=self.settings.llm_temperature,
                deadline=Deadline(self.settings.llm_timeout * 4, setting="llm_timeout"),
            )
        except StoryError as exc:
            raise StageFailed(f"story ({mode} mode): {exc}") from None
        try:
            jsonschema.validate(story, load_schema("story.schema.json"))
        except jsonschema.ValidationError as exc:
            raise StageFailed(f"story does not match schemas/story.schema.json: {exc.message}") from None
        got = len(story["scenes"])
        if got != self.settings.scenes:
            raise StageFailed(f"story has {got} scenes, the scenes setting asks for {self.settings.scenes}")
        story_path = self.run.story_dir / "story.json"
        atomic_write_json(story_path, story)
        for scene in story["scenes"]:
            self.summary.update_scene(scene["id"], title=scene["title"])
            self.run.scene_dir(scene["id"]).mkdir(parents=True, exist_ok=True)
        if self.settings.keyframe_workflow is None:  # else ComfyUI draws each one in its svd stage
            keyframes = render_keyframes(
                story, self.run.story_dir / "keyframes", size=self.settings.keyframe_size
            )
            for scene, path in zip(story["scenes"], keyframes, strict=True):
                shutil.copyfile(path, self.run.scene_dir(scene["id"]) / "keyframe.png")
        self.summary.set_section("story", {"path": self.run.relative(story_path), **story})
        self.summary.artifact("story", story_path)
        if story["metadata"].get("fallback_reason"):
            self.summary.warn(
                f"story: fell back to the deterministic story: {story['metadata']['fallback_reason']}"
            )
        return story

    # --- 4 ComfyUI startup -----------------------------------------------------------------

    def comfyui(self, key: str) -> dict[str, Any]:
        try:
            backend = self.services.comfyui()
        except ServiceError as exc:
            raise StageFailed(f"ComfyUI: {exc}") from None
        client = ComfyClient(backend.url)
        deadline = Deadline(STARTUP_TIMEOUT_S)
        try:
            stats = client.system_stats(deadline=deadline)
            object_info = client.object_info(deadline=deadline)
        except ComfyError as exc:
            raise StageFailed(f"ComfyUI at {backend.url} did not answer: {exc}") from None
        backend.version = stats.get("system", {}).get("comfyui_version")
        self.summary.set_backend("comfyui", backend.to_dict())
        workflow_path = self.settings.workflow or default_workflow_path()
        try:
            workflow = load_workflow(workflow_path)
        except WorkflowError as exc:
            raise StageFailed(str(exc)) from None
        problems = preflight(workflow, object_info)
        keyframe_workflow = self._keyframe_workflow(object_info, problems)
        devices = stats.get("devices", [])
        startup_warnings = self._startup_warnings(backend.log)
        facts = {
            "url": backend.url,
            "version": backend.version,
            "python": stats.get("system", {}).get("python_version"),
            "pytorch": stats.get("system", {}).get("pytorch_version"),
            "devices": devices,
            "workflow": str(workflow_path),
            "workflow_hash": workflow_hash(workflow),
            "keyframe_workflow": str(self.settings.keyframe_workflow or "") or None,
            "object_info_hash": workflow_hash(object_info),
            "node_classes": len(object_info),
            "preflight_problems": problems,
            "startup_log": self.run.relative(backend.log) if backend.log else None,
            "startup_warnings": [w.to_dict() for w in startup_warnings],
        }
        self.summary.set_section("comfyui", facts)
        if problems:
            raise StageFailed(f"workflow {workflow_path} cannot run on {backend.url}: " + "; ".join(problems))
        return {
            "client": client,
            "workflow": workflow,
            "keyframe_workflow": keyframe_workflow,
            "facts": facts,
        }

    def _keyframe_workflow(self, object_info: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
        """The --keyframe-workflow graph, checked like the video one (its problems named by file)."""
        path = self.settings.keyframe_workflow
        if path is None:
            return None
        try:
            workflow = load_workflow(path)
            patch_keyframe_workflow(workflow, self._keyframe_patch("scene-000", "check"), source=str(path))
        except WorkflowError as exc:
            problems.append(str(exc))
            return None
        problems += [f"keyframe workflow {path}: {problem}" for problem in preflight(workflow, object_info)]
        return workflow

    def _keyframe_patch(self, scene_id: str, text: str) -> KeyframePatch:
        return KeyframePatch(
            text=text,
            filename_prefix=f"gemdirect/{scene_id}/{safe_name(self.run.run_id)}/keyframe",
            seed=self.settings.llm_seed,
            size=self.settings.keyframe_size,
        )

    def _startup_warnings(self, log: str | None) -> list[Any]:
        """Non-blocking problems in a launched ComfyUI's startup log, as warnings of the run."""
        if not log or not Path(log).is_file() or self.services.comfyui_launched_locally() is False:
            return []
        warnings = find_startup_warnings(Path(log).read_text(encoding="utf-8", errors="replace"))
        for warning in warnings:
            self.summary.warn(f"ComfyUI startup ({warning.kind}): {warning.message}")
        return warnings

    # --- 5 generation ----------------------------------------------------------------------

    def _policy(self) -> JobPolicy:
        s = self.settings
        return JobPolicy(
            scene_max_wait_s=s.scene_max_wait,
            history_poll_interval_s=s.history_poll_interval,
            history_max_attempts=s.history_max_attempts,
            completion_grace_s=s.completion_grace,
            ws_idle_timeout_s=s.ws_idle_timeout,
        )

    def svd(self, key: str) -> Generation:
        scene_id = scene_of(key)
        story = self.pipeline.require("story")
        comfy = self.pipeline.require("comfyui")
        if self.server_gone:
            raise NotReached(f"not reached: {self.server_gone}")
        client: ComfyClient = comfy["client"]
        events = self.run.events_path(scene_id)
        keyframe = self.run.scene_dir(scene_id) / "keyframe.png"
        deadline = Deadline(self.settings.scene_max_wait, setting="scene_max_wait")
        generation = Generation(scene_id, client, deadline)
        self.summary.start_scene(scene_id)
        if comfy["keyframe_workflow"] is not None:
            scene = next(s for s in story["scenes"] if s["id"] == scene_id)
            self._draw_keyframe(generation, comfy["keyframe_workflow"], scene["visual_prompt"], deadline)
        try:
            uploaded = client.upload_image(
                keyframe, name=f"gemdirect-{self.run.run_id}-{scene_id}.png", deadline=deadline
            )
            generation.vram_free_before = _vram_free(client, deadline)
        except ComfyError as exc:
            raise StageFailed(f"{scene_id}: uploading the keyframe to ComfyUI failed: {exc}") from None
        image_name = (
            f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else uploaded["name"]
        )
        prompt = patch_workflow(
            comfy["workflow"],
            ScenePatch(
                image_name=image_name,
                filename_prefix=f"gemdirect/{scene_id}/{safe_name(self.run.run_id)}/frame",
                seed=self.settings.llm_seed,
            ),
        )
        atomic_write_json(self.run.scene_dir(scene_id) / "workflow.json", prompt)
        max_attempts = 1 + self.settings.max_scene_retries
        for number in range(1, max_attempts + 1):
            attempt = {
                "number": number,
                "started_at": _now(),
                "ended_at": None,
                "outcome": "running",
                "reason": None,
            }
            generation.attempts.append(attempt)
            self._record_scene(generation)
            append_jsonl(
                events, {"t": _now(), "event": "attempt_start", "attempt": number, "scene": scene_id}
            )
            try:
                result = self._follow(generation, prompt, number)
            except PromptRejected as exc:
                attempt.update(ended_at=_now(), outcome="rejected", reason=str(exc))
                self._record_scene(generation)
                raise StageFailed(f"{scene_id}: ComfyUI rejected the workflow: {exc}") from None
            except JobFailed as failure:
                attempt.update(ended_at=_now(), outcome=failure.kind, reason=str(failure))
                attempt["prompt_id"] = failure.evidence.get("prompt_id")
                self._record_scene(generation, evidence=failure.evidence)
                append_jsonl(
                    events, {"t": _now(), "event": "attempt_end", "attempt": number, "outcome": failure.kind}
                )
                if failure.kind in FRAMES_KINDS:
                    generation.deferred = failure
                    return generation
                if failure.kind == "server_gone":
                    self.server_gone = f"ComfyUI server died during {scene_id}"
                    self.summary.warn(f"{scene_id}: {failure}")
                    raise StageFailed(f"{scene_id}: {failure}") from None
                if failure.kind in RETRYABLE_KINDS and number < max_attempts:
                    self.summary.warn(f"{scene_id}: attempt {number} failed ({failure.kind}); re-queued")
                    deadline = Deadline(self.settings.scene_max_wait, setting="scene_max_wait")
                    generation.deadline = deadline
                    continue
                tried = f" (attempt {number} of {max_attempts}, --max-scene-retries = {max_attempts - 1})"
                raise StageFailed(f"{scene_id} generation: {failure}{tried}") from None
            attempt.update(ended_at=_now(), outcome="success", prompt_id=result.prompt_id)
            append_jsonl(
                events, {"t": _now(), "event": "attempt_end", "attempt": number, "outcome": "success"}
            )
            generation.result = result
            generation.vram_free_after = _vram_free(client, deadline)
            self._record_scene(generation)
            for note in result.notes:
                self.summary.warn(f"{scene_id}: {note}")
            return generation
        raise AssertionError("unreachable: the attempt loop returns or raises")

    def _draw_keyframe(
        self, generation: Generation, workflow: dict[str, Any], text: str, deadline: Deadline
    ) -> None:
        """ComfyUI draws the scene's keyframe (--keyframe-workflow) before the video job needs it."""
        scene_id, events = generation.scene_id, self.run.events_path(generation.scene_id)
        source = f"--keyframe-workflow {self.settings.keyframe_workflow}"
        max_attempts = 1 + self.settings.max_scene_retries
        for number in range(1, max_attempts + 1):
            append_jsonl(events, {"t": _now(), "event": "keyframe_start", "keyframe_attempt": number})
            try:
                drawn = draw_keyframe(
                    generation.client,
                    workflow,
                    self._keyframe_patch(scene_id, text),
                    self.run.scene_dir(scene_id) / "keyframe.png",
                    policy=self._policy(),
                    outputs_dir=self.run.scene_dir(scene_id) / "keyframe-outputs",
                    deadline=deadline,
                    on_event=partial(_append_event, events, keyframe_attempt=number),
                    is_server_alive=self.services.comfyui_alive,
                )
                break
            except JobFailed as failure:
                self.summary.update_scene(scene_id, evidence=failure.evidence)
                if failure.kind in RETRYABLE_KINDS and number < max_attempts:
                    self.summary.warn(
                        f"{scene_id}: keyframe attempt {number} failed ({failure.kind}); re-queued"
                    )
                    continue
                if failure.kind == "server_gone":
                    self.server_gone = f"ComfyUI server died during {scene_id}"
                raise StageFailed(f"{scene_id} keyframe ({source}): {failure}") from None
            except ComfyError as exc:
                raise StageFailed(f"{scene_id} keyframe ({source}): {exc}") from None
        else:
            raise AssertionError("unreachable: the attempt loop breaks or raises")
        story_copy = self.run.story_dir / "keyframes" / f"{scene_id}.png"
        story_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn.path, story_copy)
        append_jsonl(events, {"t": _now(), "event": "keyframe_end", "prompt_id": drawn.prompt_id})
        took = f" in {drawn.seconds:.1f} s" if drawn.seconds is not None else ""
        generation.notes.append(
            f"keyframe drawn by ComfyUI{took} (prompt {drawn.prompt_id}, {drawn.source},"
            f" sha256 {drawn.sha256[:12]})"
        )
        self.summary.update_scene(scene_id, notes=list(generation.notes))

    def _follow(self, generation: Generation, prompt: dict[str, Any], number: int) -> JobResult:
        """One attempt: queue and follow the job; sample the GPU meanwhile when ComfyUI runs here."""
        scene_id, events = generation.scene_id, self.run.events_path(generation.scene_id)
        sampler = GpuSampler(interval_s=1.0) if self.services.comfyui_launched_locally() else None
        if sampler is not None:
            sampler.start()
        try:
            return run_job(
                generation.client,
                prompt,
                policy=self._policy(),
                on_event=lambda event: append_jsonl(events, {**event, "scene_attempt": number}),
                on_progress=lambda value, maximum: self.progress and self.progress(scene_id, value, maximum),
                is_server_alive=self.services.comfyui_alive,
            )
        finally:
            if sampler is not None:
                generation.gpu_samples += sampler.stop()
                generation.gpu_note = sampler.note
            else:
                generation.gpu_note = (
                    "GPU not sampled: ComfyUI was not launched by the harness on this machine"
                )

    def _record_scene(self, generation: Generation, *, evidence: dict[str, Any] | None = None) -> None:
        result = generation.result
        timings = result.timings if result else {}
        telemetry = {
            "queue_wait_s": _delta(timings, "started_s", None),
            "generation_s": _delta(
                timings, "completed_s", "started_s" if timings.get("started_s") else "queued_s"
            ),
            "seconds_per_step": result.seconds_per_step if result else None,
            "steps": result.progress[-1][2] if result and result.progress else None,
            "vram_free_before": generation.vram_free_before,
            "vram_free_after": generation.vram_free_after,
        }
        fields: dict[str, Any] = {"attempts": generation.attempts, "telemetry": telemetry}
        if result:
            fields["prompt_id"] = result.prompt_id
            fields["notes"] = generation.notes + list(result.notes)
        if evidence is not None:
            fields["evidence"] = evidence
        old = self.summary.scene(generation.scene_id).get("telemetry") or {}
        fields["telemetry"] = {**old, **{k: v for k, v in telemetry.items() if v is not None}}
        self.summary.update_scene(generation.scene_id, **fields)

    # --- 6 frame retrieval -----------------------------------------------------------------

    def frames(self, key: str) -> list[Any]:
        scene_id = scene_of(key)
        generation: Generation = self.pipeline.require(f"svd[{scene_id}]")
        scene_dir = self.run.scene_dir(scene_id)
        if generation.deferred is not None:
            self._write_scene_json(generation, frames=[])
            raise StageFailed(f"{scene_id} frame retrieval: {generation.deferred}")
        result = generation.result
        assert result is not None
        history_path = scene_dir / "history.json"
        atomic_write_json(history_path, result.history)
        started = datetime.now()
        if result.cached:
            self.summary.warn(
                f"{scene_id}: ComfyUI answered from its cache; no new files were written for this run"
            )
        if not result.outputs:
            self._write_scene_json(generation, frames=[])
            raise StageFailed(f"{scene_id}: /history/{result.prompt_id} lists no output files")
        try:
            files = download_outputs(
                generation.client, result.outputs, self.run.frames_dir(scene_id), deadline=generation.deadline
            )
        except ComfyError as exc:
            self._write_scene_json(generation, frames=[])
            raise StageFailed(f"{scene_id} frame retrieval: {exc}") from None
        retrieval_s = round((datetime.now() - started).total_seconds(), 3)
        frame_count = sum(getattr(f, "frames", 1) for f in files)
        telemetry = {**(self.summary.scene(scene_id).get("telemetry") or {}), "retrieval_s": retrieval_s}
        self.summary.update_scene(
            scene_id,
            frame_count=frame_count,
            frames_dir=self.run.relative(self.run.frames_dir(scene_id)),
            telemetry=telemetry,
            files={
                "keyframe": self.run.relative(scene_dir / "keyframe.png"),
                "history": self.run.relative(history_path),
                "scene": self.run.relative(scene_dir / "scene.json"),
                "events": self.run.relative(self.run.events_path(scene_id)),
                "workflow": self.run.relative(scene_dir / "workflow.json"),
            },
        )
        self._write_scene_json(generation, frames=files)
        return files

    def _write_scene_json(self, generation: Generation, *, frames: list[Any]) -> None:
        record = dict(self.summary.scene(generation.scene_id))
        record["settings"] = {
            k: self.settings.public()[k]
            for k in (
                "scene_max_wait",
                "history_poll_interval",
                "history_max_attempts",
                "completion_grace",
                "ws_idle_timeout",
                "max_scene_retries",
            )
        }
        record["frames"] = [_as_dict(f) for f in frames]
        record["gpu_samples"] = generation.gpu_samples
        record["gpu_note"] = generation.gpu_note
        if generation.result is not None:
            record["progress"] = generation.result.progress
        atomic_write_json(self.run.scene_dir(generation.scene_id) / "scene.json", record)

    # --- 7 external suites -----------------------------------------------------------------

    def suites(self, key: str) -> Any:
        specs = {spec.name: spec for spec in self.suite_specs()}
        if "[" not in key:
            raise StageSkipped("no external suites configured")
        spec = specs[scene_of(key)]
        result = run_suite(
            spec, cwd=self.suite_cwd, run_dir=self.run.root, timeout_s=self.settings.suite_timeout
        )
        self.summary.set_section(
            "suites",
            [s for s in self.summary.data["suites"] if s.get("name") != spec.name] + [result.to_dict()],
        )
        if result.status != "passed":
            raise StageFailed(result.failure_message())
        return result

    # --- 8 run summary ---------------------------------------------------------------------

    def summary_stage(self, key: str) -> dict[str, Any]:
        self.pipeline.attempt_all(self.all_keys())
        self.summary.write()
        data = json.loads(self.run.summary_json.read_text(encoding="utf-8"))
        problems = validate_summary(data)
        for scene in data["scenes"]:
            if scene["status"] != "passed":
                continue
            tele = scene["telemetry"]
            missing = [k for k in ("generation_s", "retrieval_s") if tele.get(k) is None]
            if missing:
                problems.append(f"{scene['id']}: telemetry lacks {', '.join(missing)}")
            if scene["frame_count"] < 1:
                problems.append(f"{scene['id']}: passed with no frames")
        for label, rel in _named_files(data):
            if not (self.run.root / rel).exists():
                problems.append(f"{label} names {rel}, which does not exist")
        if problems:
            raise StageFailed(f"{self.run.summary_json} is not consistent: " + "; ".join(problems))
        return data


def _named_files(data: dict[str, Any]) -> list[tuple[str, str]]:
    named = [(f"artifacts.{k}", v) for k, v in data["artifacts"].items()]
    for scene in data["scenes"]:
        named += [(f"{scene['id']}.files.{k}", v) for k, v in (scene.get("files") or {}).items() if v]
        if scene.get("frames_dir"):
            named.append((f"{scene['id']}.frames_dir", scene["frames_dir"]))
    return named


def _vram_free(client: ComfyClient, deadline: Deadline) -> int | None:
    try:
        devices = client.system_stats(deadline=deadline).get("devices") or []
    except ComfyError:
        return None
    return devices[0].get("vram_free") if devices else None


def _delta(timings: dict[str, Any], end: str, start: str | None) -> float | None:
    if timings.get(end) is None or (start is not None and timings.get(start) is None):
        return None
    return round(timings[end] - (timings[start] if start else 0.0), 3)


def _append_event(path: Path, event: dict[str, Any], **extra: Any) -> None:
    append_jsonl(path, {**event, **extra})


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _as_dict(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return value
