"""Drift: how far a scene's frames moved from a baseline run's frames of the same scene.

Same workflow, same seed, same server should give (nearly) the same frames; a drop in PSNR
means something changed underneath (a model file, a node version, the GPU driver). The frames
are compared as small copies, pair by pair, as they stream out of two readers. Runs whose
workflow or seed differ are not comparable, and ``comparability`` says so before any pixel is
read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import numpy.typing as npt

from .decode import ClipReader, Frame, Source
from .labels import visible

DEFAULT_TOLERANCE = 30.0
"""dB: a pair of frames below this PSNR has drifted (same-seed reruns on one GPU stay far above)."""
DRIFT_WIDTH = 128
"""Width of the copies compared: enough to see a changed picture, cheap to read twice."""
SETTING = "--drift-tolerance"

Picture = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Comparability:
    comparable: bool
    reason: str
    """Why not, in plain words; empty when comparable."""


@dataclass(frozen=True)
class Drift:
    """The comparison of one scene with its baseline."""

    label: str
    psnr: tuple[float, ...]
    """PSNR in dB of each frame pair (``inf`` for identical frames)."""
    ssim: tuple[float, ...] | None
    """Mean SSIM of each pair (1.0 identical), when asked for."""
    min_psnr: float
    """The lowest pair (``inf`` when all identical, ``nan`` with no pair)."""
    mean_psnr: float
    """PSNR of the mean squared error over all pairs."""
    tolerance: float
    frames: int
    baseline_frames: int
    flagged: bool
    message: str


def comparability(
    *,
    workflow_hash: str | None,
    baseline_workflow_hash: str | None,
    seed: int | None,
    baseline_seed: int | None,
) -> Comparability:
    """Whether a run can be compared with a baseline at all: same workflow hash and seed."""
    reasons = []
    if workflow_hash is None or baseline_workflow_hash is None:
        reasons.append("a workflow hash is missing")
    elif workflow_hash != baseline_workflow_hash:
        reasons.append(f"the workflow hash {visible(workflow_hash, 80)} differs from the baseline's"
                       f" {visible(baseline_workflow_hash, 80)}")  # fmt: skip
    if seed != baseline_seed:
        reasons.append(f"the seed {seed} differs from the baseline's {baseline_seed}")
    if reasons:
        return Comparability(False, "not comparable: " + "; ".join(reasons))
    return Comparability(True, "")


def psnr(a: Picture, b: Picture) -> float:
    """Peak signal-to-noise ratio of two same-shaped 8-bit pictures, in dB (``inf`` when equal)."""
    mse = _mse(a, b)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: Picture, b: Picture, window: int = 7) -> float:
    """Mean structural similarity of two same-shaped pictures (greyscale, uniform ``window``)."""
    x, y = _luma(a), _luma(b)
    k = max(1, min(window, *x.shape))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box_mean(x, k), _box_mean(y, k)
    vx = _box_mean(x * x, k) - mx * mx
    vy = _box_mean(y * y, k) - my * my
    cxy = _box_mean(x * y, k) - mx * my
    score = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(score.mean())


class DriftMeter:
    """Feed frame pairs one at a time (``add``), then ``finish`` for the ``Drift``."""

    def __init__(self, label: str, *, tolerance: float = DEFAULT_TOLERANCE, with_ssim: bool = False) -> None:
        self.label = visible(label)
        self.tolerance = tolerance
        self.with_ssim = with_ssim
        self._psnr: list[float] = []
        self._ssim: list[float] = []
        self._squared_error = 0.0
        self._frames = 0
        self._baseline_frames = 0
        self._mismatch = ""

    def add(self, picture: Frame | Picture | None, baseline: Frame | Picture | None) -> None:
        """One pair; None on a side where that clip has already ended."""
        a, b = _picture(picture), _picture(baseline)
        self._frames += a is not None
        self._baseline_frames += b is not None
        if a is None or b is None or self._mismatch:
            return
        if a.shape != b.shape:
            self._mismatch = f"frame {len(self._psnr)} is {_shape(a)} here and {_shape(b)} in the baseline"
            return
        mse = _mse(a, b)
        self._squared_error += mse
        self._psnr.append(math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse))
        if self.with_ssim:
            self._ssim.append(ssim(a, b))

    def finish(self) -> Drift:
        pairs = len(self._psnr)
        low = min(self._psnr) if pairs else math.nan
        mean_mse = self._squared_error / pairs if pairs else math.nan
        mean = math.inf if mean_mse == 0 else (10.0 * math.log10(255.0**2 / mean_mse) if pairs else math.nan)
        flagged, message = self._verdict(low)
        return Drift(
            label=self.label,
            psnr=tuple(self._psnr),
            ssim=tuple(self._ssim) if self.with_ssim else None,
            min_psnr=low,
            mean_psnr=mean,
            tolerance=self.tolerance,
            frames=self._frames,
            baseline_frames=self._baseline_frames,
            flagged=flagged,
            message=f"{self.label}: drift: {message}",
        )

    def _verdict(self, low: float) -> tuple[bool, str]:
        if self._mismatch:
            return True, f"cannot compare: {self._mismatch}"
        if self._frames != self._baseline_frames:
            return True, f"{self._frames} frames here, {self._baseline_frames} in the baseline"
        if not self._psnr:
            return True, "no frames to compare"
        if low < self.tolerance:
            worst = self._psnr.index(low)
            return True, (
                f"lowest PSNR {low:.1f} dB (frame {worst}) is below the tolerance {self.tolerance:.1f} dB"
                f" ({SETTING})"
            )
        if math.isinf(low):
            return False, f"all {self._frames} frames are identical to the baseline's"
        return False, f"lowest PSNR {low:.1f} dB is within the tolerance {self.tolerance:.1f} dB ({SETTING})"


def measure_drift(
    frames: Iterable[Frame | Picture],
    baseline: Iterable[Frame | Picture],
    label: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    with_ssim: bool = False,
) -> Drift:
    """Compare two streams of frames pair by pair (each read once, in step)."""
    meter = DriftMeter(label, tolerance=tolerance, with_ssim=with_ssim)
    for picture, reference in zip_longest(frames, baseline):
        meter.add(picture, reference)
    return meter.finish()


def scene_drift(
    source: Source,
    baseline_source: Source,
    label: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    width: int = DRIFT_WIDTH,
    with_ssim: bool = False,
    fps: float | None = None,
) -> Drift:
    """Decode a scene's output and its baseline's side by side and compare them."""
    return measure_drift(
        ClipReader(source, rgb_width=width, fps=fps),
        ClipReader(baseline_source, rgb_width=width, fps=fps),
        label,
        tolerance=tolerance,
        with_ssim=with_ssim,
    )


def _picture(value: Frame | Picture | None) -> Picture | None:
    if isinstance(value, Frame):
        return value.rgb if value.rgb is not None else value.grey
    return value


def _mse(a: Picture, b: Picture) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def _shape(a: Picture) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def _luma(a: Picture) -> npt.NDArray[np.float64]:
    x = a.astype(np.float64)
    return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x


def _box_mean(x: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """Mean over every ``k x k`` window that fits, from an integral image."""
    total = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
    total[1:, 1:] = x.cumsum(0).cumsum(1)
    window = total[k:, k:] - total[:-k, k:] - total[k:, :-k] + total[:-k, :-k]
    return np.asarray(window / (k * k), dtype=np.float64)
