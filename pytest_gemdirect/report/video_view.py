"""A scene's video figures and its drift against a baseline, read from the summary into typed values.

The frames stage records them (``scenes[].video`` and ``scenes[].drift``); like the rest of the
view, every field is optional and any may have the wrong type (an older or hand-edited summary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_gemdirect.report.coerce import as_dict, as_int, as_list, as_num, as_path, as_text


@dataclass(frozen=True)
class VideoView:
    frame_count: int | None
    width: int | None
    height: int | None
    fps: float | None
    duration_s: float | None
    codec: str
    container: str
    motion: float | None
    motion_series: tuple[float, ...]
    black_frames: tuple[int, ...]
    flat_frames: tuple[int, ...]
    clip: str | None
    """The gallery clip, run-relative."""
    source_note: str
    problems: tuple[str, ...]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else ""


@dataclass(frozen=True)
class DriftView:
    comparable: bool
    reason: str
    min_psnr: float | None
    mean_psnr: float | None
    identical: bool
    flagged: bool
    message: str
    tolerance: float | None


def read_video(raw: Any) -> VideoView | None:
    video = as_dict(raw)
    if not video:
        return None
    series = tuple(v for item in as_list(video.get("motion_series")) if (v := as_num(item)) is not None)
    return VideoView(
        frame_count=as_int(video.get("frame_count")),
        width=as_int(video.get("width")),
        height=as_int(video.get("height")),
        fps=as_num(video.get("fps")),
        duration_s=as_num(video.get("duration_s")),
        codec=as_text(video.get("codec")),
        container=as_text(video.get("container")),
        motion=as_num(video.get("motion")),
        motion_series=series,
        black_frames=tuple(
            i for item in as_list(video.get("black_frames")) if (i := as_int(item)) is not None
        ),
        flat_frames=tuple(i for item in as_list(video.get("flat_frames")) if (i := as_int(item)) is not None),
        clip=as_path(video.get("clip")),
        source_note=as_text(as_dict(video.get("source")).get("note")),
        problems=tuple(as_text(p) for p in as_list(video.get("problems")) if p),
    )


def read_drift(raw: Any) -> DriftView | None:
    drift = as_dict(raw)
    if not drift:
        return None
    return DriftView(
        comparable=drift.get("comparable") is True,
        reason=as_text(drift.get("reason")),
        min_psnr=as_num(drift.get("min_psnr")),
        mean_psnr=as_num(drift.get("mean_psnr")),
        identical=drift.get("identical") is True,
        flagged=drift.get("flagged") is True,
        message=as_text(drift.get("message")),
        tolerance=as_num(drift.get("tolerance")),
    )
