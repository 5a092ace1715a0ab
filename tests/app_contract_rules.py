"""A validator of the app's run contract, written from the rules in issue 21 (not the app's own).

``check(run_dir)`` reads ``artifact-metadata.json``, ``run-summary.txt`` and, when present,
``vitest-results.json``, and returns each broken rule as a :class:`Finding` naming the rule (an id
of :data:`RULES`). A missing helper summary file is a warning, as the app's validator has it.

A plain module (its name does not start with ``test_``): tests import it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RULES: dict[str, str] = {
    # run level: run-summary.txt
    "txt-story-ready": "a line containing 'Story ready:'",
    "txt-story-logline": "a line containing 'Story logline:'",
    "txt-scene-line": "at least one '[Scene scene-NNN]' line",
    "txt-vitest-comfyui": "a line containing 'Vitest comfyUI exitCode='",
    "txt-vitest-e2e": "a line containing 'Vitest e2e exitCode='",
    "txt-vitest-scripts": "a line containing 'Vitest scripts exitCode='",
    "txt-artifact-index": "a '## Artifact Index' heading",
    "txt-total-frames": "'Total frames copied: N' with N > 0",
    "txt-queue-policy": "a 'Queue policy: …' line whose values equal QueueConfig",
    "txt-timestamps": "each app line (story, queue policy, scene, vitest) starts with [HH:mm:ss]",
    # run level: artifact-metadata.json
    "meta-keys": "RunId, Timestamp, RunDir, Story, Scenes, QueueConfig, VitestLogs, VitestSummary, Archive,"
    " HelperSummaries",
    "meta-story": "Story has Id, Logline, DirectorsVision, Generator, File, StoryDir, LLM, HealthCheck,"
    " Warnings",
    "meta-scenes": "Scenes has at least one scene",
    "meta-queue-config": "QueueConfig has SceneRetryBudget, HistoryMaxWaitSeconds,"
    " HistoryPollIntervalSeconds,"
    " HistoryMaxAttempts, PostExecutionTimeoutSeconds",
    "meta-vitest-logs": "VitestLogs has ComfyUI, E2E, Scripts, ResultsJson",
    "meta-helpers": "HelperSummaries.MappingPreflight and .ComfyUIStatus each have a Summary"
    " (a missing file warns)",
    # per scene
    "scene-keys": "SceneId, Success, FrameCount, MeetsFrameFloor, SceneRetryBudget, Telemetry",
    "scene-floor-warning": "MeetsFrameFloor=false needs a '[Scene <id>] … WARNING: Frame count below floor'"
    " line",
    "scene-history-line": "trouble with history needs a '[Scene <id>] … HISTORY …' line",
    "scene-error-line": "Success=false needs a '[Scene <id>] … ERROR …' line",
    "scene-telemetry-line": "Telemetry present, with a '[Scene <id>] … Telemetry:' line",
    "telemetry-non-null": "DurationSeconds, MaxWaitSeconds, PollIntervalSeconds, HistoryAttempts,"
    " HistoryAttemptLimit, PostExecutionTimeoutSeconds are not null",
    "telemetry-exit-reason": "HistoryExitReason is success, maxWait, attemptLimit, postExecution or unknown",
    "telemetry-keys": "HistoryPostExecutionTimeoutReached, ExecutionSuccessDetected, ExecutionSuccessAt,"
    " SceneRetryBudget, DoneMarkerWaitSeconds, DoneMarkerDetected, ForcedCopyTriggered, ForcedCopyDebugPath",
    "telemetry-success-at": "ExecutionSuccessAt is set when ExecutionSuccessDetected",
    "line-poll-limit": "the Telemetry line's pollLimit= equals HistoryAttemptLimit (or unbounded)",
    "line-retry-budget": "the Telemetry line's SceneRetryBudget= equals the metadata (0 -> unbounded)",
    "line-done-marker-wait": "the Telemetry line's DoneMarkerWaitSeconds=Xs equals the metadata (±0.1)",
    "line-done-marker-detected": "the Telemetry line's DoneMarkerDetected= equals the metadata",
    "line-forced-copy": "the Telemetry line's ForcedCopyTriggered= equals the metadata",
    "line-vram": "VRAMBeforeMB=…MB VRAMAfterMB=…MB VRAMDeltaMB=…MB on the line when numeric, equal to GPU",
    "gpu": "Telemetry.GPU: Name non-empty; VramBeforeMB, VramAfterMB, VramDeltaMB present;"
    " delta = after - before",
    "fallback-notes": "Telemetry.System.FallbackNotes present, each note on that scene's lines",
    "scene-final-fps": "FinalFPS, when present, is a number > 0",
    "scene-final-resolution": "FinalResolution, when present, looks like 1280x544",
    "scene-video": "Video, when present: Path (forward slashes), DurationSeconds, Status, UpdatedAt, Error;"
    " Status complete needs a Path",
    # vitest-results.json
    "vitest-results-shape": "vitest-results.json has comfyExit, e2eExit, scriptsExit, comfyLog, e2eLog,"
    " scriptsLog, runDir, timestamp, suites[{Suite, ExitCode, DurationMs, LogPath, StartedAt}]",
    "vitest-exit-codes-agree": "the exitCode lines equal vitest-results.json's exit codes",
}

EXIT_REASONS = ("success", "maxWait", "attemptLimit", "postExecution", "unknown")
STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
APP_LINE = re.compile(r"Story ready:|Story logline:|Queue policy:|\[Scene |Vitest \S+ exitCode=")
SUITES = (("comfyUI", "comfy"), ("e2e", "e2e"), ("scripts", "scripts"))


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str


@dataclass
class Result:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def fail(self, rule: str, message: str) -> None:
        assert rule in RULES, rule
        self.errors.append(Finding(rule, message))

    @property
    def rules(self) -> set[str]:
        return {f.rule for f in self.errors}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)s", text)
    return float(match[1]) if match else None


def _line_fields(line: str) -> dict[str, str]:
    """``Key=value`` pairs of a Telemetry line (``|``-separated)."""
    body = line.split("Telemetry:", 1)[1]
    fields = {}
    for part in body.split("|"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key] = value.strip()
    return fields


def check(run_dir: Path) -> Result:
    """Every rule of the contract over one run directory."""
    result = Result()
    run_dir = Path(run_dir)
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    meta = json.loads((run_dir / "artifact-metadata.json").read_text(encoding="utf-8"))
    _run_lines(result, lines, meta)
    _metadata(result, meta)
    for scene in meta.get("Scenes") or []:
        _scene(result, scene, lines)
    vitest_path = run_dir / "vitest-results.json"
    if vitest_path.is_file():
        _vitest(result, json.loads(vitest_path.read_text(encoding="utf-8")), lines)
    return result


def _run_lines(result: Result, lines: list[str], meta: dict[str, Any]) -> None:
    for rule, needle in (
        ("txt-story-ready", "Story ready:"),
        ("txt-story-logline", "Story logline:"),
        ("txt-vitest-comfyui", "Vitest comfyUI exitCode="),
        ("txt-vitest-e2e", "Vitest e2e exitCode="),
        ("txt-vitest-scripts", "Vitest scripts exitCode="),
    ):
        if not any(needle in line for line in lines):
            result.fail(rule, f"no line contains {needle!r}")
    if not any(re.search(r"\[Scene scene-\d{3}\]", line) for line in lines):
        result.fail("txt-scene-line", "no [Scene scene-NNN] line")
    if not any(line.strip() == "## Artifact Index" for line in lines):
        result.fail("txt-artifact-index", "no '## Artifact Index' heading")
    totals = [re.search(r"Total frames copied: (\d+)", line) for line in lines]
    counts = [int(m[1]) for m in totals if m]
    if not counts or counts[-1] <= 0:
        result.fail("txt-total-frames", f"Total frames copied: {counts or 'missing'}")
    _queue_policy(result, lines, meta.get("QueueConfig") or {})
    for line in lines:
        if APP_LINE.search(line) and not STAMP.match(line) and not line.startswith("  "):
            result.fail("txt-timestamps", f"no [HH:mm:ss] stamp: {line[:80]!r}")


def _queue_policy(result: Result, lines: list[str], queue: dict[str, Any]) -> None:
    pattern = re.compile(
        r"Queue policy: sceneRetries=(\d+), historyMaxWait=(\S+)s, historyPollInterval=(\S+)s,"
        r" historyMaxAttempts=(\d+|unbounded), postExecutionTimeout=(\S+)s"
    )
    found = [m for m in map(pattern.search, lines) if m]
    if not found:
        result.fail("txt-queue-policy", "no 'Queue policy: …' line of the contract's shape")
        return
    retries, wait, interval, attempts, grace = found[0].groups()
    wanted = {
        "SceneRetryBudget": (int(retries), queue.get("SceneRetryBudget")),
        "HistoryMaxWaitSeconds": (float(wait), queue.get("HistoryMaxWaitSeconds")),
        "HistoryPollIntervalSeconds": (float(interval), queue.get("HistoryPollIntervalSeconds")),
        "HistoryMaxAttempts": (
            None if attempts == "unbounded" else int(attempts),
            queue.get("HistoryMaxAttempts"),
        ),
        "PostExecutionTimeoutSeconds": (float(grace), queue.get("PostExecutionTimeoutSeconds")),
    }
    for key, (shown, value) in wanted.items():
        if shown is None and value in (0, None):
            continue
        if not _number(value) or shown is None or abs(float(shown) - float(value)) > 1e-9:
            result.fail("txt-queue-policy", f"Queue policy shows {key}={shown}, QueueConfig has {value!r}")


def _has(result: Result, rule: str, where: str, obj: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        result.fail(rule, f"{where} is not an object")
        return
    missing = [k for k in keys if k not in obj]
    if missing:
        result.fail(rule, f"{where} lacks {', '.join(missing)}")


def _metadata(result: Result, meta: dict[str, Any]) -> None:
    top = (
        "RunId",
        "Timestamp",
        "RunDir",
        "Story",
        "Scenes",
        "QueueConfig",
        "VitestLogs",
        "VitestSummary",
        "Archive",
        "HelperSummaries",
    )
    _has(result, "meta-keys", "artifact-metadata.json", meta, top)
    story_keys = (
        "Id",
        "Logline",
        "DirectorsVision",
        "Generator",
        "File",
        "StoryDir",
        "LLM",
        "HealthCheck",
        "Warnings",
    )
    _has(result, "meta-story", "Story", meta.get("Story"), story_keys)
    if not isinstance(meta.get("Scenes"), list) or not meta["Scenes"]:
        result.fail("meta-scenes", "Scenes is empty or missing")
    queue_keys = (
        "SceneRetryBudget",
        "HistoryMaxWaitSeconds",
        "HistoryPollIntervalSeconds",
        "HistoryMaxAttempts",
        "PostExecutionTimeoutSeconds",
    )
    _has(result, "meta-queue-config", "QueueConfig", meta.get("QueueConfig"), queue_keys)
    _has(
        result,
        "meta-vitest-logs",
        "VitestLogs",
        meta.get("VitestLogs"),
        ("ComfyUI", "E2E", "Scripts", "ResultsJson"),
    )
    helpers = meta.get("HelperSummaries")
    for name in ("MappingPreflight", "ComfyUIStatus"):
        entry = helpers.get(name) if isinstance(helpers, dict) else None
        summary = entry.get("Summary") if isinstance(entry, dict) else None
        if not summary:
            result.fail("meta-helpers", f"HelperSummaries.{name}.Summary is not set")
        elif not Path(summary).is_file():
            result.warnings.append(
                Finding("meta-helpers", f"HelperSummaries.{name}.Summary {summary} is missing")
            )


def _scene(result: Result, scene: dict[str, Any], lines: list[str]) -> None:
    sid = scene.get("SceneId")
    keys = ("SceneId", "Success", "FrameCount", "MeetsFrameFloor", "SceneRetryBudget", "Telemetry")
    _has(result, "scene-keys", f"scene {sid}", scene, keys)
    own = [line for line in lines if f"[Scene {sid}]" in line]
    if scene.get("MeetsFrameFloor") is False and not any(
        "WARNING: Frame count below floor" in x for x in own
    ):
        result.fail(
            "scene-floor-warning", f"{sid}: MeetsFrameFloor=false but no 'Frame count below floor' line"
        )
    if scene.get("Success") is False and not any("ERROR" in line for line in own):
        result.fail("scene-error-line", f"{sid}: Success=false but no ERROR line")
    tele = scene.get("Telemetry")
    tele_lines = [line for line in own if "Telemetry:" in line]
    if not isinstance(tele, dict) or not tele_lines:
        result.fail(
            "scene-telemetry-line", f"{sid}: Telemetry or its '[Scene {sid}] … Telemetry:' line is missing"
        )
        return
    trouble = tele.get("HistoryExitReason") in ("maxWait", "attemptLimit", "postExecution") or tele.get(
        "HistoryPostExecutionTimeoutReached"
    )
    if trouble and not any("HISTORY" in line for line in own):
        result.fail("scene-history-line", f"{sid}: {tele.get('HistoryExitReason')} but no HISTORY line")
    _telemetry(result, sid, tele, scene, _line_fields(tele_lines[-1]), own)
    _optional(result, sid, scene)


def _telemetry(
    result: Result,
    sid: Any,
    tele: dict[str, Any],
    scene: dict[str, Any],
    shown: dict[str, str],
    own: list[str],
) -> None:
    required = (
        "DurationSeconds",
        "MaxWaitSeconds",
        "PollIntervalSeconds",
        "HistoryAttempts",
        "HistoryAttemptLimit",
        "PostExecutionTimeoutSeconds",
    )
    nulls = [k for k in required if tele.get(k) is None]
    if nulls:
        result.fail("telemetry-non-null", f"{sid}: {', '.join(nulls)} null or missing")
    if tele.get("HistoryExitReason") not in EXIT_REASONS:
        result.fail("telemetry-exit-reason", f"{sid}: HistoryExitReason {tele.get('HistoryExitReason')!r}")
    keys = (
        "HistoryPostExecutionTimeoutReached",
        "ExecutionSuccessDetected",
        "ExecutionSuccessAt",
        "SceneRetryBudget",
        "DoneMarkerWaitSeconds",
        "DoneMarkerDetected",
        "ForcedCopyTriggered",
        "ForcedCopyDebugPath",
    )
    _has(result, "telemetry-keys", f"{sid} Telemetry", tele, keys)
    if tele.get("ExecutionSuccessDetected") and not tele.get("ExecutionSuccessAt"):
        result.fail("telemetry-success-at", f"{sid}: ExecutionSuccessDetected but no ExecutionSuccessAt")
    limit = tele.get("HistoryAttemptLimit")
    if shown.get("pollLimit") != ("unbounded" if limit in (0, None) else str(limit)):
        result.fail(
            "line-poll-limit", f"{sid}: pollLimit={shown.get('pollLimit')}, HistoryAttemptLimit={limit}"
        )
    budget = scene.get("SceneRetryBudget")
    if tele.get("SceneRetryBudget") != budget or shown.get("SceneRetryBudget") != (
        "unbounded" if budget == 0 else str(budget)
    ):
        result.fail(
            "line-retry-budget",
            f"{sid}: SceneRetryBudget line {shown.get('SceneRetryBudget')}, meta {budget}",
        )
    wait = _seconds(shown.get("DoneMarkerWaitSeconds", ""))
    if (
        wait is None
        or not _number(tele.get("DoneMarkerWaitSeconds"))
        or abs(wait - tele["DoneMarkerWaitSeconds"]) > 0.1
    ):
        result.fail(
            "line-done-marker-wait", f"{sid}: DoneMarkerWaitSeconds={shown.get('DoneMarkerWaitSeconds')}"
        )
    for rule, key in (
        ("line-done-marker-detected", "DoneMarkerDetected"),
        ("line-forced-copy", "ForcedCopyTriggered"),
    ):
        if shown.get(key) != str(bool(tele.get(key))).lower():
            result.fail(rule, f"{sid}: {key}={shown.get(key)} on the line, {tele.get(key)!r} in the metadata")
    _gpu_and_notes(result, sid, tele, shown, own)


def _gpu_and_notes(
    result: Result, sid: Any, tele: dict[str, Any], shown: dict[str, str], own: list[str]
) -> None:
    gpu = tele.get("GPU")
    if (
        not isinstance(gpu, dict)
        or not gpu.get("Name")
        or not all(k in gpu for k in ("VramBeforeMB", "VramAfterMB", "VramDeltaMB"))
    ):
        result.fail("gpu", f"{sid}: GPU name or VRAM keys missing: {gpu!r}")
    else:
        before, after, delta = gpu["VramBeforeMB"], gpu["VramAfterMB"], gpu["VramDeltaMB"]
        if _number(before) and _number(after) and (not _number(delta) or abs(after - before - delta) > 0.01):
            result.fail("gpu", f"{sid}: VramDeltaMB {delta} is not {after} - {before}")
        for key, label in (
            ("VramBeforeMB", "VRAMBeforeMB"),
            ("VramAfterMB", "VRAMAfterMB"),
            ("VramDeltaMB", "VRAMDeltaMB"),
        ):
            value = gpu[key]
            if _number(value):
                text = shown.get(label, "")
                if not text.endswith("MB") or abs(float(text[:-2] or "nan") - value) > 0.01:
                    result.fail(
                        "line-vram", f"{sid}: {label}={text or '(missing)'} on the line, {value} in GPU"
                    )
    system = tele.get("System")
    notes = system.get("FallbackNotes") if isinstance(system, dict) else None
    if not isinstance(notes, list):
        result.fail("fallback-notes", f"{sid}: Telemetry.System.FallbackNotes missing")
    else:
        joined = "\n".join(own)
        for note in notes:
            if str(note) not in joined:
                result.fail("fallback-notes", f"{sid}: note {note!r} is not on the scene's lines")


def _optional(result: Result, sid: Any, scene: dict[str, Any]) -> None:
    if "FinalFPS" in scene and not (_number(scene["FinalFPS"]) and scene["FinalFPS"] > 0):
        result.fail("scene-final-fps", f"{sid}: FinalFPS {scene['FinalFPS']!r}")
    if "FinalResolution" in scene and not re.fullmatch(r"\d+x\d+", str(scene["FinalResolution"])):
        result.fail("scene-final-resolution", f"{sid}: FinalResolution {scene['FinalResolution']!r}")
    if "Video" not in scene:
        return
    video = scene["Video"]
    if not isinstance(video, dict) or not all(
        k in video for k in ("Path", "DurationSeconds", "Status", "UpdatedAt", "Error")
    ):
        result.fail("scene-video", f"{sid}: Video {video!r}")
        return
    if video["Path"] is not None and (not isinstance(video["Path"], str) or "\\" in video["Path"]):
        result.fail("scene-video", f"{sid}: Video.Path {video['Path']!r} is not a forward-slash path")
    if video["Status"] == "complete" and not video["Path"]:
        result.fail("scene-video", f"{sid}: Video.Status complete without a Path")
    if video["DurationSeconds"] is not None and not _number(video["DurationSeconds"]):
        result.fail("scene-video", f"{sid}: Video.DurationSeconds {video['DurationSeconds']!r}")


def _vitest(result: Result, vitest: dict[str, Any], lines: list[str]) -> None:
    keys = (
        "comfyExit",
        "e2eExit",
        "scriptsExit",
        "comfyLog",
        "e2eLog",
        "scriptsLog",
        "runDir",
        "timestamp",
        "suites",
    )
    _has(result, "vitest-results-shape", "vitest-results.json", vitest, keys)
    suites = vitest.get("suites")
    if not isinstance(suites, list) or not all(
        isinstance(s, dict)
        and all(k in s for k in ("Suite", "ExitCode", "DurationMs", "LogPath", "StartedAt"))
        for s in suites
    ):
        result.fail("vitest-results-shape", f"vitest-results.json suites {suites!r}")
    for name, prefix in SUITES:
        found = [m for m in (re.search(rf"Vitest {name} exitCode=(-?\d+)", line) for line in lines) if m]
        if found and int(found[0][1]) != vitest.get(f"{prefix}Exit"):
            result.fail(
                "vitest-exit-codes-agree",
                f"{name}: exitCode={found[0][1]} in run-summary.txt,"
                f" {vitest.get(f'{prefix}Exit')!r} in vitest-results.json",
            )
