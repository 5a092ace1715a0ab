"""Time the video checks add per scene: decode + checks, and decode + checks + gallery clip.

    python benchmarks/video_checks.py [--size 1024x576] [--frames 25 250] [--repeat 3] [--noise] [--keep DIR]

Makes each scene's frames (a gradient with a moving square, or ``--noise`` for the worst case of
compression) as a PNG sequence (compress level 4, as ComfyUI's SaveImage writes) and as an H.264
MP4, then times ``scan_scene`` on each without and with the gallery clip, and ``scene_drift``
against a copy of itself. Prints the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_gemdirect.video import Expected, scan_scene, scene_drift


def frames(count: int, size: tuple[int, int], noise: bool) -> Iterator[np.ndarray]:
    width, height = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    side = height // 4
    for index in range(count):
        if noise:
            yield rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            continue
        frame = base.copy()
        x = (index * 8) % (width - side)
        frame[height // 3 : height // 3 + side, x : x + side] = 255
        yield frame


def make_pngs(folder: Path, count: int, size: tuple[int, int], noise: bool) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index, frame in enumerate(frames(count, size, noise)):
        path = folder / f"frames_{index + 1:05d}_.png"
        Image.fromarray(frame).save(path, compress_level=4)
        paths.append(path)
    return paths


def make_mp4(path: Path, count: int, size: tuple[int, int], noise: bool) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=6)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for frame in frames(count, size, noise):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def median_time(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(
    source: Path | list[Path], baseline: list[Path], expected: Expected, clip: Path, repeat: int
) -> tuple[float, float, float, int]:
    """Seconds for decode + checks, for decode + checks + clip, for drift; and the clip's bytes."""
    scene = scan_scene(source, "scene", expected=expected, clip_path=clip)
    assert scene.checks.ok, scene.checks.problems
    assert scene.clip is not None
    checks = median_time(lambda: scan_scene(source, "scene", expected=expected), repeat)
    full = median_time(lambda: scan_scene(source, "scene", expected=expected, clip_path=clip), repeat)
    drift = median_time(lambda: scene_drift(source, baseline, "scene"), repeat)
    return checks, full, drift, scene.clip.bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x576")
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 250])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--noise", action="store_true", help="pure-noise frames (worst case)")
    parser.add_argument("--keep", type=Path, help="leave the files here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    size = (width, height)
    work = args.keep or Path(tempfile.mkdtemp(prefix="gemdirect-video-bench-"))
    rows = []
    try:
        for count in args.frames:
            started = time.perf_counter()
            sources: dict[str, Path | list[Path]] = {
                "png": make_pngs(work / f"png-{count}", count, size, args.noise),
                "mp4": make_mp4(work / f"clip-{count}.mp4", count, size, args.noise),
            }
            baseline = make_pngs(work / f"png-{count}-baseline", count, size, args.noise)
            print(
                f"made {count} frames as PNG and MP4 in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            expected = Expected(count, width, height)
            for kind, source in sources.items():
                clip = work / f"preview-{kind}-{count}.mp4"
                rows.append((kind, count, *measure(source, baseline, expected, clip, args.repeat)))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    kind_of = " (noise)" if args.noise else ""
    print(f"\nvideo checks per scene, {width}x{height}, median of {args.repeat}{kind_of}")
    header = ("source", "frames", "decode+checks s", "ms/frame", "+clip s", "ms/frame", "drift s", "clip KB")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for kind, count, checks, full, drift, clip_bytes in rows:
        cells = (
            kind, str(count), f"{checks:.2f}", f"{checks / count * 1000:.1f}", f"{full:.2f}",
            f"{full / count * 1000:.1f}", f"{drift:.2f}", f"{clip_bytes / 1024:.0f}",
        )  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
