"""What a run records over time: GPU samples and generation progress, in seconds.

Two sources: each scene's scene.json (its progress and the nvidia-smi samples taken while it ran,
read again only when the file changed, since the report is rewritten after every stage) and the
summary's run-wide ``comfyui.gpu_samples``. Part of the view's boundary: raw JSON in, typed out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_gemdirect.report.coerce import as_dict, as_dicts, as_int, as_list, as_num, as_text
from pytest_gemdirect.report.format import secs
from pytest_gemdirect.report.links import inside


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


_RECORDS: dict[tuple[str, int, int], SceneRecord] = {}


def read_scene_record(run_root: Path | None, rel: str | None) -> SceneRecord:
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


def run_gpu_samples(samples: list[dict[str, Any]], started_at: str) -> tuple[GpuSample, ...]:
    """The run-wide GPU samples (``comfyui.gpu_samples``) in seconds on the run's clock."""
    started = _parse_time(started_at)
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
        found.append(
            GpuSample(
                when,
                used,
                as_num(sample.get("utilization_pct")),
                as_num(sample.get("memory_total_mib")) or None,
            )
        )
    return tuple(found)
