"""Stage 8, run summary (marker ``summary``): the whole run's summary is valid and true to disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.pipeline import StageFailed
from pytest_gemdirect.summary import validate_summary


@dataclass(frozen=True)
class CheckedSummary:
    """run-summary.json as written and checked."""

    path: Path
    data: dict[str, Any]


def check(ctx: StageContext) -> CheckedSummary:
    """Validate the summary on disk: schema, telemetry of passed scenes, every file it names exists."""
    ctx.summary.write()
    data = json.loads(ctx.run.summary_json.read_text(encoding="utf-8"))
    problems = validate_summary(data) + _scene_problems(data)
    for label, rel in _named_files(data):
        if not (ctx.run.root / rel).exists():
            problems.append(f"{label} names {rel}, which does not exist")
    if problems:
        raise StageFailed(f"{ctx.run.summary_json} is not consistent: " + "; ".join(problems))
    return CheckedSummary(ctx.run.summary_json, data)


def _scene_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for scene in data["scenes"]:
        if scene["status"] != "passed":
            continue
        missing = [k for k in ("generation_s", "retrieval_s") if scene["telemetry"].get(k) is None]
        if missing:
            problems.append(f"{scene['id']}: telemetry lacks {', '.join(missing)}")
        if scene["frame_count"] < 1:
            problems.append(f"{scene['id']}: passed with no frames")
    return problems


def _named_files(data: dict[str, Any]) -> list[tuple[str, str]]:
    named = [(f"artifacts.{k}", v) for k, v in data["artifacts"].items()]
    for scene in data["scenes"]:
        named += [(f"{scene['id']}.files.{k}", v) for k, v in (scene.get("files") or {}).items() if v]
        if scene.get("frames_dir"):
            named.append((f"{scene['id']}.frames_dir", scene["frames_dir"]))
        clip = (scene.get("video") or {}).get("clip")
        if clip:
            named.append((f"{scene['id']}.video.clip", clip))
    return named
