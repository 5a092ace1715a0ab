"""The frames stage's proof that a video came back: decoded, counted, checked, watched, compared.

After the download, the scene's frames are read once (``video.scan_scene``): an image sequence in
the order /history lists it, or a video container (MP4, WebM, GIF, animated WebP or PNG) decoded as
a clip. The frame count and size are checked against what the scene's workflow asks for, black,
flat and frozen frames are looked for, the motion is measured and a small gallery clip
(``scene-NNN/clip.mp4``) is written in the same pass. With ``--baseline`` the frames are compared
with the baseline run's frames of the same scene, when both runs used the same workflow and seed.

The video package (PyAV, numpy) is imported here, inside the functions, never when the plugin loads.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gemdirect.comfyui.outputs import VIDEO_SUFFIXES, DownloadedFile
from pytest_gemdirect.stages.context import StageContext

if TYPE_CHECKING:
    from pytest_gemdirect.video import Drift, Frame, SceneVideo, Thresholds

CLIP_NAME = "clip.mp4"
SERIES_CAP = 1000
"""Entries of a per-frame series the summary keeps (the rest is summed up in the figures)."""
NAMED_FILES = 5
"""Files named in a problem about some frames of an image sequence."""
_STILL = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class VideoSource:
    """The output the checks read: one save node's files, as one clip."""

    node_id: str
    class_type: str | None
    files: tuple[DownloadedFile, ...]
    note: str
    """What was chosen, and why when there was a choice."""

    @property
    def paths(self) -> list[Path]:
        return [Path(f.path) for f in self.files]

    @property
    def is_sequence(self) -> bool:
        return len(self.files) > 1

    def label(self, scene_id: str) -> str:
        """The scene and the file(s), as every problem names them."""
        names = [Path(f.path).name for f in self.files]
        if len(names) == 1:
            return f"{scene_id} {names[0]}"
        return f"{scene_id} {names[0]} … {names[-1]} ({len(names)} files)"


@dataclass(frozen=True)
class DriftOutcome:
    """A scene against the baseline run's same scene."""

    comparable: bool
    reason: str
    drift: Drift | None = None

    @property
    def flagged(self) -> bool:
        return self.drift is not None and self.drift.flagged

    def to_summary(self) -> dict[str, Any]:
        d = self.drift
        return {
            "comparable": self.comparable,
            "reason": self.reason or None,
            "tolerance": d.tolerance if d else None,
            "min_psnr": _finite(d.min_psnr) if d else None,
            "mean_psnr": _finite(d.mean_psnr) if d else None,
            "identical": bool(d and d.psnr and all(math.isinf(p) for p in d.psnr)),
            "flagged": self.flagged,
            "message": d.message if d else None,
            "per_frame": [_finite(p) for p in d.psnr[:SERIES_CAP]] if d else [],
        }


@dataclass(frozen=True)
class VideoCheck:
    """What the frames stage learned from a scene's frames."""

    source: VideoSource
    scan: SceneVideo
    files: tuple[DownloadedFile, ...]
    """Every downloaded file, video files with their decoded frame count and size."""
    drift: DriftOutcome | None

    @property
    def problems(self) -> list[str]:
        """Each problem, a failure of the scene's frames stage."""
        return [self._with_files(p.kind, p.message) for p in self.scan.checks.problems]

    def _with_files(self, kind: str, message: str) -> str:
        """A problem about some frames of an image sequence also names their files."""
        checks = self.scan.checks
        indices = {"black": checks.black_frames, "flat": checks.flat_frames}.get(kind)
        if not indices or not self.source.is_sequence:
            return message
        names = [
            Path(self.source.files[i].path).name for i in indices[:NAMED_FILES] if i < len(self.source.files)
        ]
        more = f", … (+{len(indices) - len(names)} more)" if len(indices) > len(names) else ""
        return f"{message} [files {', '.join(names)}{more}]"

    def to_summary(self, relative: Any) -> dict[str, Any]:
        """The summary's ``video`` record; ``relative`` makes a path run-relative."""
        info, checks, clip = self.scan.info, self.scan.checks, self.scan.clip
        return {
            "frame_count": info.frame_count,
            "width": info.width,
            "height": info.height,
            "fps": _finite(info.fps),
            "duration_s": _finite(info.duration),
            "codec": info.codec,
            "container": info.container,
            "motion": _round(checks.motion),
            "motion_series": [round(m, 3) for m in checks.motion_series[:SERIES_CAP]],
            "black_frames": list(checks.black_frames),
            "flat_frames": list(checks.flat_frames),
            "clip": relative(clip.path) if clip else None,
            "clip_bytes": clip.bytes if clip else None,
            "source": {
                "node_id": self.source.node_id,
                "class_type": self.source.class_type,
                "files": [relative(p) for p in self.source.paths],
                "note": self.source.note or None,
            },
            "problems": self.problems,
        }


def _finite(value: float | None) -> float | None:
    return round(value, 3) if value is not None and math.isfinite(value) else None


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def thresholds(ctx: StageContext) -> Thresholds:
    from pytest_gemdirect.video import Thresholds

    s = ctx.settings
    return Thresholds(
        black_level=int(s.black_level),
        black_share=float(s.black_share),
        flat_std=float(s.flat_std),
        min_motion=float(s.min_motion),
    )


def scene_workflow(ctx: StageContext, scene_id: str) -> dict[str, Any]:
    """The workflow the scene ran (written by the generation stage), or {} when it cannot be read."""
    try:
        data = json.loads((ctx.run.scene_dir(scene_id) / "workflow.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose_source(files: Sequence[DownloadedFile], workflow: dict[str, Any]) -> VideoSource | None:
    """The main output: the save node whose files are the scene's frames.

    With several save nodes that wrote files, the one the workflow expects the most frames from
    (then the one with the most files, then the lowest id) is read; the note says which and why.
    """
    from pytest_gemdirect.video.expected import SAVE_CLASSES, expected_outputs

    groups: OrderedDict[str, list[DownloadedFile]] = OrderedDict()
    for file in files:
        groups.setdefault(file.node_id, []).append(file)
    if not groups:
        return None
    saves = [nid for nid in groups if _class_of(workflow, nid) in SAVE_CLASSES]
    candidates = saves or list(groups)
    expected = expected_outputs(workflow)

    def rank(nid: str) -> tuple[int, int, int]:
        frames = expected[nid].frames if nid in expected else None
        return (-(frames or 0), -len(groups[nid]), candidates.index(nid))

    chosen = min(candidates, key=rank)
    class_type = _class_of(workflow, chosen)
    note = ""
    if len(groups) > 1:
        others = ", ".join(
            f"node {nid} ({_class_of(workflow, nid) or '?'})" for nid in groups if nid != chosen
        )
        note = (
            f"{len(groups)} nodes wrote files; the checks read node {chosen} ({class_type or '?'}),"
            f" the save node the workflow expects the most frames from; not checked: {others}"
        )
    return VideoSource(chosen, class_type, tuple(groups[chosen]), note)


def _class_of(workflow: dict[str, Any], node_id: str) -> str | None:
    node = workflow.get(node_id)
    kind = node.get("class_type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) else None


def check_scene(
    ctx: StageContext,
    scene_id: str,
    files: Sequence[DownloadedFile],
    on_frame: Callable[[Frame], None] | None = None,
) -> VideoCheck | None:
    """Decode and check the scene's main output, write its gallery clip, compare with the baseline.

    None when no file was downloaded. A file that does not decode raises ``video.DecodeError``.
    ``on_frame`` sees each decoded frame (the frames stage makes the report's previews from them).
    """
    from pytest_gemdirect.video import expected_output, scan_scene

    workflow = scene_workflow(ctx, scene_id)
    source = choose_source(files, workflow)
    if source is None:
        return None
    paths = source.paths
    scan = scan_scene(
        paths[0] if len(paths) == 1 else paths,
        source.label(scene_id),
        expected=expected_output(workflow, source.node_id) if workflow else None,
        thresholds=thresholds(ctx),
        clip_path=ctx.run.scene_dir(scene_id) / CLIP_NAME,
        on_frame=on_frame,
    )
    counted = _count_video_files(files, source, scan)
    drift = baseline_drift(ctx, scene_id, source) if ctx.settings.baseline is not None else None
    return VideoCheck(source, scan, counted, drift)


def _count_video_files(
    files: Sequence[DownloadedFile], source: VideoSource, scan: SceneVideo
) -> tuple[DownloadedFile, ...]:
    """The files with each video container's decoded frame count and size (once "one opaque file"),
    and the source's images marked decoded (the download read only their headers)."""
    from pytest_gemdirect.video import DecodeError, read_info

    scanned = {f.path for f in source.files}
    counted = []
    for file in files:
        if Path(file.path).suffix.lower() not in VIDEO_SUFFIXES:
            counted.append(replace(file, decoded=True) if file.path in scanned else file)
            continue
        if not source.is_sequence and file.path == source.files[0].path:
            info = scan.info
        else:
            try:
                info = read_info(file.path)
            except DecodeError:
                counted.append(file)
                continue
        counted.append(
            replace(file, frames=info.frame_count, width=info.width, height=info.height, decoded=True)
        )
    return tuple(counted)


# --- drift against a baseline run ----------------------------------------------------------------


def baseline_drift(ctx: StageContext, scene_id: str, source: VideoSource) -> DriftOutcome:
    """The scene against the baseline's (--baseline); says why not when the runs cannot be compared."""
    from pytest_gemdirect.report.baseline import BaselineError, load_baseline
    from pytest_gemdirect.video import DecodeError, comparability, scene_drift

    assert ctx.settings.baseline is not None, "asked only with --baseline"
    try:
        baseline = load_baseline(ctx.settings.baseline)
    except BaselineError as exc:
        return DriftOutcome(False, f"not comparable: {exc}")
    verdict = comparability(
        workflow_hash=_dict(ctx.summary.data.get("comfyui")).get("workflow_hash"),
        baseline_workflow_hash=_dict(baseline.get("comfyui")).get("workflow_hash"),
        seed=ctx.settings.llm_seed,
        baseline_seed=_dict(baseline.get("settings")).get("llm_seed"),
    )
    if not verdict.comparable:
        return DriftOutcome(False, verdict.reason)
    reference = baseline_frames(Path(baseline["run_dir"]), baseline, scene_id)
    if not reference:
        return DriftOutcome(False, f"not comparable: the baseline run has no frames of {scene_id}")
    try:
        drift = scene_drift(
            source.paths[0] if len(source.paths) == 1 else source.paths,
            reference[0] if len(reference) == 1 else reference,
            source.label(scene_id),
            tolerance=float(ctx.settings.drift_tolerance),
        )
    except DecodeError as exc:
        return DriftOutcome(
            False, f"not comparable: the baseline's frames of {scene_id} do not decode: {exc}"
        )
    return DriftOutcome(True, "", drift)


def baseline_frames(root: Path, baseline: dict[str, Any], scene_id: str) -> list[Path]:
    """The files the baseline's checks read for the scene (its recorded source), else its frames folder."""
    from pytest_gemdirect.video import image_sequence

    scenes = baseline.get("scenes")
    found = [s for s in scenes if _dict(s).get("id") == scene_id] if isinstance(scenes, list) else []
    if not found:
        return []
    scene = _dict(found[0])
    recorded = _dict(_dict(scene.get("video")).get("source")).get("files")
    if isinstance(recorded, list) and recorded:
        paths = [_inside(root, rel) for rel in recorded]
        files = [p for p in paths if p is not None and p.is_file()]
        return files if len(files) == len(paths) else []
    folder = _inside(root, scene.get("frames_dir"))
    if folder is None or not folder.is_dir():
        return []
    stills = image_sequence(folder, _STILL)
    return stills or image_sequence(folder, VIDEO_SUFFIXES)[:1]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _inside(root: Path, rel: Any) -> Path | None:
    """``root/rel`` when it stays inside ``root`` (a baseline's summary never makes us read elsewhere)."""
    if not isinstance(rel, str) or not rel:
        return None
    base = root.resolve()
    path = (base / rel).resolve()
    return path if path.is_relative_to(base) else None
