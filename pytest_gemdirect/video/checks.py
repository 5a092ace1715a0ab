"""Per-scene checks on a clip's frames: count, size, black frames, flat frames, frozen motion.

The checks read the greyscale thumbnails ``decode.ClipReader`` yields, one frame at a time
(``FrameChecker.add``), so a long clip costs a few floats a frame. Every threshold is a
parameter; every problem says, in plain words, the label, the figure, the threshold and the
setting that holds it, so a red row explains itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .decode import Frame
from .labels import visible

ProblemKind = Literal["frame_count", "size", "black", "flat", "frozen"]

SETTINGS = {
    "black_level": "--black-level",
    "black_share": "--black-share",
    "flat_std": "--flat-std",
    "min_motion": "--min-motion",
}
"""The setting (flag) each threshold is named after in messages."""


@dataclass(frozen=True)
class Thresholds:
    """What counts as black, flat and frozen (0..255 grey levels). None switches a check off."""

    black_level: int = 8
    """A pixel at or below this level is black."""
    black_share: float | None = 0.99
    """A frame is black when at least this share of its pixels is black."""
    flat_std: float | None = 2.0
    """A frame is flat when the spread (standard deviation) of its pixels is below this."""
    min_motion: float | None = 0.5
    """A clip is frozen when its motion (mean absolute difference of consecutive thumbnails) is below this."""


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class FrameChecks:
    """The outcome of the checks on one scene's clip."""

    label: str
    frame_count: int
    size: tuple[int, int] | None
    """Width and height of the first frame (None when the clip had no frame)."""
    black_frames: tuple[int, ...]
    flat_frames: tuple[int, ...]
    """Flat frames that are not black (a black frame is reported as black only)."""
    motion: float | None
    """Mean of ``motion_series`` (0..255); None for fewer than two frames."""
    motion_series: tuple[float, ...]
    """Mean absolute difference of each consecutive pair of thumbnails (0..255)."""
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}


class FrameChecker:
    """Feed frames one at a time (``add``), then ``finish`` for the ``FrameChecks``."""

    def __init__(
        self,
        label: str,
        *,
        expected_frames: int | None = None,
        expected_size: tuple[int, int] | None = None,
        expected_from: str | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        self.label = visible(label)
        self.expected_frames = expected_frames
        self.expected_from = expected_from  # where the expected count comes from, for the message
        self.expected_size = expected_size
        self.thresholds = thresholds
        self._count = 0
        self._size: tuple[int, int] | None = None
        self._odd_sizes: list[tuple[int, tuple[int, int]]] = []
        self._black: list[tuple[int, float]] = []
        self._flat: list[tuple[int, float]] = []
        self._motion: list[float] = []
        self._previous: np.ndarray | None = None

    def add(self, frame: Frame) -> None:
        t = self.thresholds
        size = (frame.width, frame.height)
        if self._size is None:
            self._size = size
        elif size != self._size:
            self._odd_sizes.append((frame.index, size))
        grey = frame.grey
        black = False
        if t.black_share is not None:
            share = float(np.count_nonzero(grey <= t.black_level)) / grey.size
            if share >= t.black_share:
                black = True
                self._black.append((frame.index, share))
        if t.flat_std is not None and not black:
            spread = float(grey.std())
            if spread < t.flat_std:
                self._flat.append((frame.index, spread))
        if self._previous is not None and self._previous.shape == grey.shape:
            diff = np.abs(grey.astype(np.int16) - self._previous.astype(np.int16))
            self._motion.append(float(diff.mean()))
        elif self._previous is not None:
            self._motion.append(255.0)  # a change of size is a change of picture
        self._previous = grey
        self._count += 1

    def finish(self) -> FrameChecks:
        motion = sum(self._motion) / len(self._motion) if self._motion else None
        problems = [
            *self._count_problems(),
            *self._size_problems(),
            *self._black_problems(),
            *self._flat_problems(),
            *self._frozen_problems(motion),
        ]
        return FrameChecks(
            label=self.label,
            frame_count=self._count,
            size=self._size,
            black_frames=tuple(i for i, _ in self._black),
            flat_frames=tuple(i for i, _ in self._flat),
            motion=motion,
            motion_series=tuple(self._motion),
            problems=tuple(problems),
        )

    def _problem(self, kind: ProblemKind, text: str) -> Problem:
        return Problem(kind, f"{self.label}: {kind}: {text}")

    def _count_problems(self) -> list[Problem]:
        want = self.expected_frames
        if want is None or self._count == want:
            return []
        text = f"{self._count} {_frames(self._count)}, expected {want}"
        if self.expected_from:
            text += f" (from {self.expected_from})"
        if self._count == 1 and want > 1:
            text += (
                " (an animated PNG, WebP or GIF whose frames are all the same is saved as one"
                " still image: the clip may be frozen)"
            )
        return [self._problem("frame_count", text)]

    def _size_problems(self) -> list[Problem]:
        problems = []
        want = self.expected_size
        if want is not None and self._size is not None and self._size != tuple(want):
            problems.append(self._problem("size", f"frames are {_wxh(self._size)}, expected {_wxh(want)}"))
        if self._odd_sizes:
            index, size = self._odd_sizes[0]
            more = f" ({len(self._odd_sizes)} frames differ)" if len(self._odd_sizes) > 1 else ""
            problems.append(
                self._problem("size", f"frame {index} is {_wxh(size)}, frame 0 is {_wxh(self._size)}{more}")
            )
        return problems

    def _black_problems(self) -> list[Problem]:
        if not self._black:
            return []
        t = self.thresholds
        least = min(share for _, share in self._black)
        text = (
            f"{len(self._black)} of {self._count} {_frames(self._count)} black ({_indices(self._black)}):"
            f" at least {least:.1%} of their pixels are at or below level {t.black_level}"
            f" ({SETTINGS['black_level']}); the threshold is {t.black_share:.0%} ({SETTINGS['black_share']})"
        )
        return [self._problem("black", text)]

    def _flat_problems(self) -> list[Problem]:
        if not self._flat:
            return []
        most = max(spread for _, spread in self._flat)
        text = (
            f"{len(self._flat)} of {self._count} {_frames(self._count)} flat ({_indices(self._flat)}):"
            f" pixel spread (standard deviation) {most:.2f} is below the threshold"
            f" {self.thresholds.flat_std:.2f} ({SETTINGS['flat_std']})"
        )
        return [self._problem("flat", text)]

    def _frozen_problems(self, motion: float | None) -> list[Problem]:
        floor = self.thresholds.min_motion
        if floor is None or motion is None or motion >= floor:
            return []
        text = f"motion {motion:.2f} is below the threshold {floor:.2f} ({SETTINGS['min_motion']})"
        return [self._problem("frozen", text)]


def check_frames(
    frames: Iterable[Frame],
    label: str,
    *,
    expected_frames: int | None = None,
    expected_size: tuple[int, int] | None = None,
    expected_from: str | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> FrameChecks:
    """Run the checks over ``frames`` (any iterable, read once) and return the outcome."""
    checker = FrameChecker(
        label,
        expected_frames=expected_frames,
        expected_size=expected_size,
        expected_from=expected_from,
        thresholds=thresholds,
    )
    for frame in frames:
        checker.add(frame)
    return checker.finish()


def _frames(count: int) -> str:
    return "frame" if count == 1 else "frames"


def _wxh(size: Sequence[int] | None) -> str:
    return f"{size[0]}x{size[1]}" if size else "unknown"


def _indices(found: list[tuple[int, float]], limit: int = 10) -> str:
    """``frames 0, 1, 2`` or ``frames 0, 1, … (+40 more)``: the first indices, the rest counted."""
    shown = ", ".join(str(i) for i, _ in found[:limit])
    extra = f", … (+{len(found) - limit} more)" if len(found) > limit else ""
    return f"{_frames(len(found))} {shown}{extra}"
