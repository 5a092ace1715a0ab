"""A trace read back: its records, its blobs, what it says about the run that made it.

A trace folder travels (an artifact from a GPU box to CPU runners, Windows to Linux): it holds
no absolute path, and its blobs are named by their sha256 only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.replay import BLOBS, EXCHANGES, FORMAT, TRACE_DIR

SHAPING_SETTINGS = (
    "workflow",
    "keyframe_workflow",
    "scenes",
    "keyframe_size",
    "story_mode",
    "llm_model",
    "llm_seed",
    "llm_temperature",
    "max_scene_retries",
)
"""Settings that change what the harness asks the servers: a replay names the ones that differ."""


class TraceError(ValueError):
    """A folder that holds no usable trace; the message says what is missing."""


def find_trace(path: Path) -> Path:
    """The trace folder of ``path``: a run directory (its ``trace/``), a trace folder itself, or a
    folder of run directories (``logs``, a CI artifact): the newest recorded run in it."""
    path = Path(path).expanduser()
    for folder in (path / TRACE_DIR, path):
        if (folder / EXCHANGES).is_file():
            return folder
    runs = sorted(path.iterdir(), reverse=True) if path.is_dir() else []
    for run in runs:  # run ids are timestamps: the newest first
        if (run / TRACE_DIR / EXCHANGES).is_file():
            return run / TRACE_DIR
    raise TraceError(
        f"{path} holds no trace ({TRACE_DIR}/{EXCHANGES}); name a run directory recorded with"
        " --record true (the default), its trace folder or a folder of such run directories"
    )


@dataclass(frozen=True)
class Trace:
    """One trace: its header and its records in the order they were written."""

    folder: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]

    def blob(self, digest: str) -> bytes:
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise TraceError(f"blob name {digest!r} is not a sha256")
        try:
            return (self.folder / BLOBS / digest).read_bytes()
        except OSError as exc:
            raise TraceError(f"the trace's blob {digest} cannot be read: {exc}") from None

    def body(self, record: Mapping[str, Any]) -> bytes:
        """A recorded answer's body as bytes (inline text or its blob)."""
        body = record.get("body") or {}
        if "text" in body:
            return str(body["text"]).encode("utf-8")
        return self.blob(str(body.get("blob", ""))) if body.get("blob") else b""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]


def load_trace(path: Path) -> Trace:
    folder = find_trace(path)
    records: list[dict[str, Any]] = []
    with (folder / EXCHANGES).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if handle.read(1) == "":  # the last line of a run cut short may be half-written
                    break
                raise TraceError(f"{folder / EXCHANGES}: line {number} is not JSON") from None
            if isinstance(record, dict):
                records.append(record)
    header = records[0] if records and records[0].get("kind") == "header" else None
    if header is None:
        raise TraceError(f"{folder / EXCHANGES} does not start with a header record")
    if header.get("format") != FORMAT:
        raise TraceError(
            f"{folder} is a trace of format {header.get('format')!r}; this harness reads {FORMAT}"
        )
    return Trace(folder, header, records[1:])


def origin(trace: Trace) -> dict[str, Any]:
    """What a replay's label says: the recorded run id, its date, the server and the GPU."""
    server, gpu = "ComfyUI", None
    for record in trace.of_kind("http"):
        if record.get("path") == "/system_stats" and record.get("status") == 200:
            try:
                stats = json.loads(trace.body(record))
            except (ValueError, TraceError):
                continue
            version = (stats.get("system") or {}).get("comfyui_version")
            server = f"ComfyUI {version}" if version else server
            devices = stats.get("devices") or []
            gpu = devices[0].get("name") if devices and isinstance(devices[0], dict) else None
            break
    simulated = [r.get("name") for r in trace.of_kind("backend") if r.get("simulated")]
    if "comfyui" in simulated:
        server += " (embedded simulator)"
    header = trace.header
    found = {
        "run_id": str(header.get("run_id") or "?"),
        "date": str(header.get("recorded_at") or "?"),
        "server": server,
        "gpu": gpu or "no GPU listed",
        "harness_version": header.get("harness_version"),
        "simulated": bool(simulated),
    }
    found["label"] = f"REPLAYED from run {found['run_id']} ({found['date']}, {server}, GPU {found['gpu']})"
    return found


def setting_differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``workflow (recorded smoke.json, now smoke_video.json)`` for each shaping setting that differs."""
    lines = []
    for name in SHAPING_SETTINGS:
        if name in recorded and name in now and recorded[name] != now[name]:
            lines.append(f"{name} (recorded {recorded[name]!r}, now {now[name]!r})")
    return lines


__all__ = [
    "SHAPING_SETTINGS",
    "Trace",
    "TraceError",
    "find_trace",
    "load_trace",
    "origin",
    "setting_differences",
]
