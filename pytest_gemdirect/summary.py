"""The run summary: one dict, rewritten atomically (JSON and text) every time the run learns something."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pytest_gemdirect import __version__
from pytest_gemdirect.catalogue import SCENE_STAGES, STAGE_NAMES, STAGE_TITLES, StageKey
from pytest_gemdirect.rundir import RunDirectory, atomic_write_json, atomic_write_text
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.text import visible

# The outcomes a reader must be told about: "What went wrong" in the summary, terminal and report.
WRONG = ("failed", "interrupted")
SYMBOLS = {  # plain ASCII: a cp1252 console or a font without emoji shows them as they are
    "passed": "[+]",
    "failed": "[x]",
    "not_reached": "[-]",
    "skipped": "[~]",
    "running": "[>]",
    "interrupted": "[!]",
    "deselected": "[ ]",
}


CHECK_RANK = {"passed": 0, "skipped": 1, "failed": 2}  # a check's worst outcome over its phases


def scene_ids(count: int) -> list[str]:
    """``scene-001`` … for a story of ``count`` scenes."""
    return [f"scene-{n:03d}" for n in range(1, count + 1)]


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunSummary:
    """Everything the run has recorded so far; every change is written to disk at once."""

    def __init__(
        self, run: RunDirectory, *, settings: dict[str, Any], sources: dict[str, str], scene_ids: list[str]
    ):
        self.run = run
        self._lock = threading.RLock()
        self._closed = False  # finished: later updates (threads still running) are not written
        self._started_scenes: set[str] = set()  # their generation stage is at work
        self._started = time.monotonic()
        self._items: dict[StageKey, dict[str, Any]] = {}  # as the summary records them
        self._scene_details: dict[str, dict[str, Any]] = {}  # scene.json's fields beyond the summary's
        self._scene_written: dict[str, str] = {}  # scene.json as last written, per scene
        self.data: dict[str, Any] = {
            "schema_version": 1,
            "run_id": run.run_id,
            "status": "running",
            "status_reason": None,
            "started_at": _now(),
            "finished_at": None,
            "duration_s": None,
            "run_dir": str(run.root),
            "simulated": False,
            "harness_version": __version__,
            "backends": {},
            "settings": settings,
            "setting_sources": sources,
            "stages": [],
            "scenes": [self._new_scene(scene_id) for scene_id in scene_ids],
            "story": None,
            "environment": None,
            "llm": None,
            "comfyui": None,
            "suites": [],
            "warnings": [],
            "artifacts": {},
        }
        self._rebuild_stages()

    @staticmethod
    def _new_scene(scene_id: str) -> dict[str, Any]:
        return {
            "id": scene_id,
            "status": "not_reached",
            "title": None,
            "prompt_id": None,
            "server": None,
            "failed_stage": None,
            "message": None,
            "attempts": [],
            "frame_count": 0,
            "frames_dir": None,
            "telemetry": {},
            "files": {},
            "notes": [],
            "evidence": None,
        }

    # --- updates (each one writes) -------------------------------------------------------

    def set_backend(self, name: str, info: dict[str, Any]) -> None:
        with self._lock:
            self.data["backends"][name] = info
            self.data["simulated"] = any(b.get("simulated") for b in self.data["backends"].values())
            if info.get("replayed"):  # --replay: the label says from which recorded run
                self.data["replayed"] = info["replayed"]
            self.write()

    def set_section(self, name: str, value: object) -> None:
        with self._lock:
            self.data[name] = value
            self.write()

    def warn(self, text: str) -> None:
        with self._lock:
            if text not in self.data["warnings"]:
                self.data["warnings"].append(text)
            self.write()

    def artifact(self, name: str, path: Path | str | None) -> None:
        with self._lock:
            self.data["artifacts"][name] = self.run.relative(path)
            self.write()

    def scene(self, scene_id: str) -> dict[str, Any]:
        """The scene's record (added when a scene beyond the configured count shows up)."""
        for scene in self.data["scenes"]:
            if scene["id"] == scene_id:
                return cast(dict[str, Any], scene)
        scene = self._new_scene(scene_id)
        self.data["scenes"].append(scene)
        return scene

    def update_scene(self, scene_id: str, **fields: object) -> None:
        with self._lock:
            self.scene(scene_id).update(fields)
            self._update_scene_status(scene_id)
            self.write()

    def set_scene_details(self, scene_id: str, details: dict[str, Any]) -> None:
        """Fields scene-NNN/scene.json holds beyond the scene's summary record (settings, frames…).

        scene.json is rewritten with the summary, so the two never disagree about the scene.
        """
        with self._lock:
            self._scene_details[scene_id] = details
            self.write()

    def record_check(self, test: str, scene: str | None, status: str, message: str | None) -> None:
        """A user's own check over a stage's result: its row, its outcome and (failed) its message.

        A test reports up to three times (setup, call, teardown): a failure or skip stays.
        """
        with self._lock:
            checks: list[dict[str, Any]] = self.data.setdefault("checks", [])
            row = next((c for c in checks if c["test"] == test), None)
            if row is None:
                checks.append({"test": test, "scene": scene, "status": status, "message": message})
            elif CHECK_RANK[status] > CHECK_RANK[row["status"]]:
                row.update(status=status, message=message)
            self.write()

    def start_scene(self, scene_id: str) -> None:
        """The scene's generation has begun (keyframe, upload or job): it is "running" from now."""
        with self._lock:
            self._started_scenes.add(scene_id)
            self._update_scene_status(scene_id)
            self.write()

    def record_item(
        self, key: StageKey, status: str, *, duration_s: float | None = None, message: str | None = None
    ) -> None:
        """The outcome of one stage node (``llm``, ``svd[scene-001]``, ``suites[vitest]``)."""
        with self._lock:
            self._items[key] = {
                "key": str(key),
                "status": status,
                "duration_s": duration_s,
                "message": message,
            }
            if key.scene is not None:
                self._update_scene_status(key.scene)
            self._rebuild_stages()
            self.write()

    def _update_scene_status(self, scene_id: str) -> None:
        scene = self.scene(scene_id)
        statuses = {}
        for stage in SCENE_STAGES:  # generation, then retrieval
            item = self._items.get(StageKey(stage, scene_id), {})
            statuses[stage] = item.get("status")
            if item.get("status") in WRONG:
                scene["status"], scene["failed_stage"] = item["status"], stage
                scene["message"] = item["message"]
                return
        started = scene_id in self._started_scenes  # generating, or awaiting retrieval
        done = statuses[SCENE_STAGES[-1]] == "passed"
        scene["status"] = "passed" if done else ("running" if started else "not_reached")

    def _rebuild_stages(self) -> None:
        stages = []
        for name in STAGE_NAMES:
            keys = [key for key in self._items if key.stage == name]
            items = [self._items[key] for key in keys]
            statuses = {item["status"] for item in items}
            if "failed" in statuses:
                status = "failed"
            elif "interrupted" in statuses:
                status = "interrupted"
            elif "passed" in statuses:
                status = "passed"
            elif statuses == {"skipped"}:
                status = "skipped"
            else:
                status = "not_reached"
            durations = [item["duration_s"] for item in items if item["duration_s"] is not None]
            messages = [item["message"] for item in items if item["status"] == status and item["message"]]
            entry: dict[str, Any] = {
                "name": name,
                "status": status,
                "duration_s": round(sum(durations), 3) if durations else None,
                "message": messages[0] if messages else None,
            }
            if any(key.item is not None for key in keys):
                entry["items"] = sorted(items, key=lambda item: item["key"])
            stages.append(entry)
        self.data["stages"] = stages

    def finish(
        self,
        status: str,
        reason: str | None = None,
        *,
        failed_tests: Sequence[str] = (),
        selected_stages: Iterable[str] | None = None,
    ) -> None:
        """Close the run: ``passed``/``failed`` from the stages unless told ``interrupted``.

        ``failed`` or ``interrupted`` here means the run was cut short (Ctrl-C, a timeout that
        ends the process): scenes still open say so. ``failed_tests``, the pipeline tests pytest
        counted as failed, fail a run whose stages all passed. Nothing is written after this.
        """
        with self._lock:
            cut_short = status != "passed"
            if status != "interrupted":
                failed = [s["name"] for s in self.data["stages"] if s["status"] == "failed"]
                status = "failed" if failed or status == "failed" else "passed"
                if failed and reason is None:
                    reason = "failed: " + ", ".join(failed)
                if status == "passed" and failed_tests:
                    status, reason = "failed", tests_failed_reason(failed_tests)
            self._close_open_scenes(cut_short=cut_short, reason=reason)
            if selected_stages is not None:
                self._explain_deselected(set(selected_stages))
            self.data["status"] = status
            self.data["status_reason"] = reason
            self.data["finished_at"] = _now()
            self.data["duration_s"] = round(time.monotonic() - self._started, 3)
            self.write()
            self._closed = True

    def _explain_deselected(self, selected: set[str]) -> None:
        """A stage whose tests were not selected says why its row looks as it does."""
        for stage in self.data["stages"]:
            if stage["name"] in selected or stage["message"]:
                continue  # selected, or it has its own word to say (a failure, a skip reason)
            stage["work_ran"] = stage["status"] != "not_reached"
            stage["status"] = "deselected"
            if not stage["work_ran"]:
                stage["message"] = "its tests were not selected and no selected test needed its work"
            else:
                stage["message"] = "its tests were not selected; its work ran for the stages that needed it"

    def _close_open_scenes(self, *, cut_short: bool, reason: str | None) -> None:
        """A finished run has no scene or attempt "running": say what happened to those still open."""
        for scene in self.data["scenes"]:
            for attempt in scene["attempts"]:
                if attempt.get("outcome") != "running":
                    continue
                if cut_short:
                    attempt.update(ended_at=_now(), outcome="interrupted", reason=f"the run ended: {reason}")
                else:
                    reason = scene.get("message") or "its stage ended while the attempt was running"
                    attempt.update(ended_at=_now(), outcome="abandoned", reason=reason)
            if scene["status"] != "running":
                continue
            if cut_short:
                scene["status"] = "interrupted"
                scene["message"] = f"the run ended before this scene did: {reason}"
            else:
                scene["status"] = "not_reached"
                scene["message"] = "its frames were not retrieved in this run (frames stage not run)"

    # --- output ----------------------------------------------------------------------------

    def write(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.data["duration_s"] = round(time.monotonic() - self._started, 3)
            write_summary_files(self.run, self.data)
            # Every scene that started has its scene.json, a failed one too (with what the record
            # says; the frames stage adds its details).
            for scene_id in sorted(self._started_scenes | set(self._scene_details)):
                details = self._scene_details.get(scene_id, {})
                # Only a scene whose record changed is rewritten: with 8 scenes every update would
                # otherwise rewrite (and fsync) eight scene.json files that say what they said.
                text = json.dumps(
                    {**self.scene(scene_id), **details}, indent=2, ensure_ascii=False, default=str
                )
                if self._scene_written.get(scene_id) != text:
                    atomic_write_text(self.run.scene_dir(scene_id) / "scene.json", text + "\n")
                    self._scene_written[scene_id] = text

    def failures(self) -> list[dict[str, Any]]:
        """Every failed stage node with its message, in stage order."""
        return failures(self.data)


def write_summary_files(run: RunDirectory, data: dict[str, Any]) -> None:
    """run-summary.json and run-summary.txt, each atomically; the app's contract after them."""
    atomic_write_json(run.summary_json, data)
    from pytest_gemdirect.appcontract import export  # the app's run contract, read by its own tools

    atomic_write_text(run.summary_txt, render_text(data) + export(run.root, data))


def tests_failed_reason(failed_tests: Sequence[str]) -> str:
    """Why a run whose stages passed still failed: pytest failed some of its tests elsewhere."""
    return f"pytest failed {', '.join(failed_tests)} outside the stage's own check (see pytest's output)"


def failures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed (or interrupted) stage node of a summary with its message, in stage order."""
    return [item for s in data["stages"] for item in _items_of(s) if item["status"] in WRONG]


def _items_of(stage: dict[str, Any]) -> list[dict[str, Any]]:
    if "items" in stage:
        return cast(list[dict[str, Any]], stage["items"])
    return [{"key": stage["name"], "status": stage["status"], "message": stage["message"]}]


def validate_summary(data: dict[str, Any]) -> list[str]:
    """Schema errors of a summary, as ``path: message`` lines (empty when valid)."""
    import jsonschema  # here, not at import: the plugin loads in every pytest run

    validator = jsonschema.Draft202012Validator(load_schema("run-summary.schema.json"))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]


def verdict(data: dict[str, Any]) -> str:
    """One line: did it pass, and if not, which step."""
    status = data["status"]
    sim = " on the SIMULATED backend (not a GPU run)" if data.get("simulated") else ""
    if data.get("replayed"):
        sim = f" — {data['replayed']['label']}"
    if status == "passed":
        return f"PASSED{sim}"
    if status == "running":
        return f"RUNNING{sim}"
    reason = data.get("status_reason") or ""
    if reason.strip().lower() == status:  # "INTERRUPTED — interrupted" says it twice
        reason = ""
    return f"{status.upper()}{sim}" + (f" — {reason}" if reason else "")


def render_text(data: dict[str, Any]) -> str:
    """The summary for people: verdict, step table, scenes, failures, artifacts."""
    lines = [f"gemdirect run {data['run_id']}: {verdict(data)}", f"run directory: {data['run_dir']}", ""]
    for name, backend in sorted(data["backends"].items()):
        flag = (
            " (REPLAYED)" if backend.get("replayed") else " (SIMULATED)" if backend.get("simulated") else ""
        )
        lines.append(f"{name}: {backend['target']} {backend.get('url') or ''}{flag}")
    lines += ["", "steps:"]
    for number, stage in enumerate(data["stages"], start=1):
        duration = f"{stage['duration_s']:.1f} s" if stage.get("duration_s") is not None else ""
        lines.append(
            f"  {number}. {SYMBOLS.get(stage['status'], '?')} {STAGE_TITLES[stage['name']]:<16}"
            f" {stage['status']:<12} {duration}"
        )
        for item in stage.get("items", []):
            lines.append(f"       {SYMBOLS.get(item['status'], '?')} {item['key']:<22} {item['status']}")
    if data["scenes"]:
        lines += ["", "scenes:"]
        for scene in data["scenes"]:
            tele = scene.get("telemetry") or {}
            timing = ", ".join(
                f"{label} {tele[key]:.1f} s"
                for key, label in (
                    ("queue_wait_s", "queue"),
                    ("generation_s", "gen"),
                    ("retrieval_s", "fetch"),
                )
                if tele.get(key) is not None
            )
            lines.append(
                f"  {SYMBOLS.get(scene['status'], '?')} {scene['id']} {scene['status']:<11}"
                f" frames {scene['frame_count']:<3} attempts {len(scene['attempts'])}  {timing}".rstrip()
            )
    wrong = failures(data)
    if wrong:
        lines += ["", "what went wrong:"]
        for item in wrong:
            lines.append(f"  {item['key']}: {visible(item.get('message') or '(no message)')}")
    if data.get("checks"):
        lines += ["", "your checks:"] + check_lines(data["checks"])
    if data["warnings"]:
        lines += ["", "warnings:"] + [f"  - {visible(w)}" for w in data["warnings"]]
    if data["artifacts"]:
        lines += ["", "artifacts:"] + [f"  {k}: {v}" for k, v in sorted(data["artifacts"].items())]
    return "\n".join(lines) + "\n"


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    """The user's own checks, one line each: mark, test, outcome, and a failure's message."""
    lines = []
    for check in checks:
        said = (
            f": {visible(check['message'])}" if check.get("message") and check["status"] != "passed" else ""
        )
        lines.append(
            f"  {SYMBOLS.get(check['status'], '?')} {visible(check['test'])} {check['status']}{said}"
        )
    return lines


def settle_workers_summary(
    directory: RunDirectory, data: dict[str, Any] | None, crashed: list[str], failed_tests: list[str]
) -> None:
    """xdist controller: the worker's summary, corrected where a worker died under it.

    A dead worker leaves the summary "running"; a replacement worker re-runs what the later
    stages need and may well pass, but pytest counts the crash as a failure, and so must we.
    """
    if data is None:
        return
    reasons = []
    if crashed:
        reasons.append(f"a pytest-xdist worker crashed while running {', '.join(crashed)}")
    if data.get("status") == "running":
        reasons.append("the pytest-xdist worker running the pipeline ended before the run finished")
    elsewhere = [test for test in failed_tests if test not in crashed]
    if data.get("status") == "passed" and elsewhere:
        reasons.append(tests_failed_reason(elsewhere))
    if reasons:
        data["status"] = "failed"
        data["status_reason"] = "; ".join(reasons)
        write_summary_files(directory, data)
