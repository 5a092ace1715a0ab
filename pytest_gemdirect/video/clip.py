"""A scene's frames as one small video for the report's gallery to play.

MP4 (H.264, yuv420p, even sides, ``faststart`` so a browser plays it before it has it all) or
WebM (VP9), scaled down to at most ``max_width`` pixels wide. Frames are encoded as they arrive
(``ClipWriter.add``); nothing but the encoder's own look-ahead is held. The clip must stay under a
byte budget: it is first encoded at a constant quality, and if that comes out too big it is
encoded again from the file just written at the bit rate the budget allows (at most two more
passes). It is written beside the target and renamed over it, so a reader never sees half a clip.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import av.container
import numpy as np
import numpy.typing as npt
from av.video.stream import VideoStream

from .decode import Frame, even_size

MAX_WIDTH = 512
BUDGET = 1_000_000
"""Bytes: 25 frames of 512x288 H.264 at constant quality are usually a tenth of this."""
DEFAULT_FPS = 8.0

# container format, encoder, options at constant quality, options at a set bit rate
_CODECS: dict[str, tuple[str, str, dict[str, str], dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"crf": "28", "preset": "veryfast"}, {"preset": "veryfast"}),
    ".webm": (
        "webm",
        "libvpx-vp9",
        {"crf": "36", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
        {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    ),
}
_MAX_PASSES = 3
_Output = av.container.OutputContainer


@dataclass(frozen=True)
class WrittenClip:
    path: Path
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    bytes: int
    budget: int
    passes: int
    """1 when the constant-quality encode fitted the budget; more when it was encoded again."""

    @property
    def over_budget(self) -> bool:
        return self.bytes > self.budget


class ClipWriter:
    """Encode frames one at a time into ``path`` (``.mp4`` or ``.webm``); ``close`` gives the result.

    Use as a context manager: on an exception nothing is written and the temp file is removed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = DEFAULT_FPS,
        max_width: int = MAX_WIDTH,
        budget: int = BUDGET,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _CODECS:
            raise ValueError(f"a gallery clip is .mp4 or .webm, not {suffix or 'no suffix'!r}")
        self.format, self.encoder, self._quality, self._rated = _CODECS[suffix]
        self.fps = fps
        self.max_width = max_width
        self.budget = budget
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        self._open_clip: tuple[_Output, VideoStream] | None = None
        self._size: tuple[int, int] | None = None
        self._frames = 0
        self._result: WrittenClip | None = None

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            if self._result is None and self._frames:
                self.close()
        else:
            self.abort()

    def add(self, picture: Frame | npt.NDArray[np.uint8]) -> None:
        """One frame: a ``Frame`` read with ``rgb_width``, or an RGB (or grey) uint8 array."""
        array = _array(picture)
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(array), format="rgb24" if array.ndim == 3 else "gray"
        )
        if self._size is None:
            self._size = even_size(frame.width, frame.height, self.max_width)
            self._open_clip = self._open(self._tmp, self._quality, None)
        if self._open_clip is None:
            raise ValueError(f"the clip {self.path} is closed")
        container, stream = self._open_clip
        width, height = self._size
        if (frame.width, frame.height) != self._size:
            frame = frame.reformat(width=width, height=height, interpolation="AREA")
        self._stamp(frame, self._frames)
        for packet in stream.encode(frame):
            container.mux(packet)
        self._frames += 1

    def close(self) -> WrittenClip:
        """Finish the clip, fit it to the budget, put it in place."""
        if self._result is not None:
            return self._result
        if self._open_clip is None or self._size is None:
            raise ValueError(f"no frames were given for {self.path}")
        self._finish(*self._open_clip)
        self._open_clip = None
        passes = 1
        seconds = self._frames / self.fps
        while self._tmp.stat().st_size > self.budget and passes < _MAX_PASSES:
            rate = int(self.budget * 8 * (0.85 if passes == 1 else 0.6) / seconds)
            self._reencode(rate)
            passes += 1
        os.replace(self._tmp, self.path)
        width, height = self._size
        self._result = WrittenClip(
            self.path, self._frames, width, height, self.fps, self.encoder,
            self.path.stat().st_size, self.budget, passes,
        )  # fmt: skip
        return self._result

    def abort(self) -> None:
        """Drop the clip in progress: close the encoder, remove the temp file."""
        if self._open_clip is not None:
            try:
                self._open_clip[0].close()
            except (av.error.FFmpegError, OSError):
                pass
            self._open_clip = None
        self._tmp.unlink(missing_ok=True)

    def _open(self, path: Path, options: dict[str, str], bit_rate: int | None) -> tuple[_Output, VideoStream]:
        assert self._size is not None
        extra = {"movflags": "+faststart"} if self.format == "mp4" else {}
        container = av.open(str(path), "w", format=self.format, options=extra)
        stream = container.add_stream(self.encoder, rate=_rate(self.fps))
        assert isinstance(stream, VideoStream)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        if bit_rate is not None:
            stream.bit_rate = bit_rate
            options = {**options, "maxrate": str(bit_rate), "bufsize": str(bit_rate)}
        stream.options = dict(options)
        return container, stream

    def _stamp(self, frame: av.VideoFrame, index: int) -> None:
        """Frame ``index`` of a constant-rate clip: its time stamp in units of one frame."""
        frame.pts = index
        frame.time_base = 1 / _rate(self.fps)

    @staticmethod
    def _finish(container: _Output, stream: VideoStream) -> None:
        for packet in stream.encode(None):
            container.mux(packet)
        container.close()

    def _reencode(self, bit_rate: int) -> None:
        """Encode the temp clip again at ``bit_rate``, reading it back frame by frame."""
        again = self._tmp.with_name(self._tmp.name + ".2")
        try:
            container, stream = self._open(again, self._rated, bit_rate)
            with av.open(str(self._tmp)) as source:
                for index, frame in enumerate(source.decode(video=0)):
                    self._stamp(frame, index)
                    for packet in stream.encode(frame):
                        container.mux(packet)
            self._finish(container, stream)
            os.replace(again, self._tmp)
        finally:
            again.unlink(missing_ok=True)


def write_clip(
    frames: Iterable[Frame | npt.NDArray[np.uint8]],
    path: str | os.PathLike[str],
    *,
    fps: float = DEFAULT_FPS,
    max_width: int = MAX_WIDTH,
    budget: int = BUDGET,
) -> WrittenClip:
    """Encode ``frames`` (read once) into a gallery clip at ``path``."""
    with ClipWriter(path, fps=fps, max_width=max_width, budget=budget) as writer:
        for frame in frames:
            writer.add(frame)
        return writer.close()


def _array(picture: Frame | npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if isinstance(picture, Frame):
        if picture.rgb is None:
            raise ValueError("a gallery clip needs the frames' RGB copies: read the clip with rgb_width")
        return picture.rgb
    if (
        picture.dtype != np.uint8
        or picture.ndim not in (2, 3)
        or (picture.ndim == 3 and picture.shape[2] != 3)
    ):
        raise ValueError(f"a frame is an RGB or grey uint8 array, not {picture.dtype} {picture.shape}")
    return picture


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)
