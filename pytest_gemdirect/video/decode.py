"""Frames out of a scene's output files, one at a time, as small numpy arrays.

A scene's output is a video (MP4, WebM…), an animated image (GIF, animated PNG or WebP) or a
sequence of still images (SaveImage writes one PNG a frame). ``ClipReader`` walks any of them as
one clip and never holds more than the frame in hand: each decoded frame is shrunk at once to a
greyscale thumbnail (for the checks) and, if asked, a small RGB copy (for drift and the gallery
clip). What the clip was (frame count, size, rate, codec) is known once it has been read, as
``ClipInfo``.

Animated images written by Pillow (as ComfyUI's SaveAnimatedWEBP and SaveAnimatedPNG do, and
most GIF writers) store a run of identical frames as one frame with a longer duration. The reader
repeats such a frame to the clip's base rate (the ``fps`` given, else the shortest frame duration),
so a frozen stretch still counts as the frames it stood for; ``ClipInfo.stored_frames`` keeps the
count as stored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import av.error
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .labels import visible

THUMB_SIZE = (64, 36)
"""The greyscale thumbnail fits in this box (aspect kept): enough for black, flat and motion."""

STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
U8 = npt.NDArray[np.uint8]

# What decoders raise on a broken or hostile file (Pillow raises SyntaxError for some broken headers).
_UNDECODABLE = (
    av.error.FFmpegError, OSError, ValueError, SyntaxError, EOFError, MemoryError,
    Image.DecompressionBombError,
)  # fmt: skip

# What a frame comes out of one file's decoder as, before it is shrunk.
_Decoded = av.VideoFrame | Image.Image


class DecodeError(Exception):
    """A file that is not a decodable video or image; names the file and what went wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{visible(path)}: does not decode: {visible(reason, 400)}")


@dataclass(frozen=True)
class Frame:
    """One frame of a clip, shrunk: the full-size pixels are gone by the time it is yielded."""

    index: int
    """Position in the clip (after repeating merged frames of an animated image)."""
    width: int
    height: int
    """Size of the decoded frame."""
    grey: U8
    """Greyscale thumbnail (0..255), at most ``THUMB_SIZE``, aspect kept. Read-only."""
    rgb: U8 | None
    """RGB copy, ``height x width x 3``, at most the reader's ``rgb_width`` wide, even sides; or None."""
    source: Path


@dataclass(frozen=True)
class ClipInfo:
    """What a clip turned out to be, once read to its end."""

    path: Path
    """The file, or the first file of an image sequence."""
    files: tuple[Path, ...]
    frame_count: int
    """Frames as shown (merged frames of an animated image counted as the frames they stand for)."""
    stored_frames: int
    """Frames as stored in the file(s)."""
    width: int
    height: int
    """Size of the first frame."""
    fps: float | None
    """Frames a second: from the container, or from an animated image's frame durations; None for stills."""
    duration: float | None
    """Seconds, when the container says or the rate is known."""
    codec: str
    container: str
    """``mp4``, ``webm``, ``gif``, ``apng``, ``webp``, ``png``, ``image-sequence``…"""

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def fit_within(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    """The largest size of ``width x height``'s aspect that fits ``box`` (no upscaling, at least 1x1)."""
    scale = min(box[0] / width, box[1] / height, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def even_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """``width x height`` scaled down to at most ``max_width`` wide, both sides even (yuv420p wants it)."""
    scale = min(max_width / width, 1.0)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def image_sequence(folder: str | os.PathLike[str], suffixes: Sequence[str] = (".png",)) -> list[Path]:
    """The image files in ``folder`` in frame order (numbers compared as numbers: 9 before 10)."""

    def key(path: Path) -> list[object]:
        return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", path.name)]

    wanted = tuple(s.lower() for s in suffixes)
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in wanted and p.is_file()), key=key)


class ClipReader:
    """Iterate once over a clip's frames; ``info`` afterwards.

    ``source`` is one file, or a sequence of files read one after another as one clip.
    ``rgb_width`` asks for an RGB copy of each frame at most that wide. ``fps`` is the rate
    animated images were saved at, when known (it decides how many frames a merged frame stands
    for); without it the shortest frame duration is the base.
    """

    def __init__(
        self,
        source: Source,
        *,
        thumb_size: tuple[int, int] = THUMB_SIZE,
        rgb_width: int | None = None,
        fps: float | None = None,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            self.files: tuple[Path, ...] = (Path(source),)
            self._sequence = False
        else:
            self.files = tuple(Path(p) for p in source)
            self._sequence = True
            if not self.files:
                raise ValueError("an image sequence needs at least one file")
        self.thumb_size = thumb_size
        self.rgb_width = rgb_width
        self.fps = fps
        self._started = False
        self._info: ClipInfo | None = None

    @property
    def info(self) -> ClipInfo:
        if self._info is None:
            raise RuntimeError("ClipReader.info is known once the frames have been read to the end")
        return self._info

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError("a ClipReader is read once; make another to read the clip again")
        self._started = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        index = 0
        first: Frame | None = None
        facts: list[_FileFacts] = []
        for path in self.files:
            fact = _FileFacts()
            facts.append(fact)
            try:
                for decoded, repeats in _decode_file(path, fact, self.fps):
                    frame = self._shrink(decoded, index, path)
                    if first is None:
                        first = frame
                    for _ in range(repeats):
                        yield replace(frame, index=index)
                        index += 1
            except DecodeError:
                raise
            except _UNDECODABLE as exc:
                where = f"after {fact.stored} frames: " if fact.stored else ""
                raise DecodeError(path, f"{where}{type(exc).__name__}: {exc}") from exc
            if fact.stored == 0:
                raise DecodeError(path, "no video frames in it")
        assert first is not None
        self._info = self._clip_info(facts, index, sum(f.stored for f in facts), first)

    def _shrink(self, decoded: _Decoded, index: int, path: Path) -> Frame:
        width, height = decoded.width, decoded.height
        thumb = fit_within(width, height, self.thumb_size)
        rgb = None
        if isinstance(decoded, av.VideoFrame):
            small = decoded.reformat(width=thumb[0], height=thumb[1], format="rgb24", interpolation="AREA")
            grey = _grey(small.to_ndarray())
            if self.rgb_width:
                w, h = even_size(width, height, self.rgb_width)
                rgb = decoded.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
        else:
            image = decoded if decoded.mode == "RGB" else decoded.convert("RGB")
            if self.rgb_width:  # the thumbnail is made from the RGB copy: a quarter of the work
                image = image.resize(
                    even_size(width, height, self.rgb_width), Image.Resampling.BOX, reducing_gap=2.0
                )
                rgb = np.asarray(image)
            grey = _grey(np.asarray(image.resize(thumb, Image.Resampling.BOX, reducing_gap=2.0)))
        grey.setflags(write=False)
        if rgb is not None:
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            rgb.setflags(write=False)
        return Frame(index, width, height, grey, rgb, path)

    def _clip_info(self, facts: list[_FileFacts], count: int, stored: int, first: Frame) -> ClipInfo:
        if self._sequence:
            codecs = sorted({f.codec for f in facts})
            return ClipInfo(
                self.files[0], self.files, count, stored, first.width, first.height,
                fps=None, duration=None, codec="+".join(codecs), container="image-sequence",
            )  # fmt: skip
        fact = facts[0]
        fps = fact.fps
        duration = fact.duration if fact.duration else (count / fps if fps else None)
        return ClipInfo(
            self.files[0], self.files, count, stored, first.width, first.height,
            fps=fps, duration=duration, codec=fact.codec, container=fact.container,
        )  # fmt: skip


def read_info(source: Source, *, fps: float | None = None) -> ClipInfo:
    """Read a clip through (thumbnails only) for its ``ClipInfo``."""
    reader = ClipReader(source, fps=fps)
    for _ in reader:
        pass
    return reader.info


def _grey(rgb: npt.NDArray[Any]) -> U8:
    return np.asarray(np.clip(rgb.astype(np.float32) @ GREY_WEIGHTS + 0.5, 0, 255), dtype=np.uint8)


@dataclass
class _FileFacts:
    codec: str = ""
    container: str = ""
    fps: float | None = None
    duration: float | None = None
    stored: int = 0


def _decode_file(path: Path, fact: _FileFacts, fps: float | None) -> Iterator[tuple[_Decoded, int]]:
    """One file's frames, each with how many clip frames it stands for."""
    if not path.is_file():
        raise DecodeError(path, "no such file")
    kind = _sniff(path)
    if kind == "still":
        yield from _still(path, fact)
    elif kind == "webp-anim":
        yield from _webp_animation(path, fact, fps)
    elif kind in ("gif", "apng"):
        yield from _av_animation(path, fact, fps, kind)
    else:
        yield from _av_video(path, fact)


def _sniff(path: Path) -> str:
    """``still``, ``gif``, ``apng``, ``webp-anim`` or ``video``, from the bytes, not the (server's) name."""
    with path.open("rb") as handle:
        head = handle.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return "apng" if _png_is_animated(handle) else "still"
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return "gif"
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            animated = head[12:16] == b"VP8X" and bool(head[20] & 0x02)
            return "webp-anim" if animated else "still"
        if head.startswith(b"\xff\xd8\xff"):
            return "still"
    return "video"


def _png_is_animated(handle: BinaryIO) -> bool:
    """An ``acTL`` chunk before the first ``IDAT`` makes a PNG an animated PNG."""
    handle.seek(8)
    for _ in range(1000):
        header = handle.read(8)
        if len(header) < 8:
            return False
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if kind == b"acTL":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        handle.seek(length + 4, os.SEEK_CUR)
    return False


def _still(path: Path, fact: _FileFacts) -> Iterator[tuple[_Decoded, int]]:
    try:
        image = Image.open(path)
    except UnidentifiedImageError as exc:
        raise DecodeError(path, "not an image Pillow can read") from exc
    with image:
        image.load()
        fact.codec = fact.container = (image.format or "image").lower()
        fact.stored = 1
        yield image, 1


def _repeats(duration: float | None, base: float | None) -> int:
    if not duration or not base or duration <= base:
        return 1
    return max(1, round(duration / base))


def _av_animation(
    path: Path, fact: _FileFacts, fps: float | None, kind: str
) -> Iterator[tuple[_Decoded, int]]:
    """GIF and animated PNG through FFmpeg; frame durations from the packets, read first (no decoding)."""
    form = "apng" if kind == "apng" else None
    with av.open(str(path), format=form) as container:
        stream = container.streams.video[0]
        tb = stream.time_base or Fraction(1, 100)
        durations = [float((p.duration or 0) * tb) for p in container.demux(stream) if p.size]
    positive = [d for d in durations if d > 0]
    base = 1.0 / fps if fps else (min(positive) if positive else None)
    with av.open(str(path), format=form) as container:
        stream = container.streams.video[0]
        fact.codec, fact.container = stream.codec_context.name, kind
        for frame in container.decode(stream):
            duration = durations[fact.stored] if fact.stored < len(durations) else None
            fact.stored += 1
            yield frame, _repeats(duration, base)
    fact.fps = 1.0 / base if base else None
    fact.duration = sum(durations) or None


def _webp_animation(path: Path, fact: _FileFacts, fps: float | None) -> Iterator[tuple[_Decoded, int]]:
    """Animated WebP through Pillow: FFmpeg's webp decoder reads still WebP only."""
    durations = _webp_durations(path)
    positive = [d for d in durations if d > 0]
    base = 1.0 / fps if fps else (min(positive) if positive else None)
    with Image.open(path) as image:
        fact.codec, fact.container = "webp", "webp"
        for number in range(getattr(image, "n_frames", 1)):
            image.seek(number)
            duration = durations[number] if number < len(durations) else None
            fact.stored += 1
            yield image, _repeats(duration, base)
    fact.fps = 1.0 / base if base else None
    fact.duration = sum(durations) or None


def _webp_durations(path: Path) -> list[float]:
    """Each ANMF chunk's duration in seconds, from the chunk headers (no decoding)."""
    durations: list[float] = []
    with path.open("rb") as handle:
        handle.seek(12)
        while len(durations) < 100_000:
            header = handle.read(8)
            if len(header) < 8:
                break
            kind, size = header[:4], int.from_bytes(header[4:], "little")
            if kind == b"ANMF":
                payload = handle.read(16)
                if len(payload) < 16:
                    break
                durations.append(int.from_bytes(payload[12:15], "little") / 1000.0)
                handle.seek(size + (size & 1) - 16, os.SEEK_CUR)
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)
    return durations


def _av_video(path: Path, fact: _FileFacts) -> Iterator[tuple[_Decoded, int]]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError(path, f"no video stream in this {container.format.name} file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fact.codec = stream.codec_context.name
        fact.container = _container_name(container.format.name, path)
        rate = stream.average_rate or stream.guessed_rate
        fact.fps = float(rate) if rate else None
        if stream.duration and stream.time_base:
            fact.duration = float(stream.duration * stream.time_base)
        elif container.duration:
            fact.duration = container.duration / 1_000_000
        for frame in container.decode(stream):
            fact.stored += 1
            yield frame, 1


def _container_name(names: str, path: Path) -> str:
    """FFmpeg names demuxers by family (``mov,mp4,m4a,…``); pick the member the file's suffix names."""
    parts = names.split(",")
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in parts else parts[0]
