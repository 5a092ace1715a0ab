"""Comparing a run against an earlier one (``--baseline``): what got slower, faster, hungrier.

The baseline is read through the same view as the run itself, so a partial or older summary
compares as far as it goes. A change is flagged beyond ``CHANGE_THRESHOLD`` and above a noise floor
(a 0.01 s stage that took 0.02 s is not news).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.catalogue import SCENE_STAGES, STAGE_TITLES
from pytest_gemdirect.report.format import secs, size
from pytest_gemdirect.report.view import RunView, build_view

CHANGE_THRESHOLD = 0.20  # a change against the baseline beyond this fraction is flagged
# Below these absolute differences a relative change is noise (a 0.01 s stage that took 0.02 s).
NOISE_FLOOR = {"s": 0.05, "s/step": 0.002, "bytes": 16 * 1024**2}
# (column label, unit) of the baseline table; a stage row has only the duration.
MEASURES = (
    ("duration", "s"),
    ("queue wait", "s"),
    ("generation", "s"),
    ("retrieval", "s"),
    ("seconds per step", "s/step"),
    ("peak VRAM used", "bytes"),
)


class BaselineError(ValueError):
    """A ``--baseline`` run directory whose run-summary.json is missing or not a summary."""


def load_baseline(run_dir: Path) -> dict[str, Any]:
    """The run summary of an earlier run directory (or of a run-summary.json given directly).

    Its ``run_dir`` is set to where it lies now (a run directory copied from another machine
    still gives its GPU samples to the comparison).
    """
    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".json" else run_dir / "run-summary.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"baseline: {path} does not exist (is {run_dir} a gemdirect run directory?)"
        ) from None
    except OSError as exc:
        raise BaselineError(f"baseline: {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"baseline: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", []), list):
        raise BaselineError(
            f"baseline: {path} is not a gemdirect run summary (expected a JSON object with stages)"
        )
    data["run_dir"] = str(path.parent.resolve())
    return data


@dataclass(frozen=True)
class Change:
    label: str
    unit: str
    before: float | None
    now: float | None

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.now is None or self.before == 0:
            return None
        return (self.now - self.before) / self.before

    @property
    def flagged(self) -> bool:
        ratio = self.ratio
        if ratio is None or self.before is None or self.now is None:
            return False
        return abs(ratio) > CHANGE_THRESHOLD and abs(self.now - self.before) >= NOISE_FLOOR.get(self.unit, 0)

    @property
    def worse(self) -> bool:
        """Slower or more memory (only meaningful when flagged)."""
        return self.now is not None and self.before is not None and self.now > self.before

    @property
    def values(self) -> str:
        return f"{_in_unit(self.before, self.unit)} → {_in_unit(self.now, self.unit)}"

    @property
    def percent(self) -> str:
        ratio = self.ratio
        pct = f"{ratio * 100:+.0f} %" if ratio is not None else ""
        return f"⚠ {pct}" if self.flagged else pct


@dataclass(frozen=True)
class Comparison:
    """The baseline run and the changes, a row per stage (its title) and per scene (its id)."""

    run_id: str
    verdict: str
    started_at: str
    run_dir: str
    rows: tuple[tuple[str, tuple[Change, ...]], ...]

    @property
    def flagged(self) -> int:
        return sum(1 for _, changes in self.rows for c in changes if c.flagged)


def _in_unit(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        return size(value)
    if unit == "s/step":
        return f"{value:.3f} s"
    return secs(value)


def metrics(view: RunView) -> dict[str, dict[str, float | None]]:
    """Per stage (its title) and per scene (its id): the measures compared against a baseline."""
    found: dict[str, dict[str, float | None]] = {}
    for node in view.nodes:
        found[STAGE_TITLES.get(node.stage, node.stage)] = {"duration": node.duration_s}
    scene_nodes = [item for node in view.nodes if node.stage in SCENE_STAGES for item in node.items]
    for scene in view.scenes:
        durations = [i.duration_s for i in scene_nodes if i.scene == scene.id and i.duration_s is not None]
        tele = scene.telemetry
        found[scene.id] = {
            "duration": sum(durations) if durations else None,
            "queue wait": tele.queue_wait_s,
            "generation": tele.generation_s,
            "retrieval": tele.retrieval_s,
            "seconds per step": tele.seconds_per_step,
            "peak VRAM used": view.peak_vram_used(scene),
        }
    return found


def compare(view: RunView, baseline: Mapping[str, Any]) -> Comparison:
    """The run against ``baseline`` (a summary from ``load_baseline``), read through the same view."""
    root = Path(str(baseline.get("run_dir") or ""))
    before_view = build_view(baseline, root if baseline.get("run_dir") and root.is_dir() else None)
    now, before = metrics(view), metrics(before_view)
    rows = []
    for group in list(now) + [g for g in before if g not in now]:
        changes = tuple(
            Change(label, unit, before.get(group, {}).get(label), now.get(group, {}).get(label))
            for label, unit in MEASURES
        )
        if any(c.before is not None or c.now is not None for c in changes):
            rows.append((group, changes))
    return Comparison(
        before_view.run_id, before_view.verdict, before_view.started_at, before_view.run_dir, tuple(rows)
    )
