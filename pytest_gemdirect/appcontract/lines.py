"""The app's lines in run-summary.txt: ``[HH:mm:ss] Story ready: …``, ``[Scene …] Telemetry: …``.

They are built from the metadata ``mapping`` made, so the text and the JSON cannot disagree.
Text from a server or the LLM (logline, errors, device names, notes) is shown one line each
with its control characters visible. Times are those recorded in the summary (local time).
"""

from __future__ import annotations

from typing import Any

from pytest_gemdirect.appcontract.mapping import (
    APP_SUITES,
    EXIT_REASONS,
    HISTORY_TROUBLE,
    app_suite,
    clock,
    exit_code,
    seconds_between,
)
from pytest_gemdirect.text import visible

TEXT_LIMIT = 500  # characters of an untrusted text on one line


def _shown(text: Any) -> str:
    return visible(str(text), limit=TEXT_LIMIT, one_line=True)


def _bool(value: Any) -> str:
    return "true" if value else "false"


def _s(value: Any) -> str:
    return f"{value:g}s" if isinstance(value, int | float) else "unknowns"


def _budget(value: Any) -> str:
    return "unbounded" if value in (0, None) else str(value)


def queue_policy_line(meta: dict[str, Any]) -> str:
    q = meta["QueueConfig"]
    return (
        f"Queue policy: sceneRetries={q['SceneRetryBudget']},"
        f" historyMaxWait={_s(q['HistoryMaxWaitSeconds'])},"
        f" historyPollInterval={_s(q['HistoryPollIntervalSeconds'])},"
        f" historyMaxAttempts={_budget(q['HistoryMaxAttempts'])},"
        f" postExecutionTimeout={_s(q['PostExecutionTimeoutSeconds'])}"
    )


def telemetry_line(entry: dict[str, Any]) -> str:
    t = entry["Telemetry"]
    gpu = t["GPU"]
    parts = [
        f"DurationSeconds={_s(t['DurationSeconds'])}",
        f"MaxWaitSeconds={_s(t['MaxWaitSeconds'])}",
        f"PollIntervalSeconds={_s(t['PollIntervalSeconds'])}",
        f"HistoryAttempts={t['HistoryAttempts']}",
        f"pollLimit={_budget(t['HistoryAttemptLimit'])}",
        f"SceneRetryBudget={_budget(t['SceneRetryBudget'])}",
        f"PostExecutionTimeoutSeconds={_s(t['PostExecutionTimeoutSeconds'])}",
        f"ExecutionSuccessDetected={_bool(t['ExecutionSuccessDetected'])}",
    ]
    if t["ExecutionSuccessAt"]:
        parts.append(f"ExecutionSuccessAt={clock(t['ExecutionSuccessAt'])}")
    parts += [
        f"HistoryExitReason={t['HistoryExitReason']}",
        f"HistoryPostExecutionTimeoutReached={_bool(t['HistoryPostExecutionTimeoutReached'])}",
    ]
    for key, label in (
        ("VramBeforeMB", "VRAMBeforeMB"),
        ("VramAfterMB", "VRAMAfterMB"),
        ("VramDeltaMB", "VRAMDeltaMB"),
    ):
        if isinstance(gpu[key], int | float):
            parts.append(f"{label}={gpu[key]}MB")
    parts += [
        f"gpu={_shown(gpu['Name']).replace('|', '/')}",
        f"DoneMarkerWaitSeconds={_s(t['DoneMarkerWaitSeconds'])}",
        f"DoneMarkerDetected={_bool(t['DoneMarkerDetected'])}",
        f"ForcedCopyTriggered={_bool(t['ForcedCopyTriggered'])}",
    ]
    return "Telemetry: " + " | ".join(parts)


def scene_lines(scene: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """The ``[Scene <id>] …`` lines of one scene, each with its time stamp."""
    sid = entry["SceneId"]
    lines: list[str] = []
    attempts = scene.get("attempts") or []
    for attempt in attempts:
        number = attempt.get("number")
        outcome = attempt.get("outcome")
        frames = entry["FrameCount"] if outcome == "success" and attempt is attempts[-1] else 0
        seconds = seconds_between(attempt.get("started_at"), attempt.get("ended_at"))
        stamp = clock(attempt.get("ended_at") or attempt.get("started_at"))
        lines.append(
            f"[{stamp}] [Scene {sid}][Attempt {number}] Frames={frames} Duration={_s(seconds)}"
            f" Outcome={_shown(outcome)} Server={_shown(attempt.get('server') or '-')}"
        )
        if EXIT_REASONS.get(str(outcome)) in HISTORY_TROUBLE:
            lines.append(
                f"[{stamp}] [Scene {sid}][Attempt {number}] HISTORY WARNING:"
                f" {EXIT_REASONS[str(outcome)]}: {_shown(attempt.get('reason') or outcome)}"
            )
        elif outcome not in ("success", "running") and attempt is not attempts[-1]:
            lines.append(
                f"[{stamp}] [Scene {sid}][Attempt {number}] Retry after: {_shown(attempt.get('reason'))}"
            )
    last_stamp = clock((attempts[-1].get("ended_at") or attempts[-1].get("started_at")) if attempts else None)
    if entry["MeetsFrameFloor"] is False:
        lines.append(
            f"[{last_stamp}] [Scene {sid}] WARNING: Frame count below floor"
            f" (FrameCount={entry['FrameCount']}, floor={entry['FrameFloor']})"
        )
    if not entry["Success"]:
        why = entry.get("Error") or f"status {entry.get('Status')}"
        lines.append(f"[{last_stamp}] [Scene {sid}] ERROR: {_shown(why)}")
    lines.append(f"[{last_stamp}] [Scene {sid}] {telemetry_line(entry)}")
    for note in entry["Telemetry"]["System"]["FallbackNotes"]:
        lines.append(f"[{last_stamp}] [Scene {sid}] Note: {_shown(note)}")
    return lines


def suite_lines(data: dict[str, Any]) -> list[str]:
    """``Vitest <suite> exitCode=N`` for each of the app's suites; -1 and why for one that did not run."""
    lines = []
    for name, _key, _prefix in APP_SUITES:
        suite = app_suite(data, name)
        if suite is None:
            stamp = clock(data.get("finished_at") or data.get("started_at"))
            lines.append(
                f"[{stamp}] Vitest {name} exitCode=-1 (did not run: no suite named {name} in this run)"
            )
            continue
        stamp = clock(suite.get("started_at") or data.get("started_at"))
        status = suite.get("status")
        why = "" if isinstance(suite.get("exit_code"), int) else f" ({_shown(status)}: no exit code)"
        lines.append(
            f"[{stamp}] Vitest {name} exitCode={exit_code(suite)}{why} status={_shown(status)}"
            f" log={_shown(suite.get('log'))}"
        )
    return lines


def app_lines(data: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Every app line of run-summary.txt, in the order the app's runner writes them."""
    start = clock(data.get("started_at"))
    story = meta["Story"]
    lines: list[str] = []
    if story["Id"] is not None:
        lines.append(f"[{start}] Story ready: {story['Id']} (scenes={story['SceneCount']})")
        lines.append(f"[{start}] Story logline: {_shown(story['Logline'] or '')}")
        for warning in story["Warnings"]:
            lines.append(f"[{start}] Story warning: {_shown(warning)}")
    lines.append(f"[{start}] {queue_policy_line(meta)}")
    scenes = {scene["id"]: scene for scene in data.get("scenes") or []}
    for entry in meta["Scenes"]:
        lines += scene_lines(scenes[entry["SceneId"]], entry)
    lines += suite_lines(data)
    lines += ["", "## Artifact Index"]
    lines.append(f"Run directory: {meta['RunDir']}")
    if story["File"]:
        lines.append(f"Story: {story['File']}")
    for entry in meta["Scenes"]:
        if entry["FramesDir"]:
            lines.append(f"Scene {entry['SceneId']} frames: {entry['FramesDir']} ({entry['FrameCount']})")
        if entry.get("Video"):
            lines.append(f"Scene {entry['SceneId']} video: {entry['Video']['Path']}")
    for name, path in meta["VitestLogs"].items():
        if path:
            lines.append(f"Vitest {name}: {path}")
    lines.append(f"Total frames copied: {sum(e['FrameCount'] for e in meta['Scenes'])}")
    return lines
