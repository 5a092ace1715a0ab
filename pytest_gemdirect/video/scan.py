"""One pass over a scene's output: decode, check, and write the gallery clip, frame by frame.

This is what the frames stage calls: each frame is decoded once, shrunk, handed to the checks
and to the clip encoder, and dropped. A file that does not decode raises ``DecodeError`` (naming
the file) and leaves no half-written clip behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .checks import DEFAULT_THRESHOLDS, FrameChecker, FrameChecks, Thresholds
from .clip import BUDGET, DEFAULT_FPS, MAX_WIDTH, ClipWriter, WrittenClip
from .decode import ClipInfo, ClipReader, Frame, Source
from .expected import Expected


@dataclass(frozen=True)
class SceneVideo:
    info: ClipInfo
    checks: FrameChecks
    clip: WrittenClip | None
    """The gallery clip, when one was asked for."""


def scan_scene(
    source: Source,
    label: str,
    *,
    expected: Expected | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    clip_path: str | os.PathLike[str] | None = None,
    clip_fps: float | None = None,
    on_frame: Callable[[Frame], None] | None = None,
) -> SceneVideo:
    """Check a scene's output against ``expected`` (None: count and size not checked) in one pass.

    The expected rate (``expected.fps``) also tells how many frames a merged frame of an
    animated image stands for, and is the clip's rate unless ``clip_fps`` is given.
    ``on_frame`` sees each frame as it passes (with its RGB copy when a clip is written): the
    report's previews are made from those, not from the files decoded again.
    """
    want = expected or Expected()
    reader = ClipReader(source, rgb_width=MAX_WIDTH if clip_path is not None else None, fps=want.fps)
    checker = FrameChecker(
        label,
        expected_frames=want.frames,
        expected_size=want.size,
        expected_from=want.frames_from,
        thresholds=thresholds,
    )
    if clip_path is None:
        for frame in reader:
            checker.add(frame)
            if on_frame is not None:
                on_frame(frame)
        return SceneVideo(reader.info, checker.finish(), None)
    fps = clip_fps or want.fps or DEFAULT_FPS
    with ClipWriter(clip_path, fps=fps, max_width=MAX_WIDTH, budget=BUDGET) as writer:
        for frame in reader:
            checker.add(frame)
            writer.add(frame)
            if on_frame is not None:
                on_frame(frame)
        clip = writer.close()
    return SceneVideo(reader.info, checker.finish(), clip)
