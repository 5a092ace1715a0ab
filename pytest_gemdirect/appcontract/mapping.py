"""The harness's summary in the app's shape: ``artifact-metadata.json`` and ``vitest-results.json``.

Every value comes from the summary (or a file the run wrote: the scene's workflow.json for its
frame floor). Where the harness has no such thing (a done-marker, a forced copy, an archive) the
field says so (false, 0, null); where a value was not recorded, the scene's ``FallbackNotes`` say
what stands in its place.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

APP_SUITES: tuple[tuple[str, str, str], ...] = (
    ("comfyUI", "ComfyUI", "comfy"),
    ("e2e", "E2E", "e2e"),
    ("scripts", "Scripts", "scripts"),
)
"""The app's suites: (name in its summary lines, VitestLogs key, vitest-results.json prefix)."""

EXIT_REASONS: dict[str, str] = {
    "success": "success",
    "scene_max_wait": "maxWait",
    "history_max_attempts": "attemptLimit",
    "completion_grace": "postExecution",
}
"""The harness's outcome of an attempt -> the app's ``HistoryExitReason`` (anything else: unknown)."""

HISTORY_TROUBLE = ("maxWait", "attemptLimit", "postExecution")
"""Exit reasons the app's validator wants a ``HISTORY`` line for."""

MIB = 1024 * 1024
HELPER_FILES: dict[str, str] = {"MappingPreflight": "mapping-preflight", "ComfyUIStatus": "comfyui-status"}
"""HelperSummaries entries and their file stems under test-results/."""


def clock(iso: str | None) -> str:
    """``2026-12-02T05:13:02.360+00:00`` -> ``05:13:02``: the time as recorded (the run's local time)."""
    if not iso:
        return "--:--:--"
    try:
        return datetime.fromisoformat(iso).strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return round(
            (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds(), 3
        )
    except (TypeError, ValueError):
        return None


def _settings(data: dict[str, Any]) -> dict[str, Any]:
    return data.get("settings") or {}


def queue_config(data: dict[str, Any]) -> dict[str, Any]:
    """``QueueConfig`` from the harness's queue-policy settings."""
    s = _settings(data)
    return {
        "SceneRetryBudget": s.get("max_scene_retries"),
        "HistoryMaxWaitSeconds": s.get("scene_max_wait"),
        "HistoryPollIntervalSeconds": s.get("history_poll_interval"),
        "HistoryMaxAttempts": s.get("history_max_attempts"),
        "PostExecutionTimeoutSeconds": s.get("completion_grace"),
    }


def story_id(data: dict[str, Any]) -> str | None:
    """The story's id: the harness's story has none of its own, so its content hash names it."""
    story = data.get("story") or {}
    digest = (story.get("metadata") or {}).get("story_hash")
    return f"story-{digest[:12]}" if isinstance(digest, str) and digest else None


def _story(data: dict[str, Any], root: Path) -> dict[str, Any]:
    story = data.get("story") or {}
    meta = story.get("metadata") or {}
    llm = data.get("llm") or {}
    backend = (data.get("backends") or {}).get("llm") or {}
    mode = meta.get("mode")
    generator = None if mode is None else (f"llm ({meta.get('model')})" if mode == "llm" else str(mode))
    warnings = [w for w in [meta.get("fallback_reason"), *(meta.get("warnings") or [])] if w]
    file = story.get("path")
    return {
        "Id": story_id(data),
        "Title": story.get("title"),
        "Logline": story.get("logline"),
        "DirectorsVision": story.get("directors_vision"),  # the harness's story has none unless given
        "Generator": generator,
        "File": str(root / file) if file else None,
        "StoryDir": str((root / file).parent) if file else None,
        "SceneCount": len(story.get("scenes") or []),
        "LLM": {
            "Url": backend.get("url"),
            "Simulated": bool(backend.get("simulated")),
            "Model": meta.get("model") or llm.get("model"),
            "Seed": meta.get("seed"),
            "Temperature": meta.get("temperature"),
            "RequestForm": meta.get("request_form"),
            "Attempts": meta.get("attempts"),
        }
        if story or llm
        else None,
        "HealthCheck": {
            "Healthy": llm.get("healthy"),
            "Models": llm.get("models"),
            "Model": llm.get("model"),
            "FirstLatencySeconds": llm.get("first_latency_s"),
            "Notes": llm.get("notes") or [],
        }
        if llm
        else None,
        "Warnings": warnings,
    }


# ------------------------------------------------------------------------------------ scenes
def _gpu_name(data: dict[str, Any], scene: dict[str, Any]) -> str | None:
    """The first device of ComfyUI's /system_stats (a simulator's is "simulated GPU, …")."""
    comfy = data.get("comfyui") or {}
    devices = comfy.get("devices") or []
    name = devices[0].get("name") if devices and isinstance(devices[0], dict) else None
    if name and len(comfy.get("servers") or []) > 1 and scene.get("server") != comfy.get("url"):
        return f"{name} (device of {comfy.get('url')}; scene ran on {scene.get('server')})"
    return str(name) if name else None


def _mb(value: Any) -> int | None:
    return round(value / MIB) if isinstance(value, int | float) else None


@lru_cache(maxsize=256)
def _floor_of(path: str, mtime_ns: int, node_id: str | None) -> int | None:
    from pytest_gemdirect.video.expected import expected_output

    try:
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return expected_output(workflow, node_id).frames if isinstance(workflow, dict) else None


def frame_floor(root: Path, scene: dict[str, Any]) -> int | None:
    """The frames the scene's workflow.json makes at its checked save node (None: it does not say)."""
    path = root / str((scene.get("files") or {}).get("workflow") or f"{scene['id']}/workflow.json")
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    node_id = (((scene.get("video") or {}).get("source")) or {}).get("node_id")
    return _floor_of(str(path), mtime, str(node_id) if node_id is not None else None)


def _last_attempt(scene: dict[str, Any]) -> dict[str, Any] | None:
    attempts = scene.get("attempts") or []
    return attempts[-1] if attempts else None


def _history_attempts(scene: dict[str, Any], last: dict[str, Any] | None, notes: list[str]) -> int:
    """/history polls of the scene's last attempt: the job's count, or its failure's evidence."""
    tele = scene.get("telemetry") or {}
    evidence = scene.get("evidence") or {}
    if last is not None and last.get("outcome") == "success" and isinstance(tele.get("history_polls"), int):
        return int(tele["history_polls"])
    if last is not None and evidence.get("prompt_id") == last.get("prompt_id"):
        polls = evidence.get("poll_attempts")
        if isinstance(polls, int):
            return polls
    if last is not None:
        notes.append("HistoryAttempts: the attempt's /history polls were not recorded; 0 shown")
    return 0


def _execution_success(scene: dict[str, Any], last: dict[str, Any] | None) -> tuple[bool, str | None]:
    """Whether ComfyUI said the job completed, and when the harness saw it (local time, as recorded).

    A successful attempt: when the harness had the finished job (its /history entry). A
    completion whose outputs never reached /history: the attempt's start plus the seconds after
    POST /prompt at which the completion signal came.
    """
    if last is None:
        return False, None
    if last.get("outcome") == "success":
        return True, last.get("ended_at")
    evidence = scene.get("evidence") or {}
    signal_s = evidence.get("completion_signal_s")
    if evidence.get("prompt_id") == last.get("prompt_id") and isinstance(signal_s, int | float):
        try:
            started = datetime.fromisoformat(str(last.get("started_at")))
        except ValueError:
            return True, None
        from datetime import timedelta

        return True, (started + timedelta(seconds=signal_s)).isoformat(timespec="milliseconds")
    return False, None


def scene_entry(data: dict[str, Any], scene: dict[str, Any], root: Path) -> dict[str, Any]:
    """One ``Scenes[]`` entry, telemetry included."""
    s = _settings(data)
    notes: list[str] = [str(n) for n in scene.get("notes") or []]
    last = _last_attempt(scene)
    outcome = last.get("outcome") if last else None
    reason = EXIT_REASONS.get(str(outcome), "unknown")
    detected, detected_at = _execution_success(scene, last)
    tele = scene.get("telemetry") or {}
    before, after = _mb(tele.get("vram_free_before")), _mb(tele.get("vram_free_after"))
    gpu_name = _gpu_name(data, scene)
    if gpu_name is None:
        gpu_name = "unknown (ComfyUI's /system_stats was not read in this run)"
        notes.append("GPU.Name: no device was recorded from /system_stats")
    retries = s.get("max_scene_retries")
    if retries == 0:
        notes.append(
            "SceneRetryBudget=0: the harness re-queued nothing (--max-scene-retries 0);"
            " the app's line format writes 0 as 'unbounded'"
        )
    duration = seconds_between(last.get("started_at"), last.get("ended_at")) if last else None
    if last is not None and duration is None:
        notes.append("DurationSeconds: the attempt has no end time recorded; 0 shown")
    frame_count = int((scene.get("video") or {}).get("frame_count") or scene.get("frame_count") or 0)
    floor = frame_floor(root, scene)
    if floor is None:
        notes.append("MeetsFrameFloor: the workflow does not say how many frames it makes")
    telemetry = {
        "DurationSeconds": duration or 0.0,
        "MaxWaitSeconds": s.get("scene_max_wait"),
        "PollIntervalSeconds": s.get("history_poll_interval"),
        "HistoryAttempts": _history_attempts(scene, last, notes),
        "HistoryAttemptLimit": s.get("history_max_attempts"),
        "PostExecutionTimeoutSeconds": s.get("completion_grace"),
        "HistoryExitReason": reason,
        "HistoryPostExecutionTimeoutReached": outcome == "completion_grace",
        "ExecutionSuccessDetected": detected,
        "ExecutionSuccessAt": detected_at,
        "SceneRetryBudget": retries,
        "QueueStart": (scene.get("attempts") or [{}])[0].get("started_at"),
        "QueueEnd": last.get("ended_at") if last else None,
        "Attempts": len(scene.get("attempts") or []),
        "Server": scene.get("server"),
        "GPU": {
            "Name": gpu_name,
            "VramBeforeMB": before,
            "VramAfterMB": after,
            "VramDeltaMB": after - before if before is not None and after is not None else None,
            "VramMeaning": "free VRAM of the device as ComfyUI's /system_stats reports it",
        },
        "DoneMarkerWaitSeconds": 0,  # the harness waits on ComfyUI's own messages, never a marker file
        "DoneMarkerDetected": False,
        "DoneMarkerPath": None,
        "ForcedCopyTriggered": False,  # frames are fetched from /view, never force-copied
        "ForcedCopyDebugPath": None,
        "System": {"FallbackNotes": notes},
    }
    entry: dict[str, Any] = {
        "SceneId": scene["id"],
        "Title": scene.get("title"),
        "Status": scene.get("status"),
        "Success": scene.get("status") == "passed",
        "FrameCount": frame_count,
        "FrameFloor": floor,
        "MeetsFrameFloor": None if floor is None else frame_count >= floor,
        "FramesDir": str(root / scene["frames_dir"]) if scene.get("frames_dir") else None,
        "SceneRetryBudget": retries,
        "Error": scene.get("message") if scene.get("status") != "passed" else None,
        "Telemetry": telemetry,
    }
    video = scene.get("video") or {}
    if isinstance(video.get("fps"), int | float) and video["fps"] > 0:
        entry["FinalFPS"] = video["fps"]
    if video.get("width") and video.get("height"):
        entry["FinalResolution"] = f"{video['width']}x{video['height']}"
    clip = video.get("clip") or (scene.get("files") or {}).get("clip")
    if clip:
        entry["Video"] = {
            "Path": Path(str(clip)).as_posix(),
            "DurationSeconds": video.get("duration_s"),
            "Status": "complete",
            "UpdatedAt": None,  # the harness does not record when it wrote the clip
            "Error": None,
        }
    return entry


# ------------------------------------------------------------------------------------ suites
def app_suite(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The run's suite of that name, in any letter case (the app's ``comfyUI`` is ``comfyui`` too)."""
    for suite in data.get("suites") or []:
        if str(suite.get("name", "")).lower() == name.lower():
            return dict(suite)
    return None


def exit_code(suite: dict[str, Any] | None) -> int:
    """The suite's exit code; -1 when it did not run, could not start or was ended at its timeout."""
    code = suite.get("exit_code") if suite else None
    return int(code) if isinstance(code, int) else -1


def vitest_results(data: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """``vitest-results.json`` as the app's runner writes it, when any suite ran (else None)."""
    ran = data.get("suites") or []
    if not ran:
        return None
    results: dict[str, Any] = {}
    for name, _key, prefix in APP_SUITES:
        suite = app_suite(data, name)
        results[f"{prefix}Exit"] = exit_code(suite)
        results[f"{prefix}Log"] = suite.get("log") if suite else None
    results["runDir"] = str(root)
    results["timestamp"] = max((str(s.get("started_at") or "") for s in ran), default="") or data.get(
        "started_at"
    )
    results["suites"] = [
        {
            "Suite": s.get("name"),
            "ExitCode": exit_code(s),
            "DurationMs": round(float(s.get("duration_s") or 0) * 1000),
            "LogPath": s.get("log"),
            "StartedAt": s.get("started_at"),
            "Status": s.get("status"),
        }
        for s in ran
    ]
    return results


# ------------------------------------------------------------------------------------ helpers
def mapping_preflight(data: dict[str, Any]) -> dict[str, Any]:
    """The workflow preflight of the ComfyUI stage: nodes and models checked against /object_info."""
    comfy = data.get("comfyui")
    if not comfy:
        return {"Status": "not run", "Reason": "the ComfyUI stage did not check the workflow in this run"}
    problems = list(comfy.get("preflight_problems") or [])
    return {
        "Status": "problems" if problems else "ok",
        "Workflow": comfy.get("workflow"),
        "WorkflowHash": comfy.get("workflow_hash"),
        "KeyframeWorkflow": comfy.get("keyframe_workflow"),
        "Server": comfy.get("url"),
        "NodeClasses": comfy.get("node_classes"),
        "ObjectInfoHash": comfy.get("object_info_hash"),
        "Problems": problems,
    }


def comfyui_status(data: dict[str, Any]) -> dict[str, Any]:
    """The ComfyUI check: which servers answered, their version and devices, start-up warnings."""
    comfy = data.get("comfyui")
    backend = (data.get("backends") or {}).get("comfyui") or {}
    if not comfy:
        return {"Status": "not run", "Reason": "the ComfyUI stage did not reach a server in this run"}
    return {
        "Status": "ready" if not comfy.get("preflight_problems") else "cannot run the workflow",
        "Url": comfy.get("url"),
        "Target": backend.get("target"),
        "Simulated": bool(backend.get("simulated")),
        "Version": comfy.get("version"),
        "Python": comfy.get("python"),
        "PyTorch": comfy.get("pytorch"),
        "Devices": [
            {"Name": d.get("name"), "Type": d.get("type"), "VramTotal": d.get("vram_total")}
            for d in comfy.get("devices") or []
            if isinstance(d, dict)
        ],
        "Servers": comfy.get("servers") or [],
        "StartupWarnings": comfy.get("startup_warnings") or [],
    }


# ------------------------------------------------------------------------------------ metadata
def metadata(data: dict[str, Any], root: Path, *, vitest: dict[str, Any] | None) -> dict[str, Any]:
    """``artifact-metadata.json``."""
    logs = {key: (app_suite(data, name) or {}).get("log") for name, key, _ in APP_SUITES}
    logs["ResultsJson"] = str(root / "vitest-results.json") if vitest is not None else None
    helpers = {
        key: {
            "Summary": str(root / "test-results" / f"{stem}.json"),
            "Log": str(root / "test-results" / f"{stem}.log"),
        }
        for key, stem in HELPER_FILES.items()
    }
    return {
        "RunId": data.get("run_id"),
        "Timestamp": data.get("started_at"),
        "FinishedAt": data.get("finished_at"),
        "RunDir": str(root),
        "Harness": {
            "Name": "pytest-gemdirect",
            "Version": data.get("harness_version"),
            "Status": data.get("status"),
            "StatusReason": data.get("status_reason"),
            "Simulated": bool(data.get("simulated")),
            "Summary": str(root / "run-summary.json"),
            "Report": str(root / "report.html"),
        },
        "Story": _story(data, root),
        "Scenes": [scene_entry(data, scene, root) for scene in data.get("scenes") or []],
        "QueueConfig": queue_config(data),
        "VitestLogs": logs,
        "VitestSummary": vitest,
        "Archive": None,  # the harness does not zip the run directory
        "HelperSummaries": helpers,
        "Warnings": list(data.get("warnings") or []),
    }
