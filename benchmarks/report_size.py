"""Size and render time of report.html for 3 scenes of 25 frames at 1024x576, with their clips.

    python benchmarks/report_size.py [--scenes 3] [--frames 25] [--size 1024x576] [--noise] [--no-clips]
                                     [--keep DIR]

Makes the frames with Pillow (``--noise``: pure noise, the worst case for compression), lays out a
run directory with every scene's frames and its gallery clip (as the frames stage writes it;
``--no-clips`` leaves them out), then times ``write_report`` cold (previews made) and warm
(previews cached, as when the report is rewritten after each stage), and prints the file's size.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package, for its run builders

from pytest_gemdirect.report import write_report
from tests.test_report import add_video, base_summary, make_frame, write_run

LIMIT = 5 * 1024 * 1024


def make_bank(folder: Path, scenes: int, frames: int, size: tuple[int, int], noise: bool) -> None:
    for scene in range(1, scenes + 1):
        out = folder / f"scene-{scene:03d}"
        out.mkdir(parents=True)
        for index in range(frames + 1):
            if noise:
                image = Image.merge(
                    "RGB", [Image.effect_noise(size, 80 + c * 10).convert("L") for c in range(3)]
                )
            else:
                image = make_frame(index, frames, seed=scene, size=size)
            name = "keyframe.png" if index == 0 else f"frame_{index:05d}_.png"
            image.save(out / name, compress_level=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", default="1024x576")
    parser.add_argument("--noise", action="store_true", help="pure-noise frames (worst case)")
    parser.add_argument("--no-clips", action="store_true", help="scenes without their gallery clips")
    parser.add_argument("--repeat", type=int, default=5, help="warm renders to time")
    parser.add_argument("--keep", type=Path, help="leave the run directory here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="gemdirect-bench-"))
    try:
        started = time.perf_counter()
        make_bank(work / "bank", args.scenes, args.frames, (width, height), args.noise)
        print(
            f"made {args.scenes} x {args.frames} frames at {width}x{height}"
            f" in {time.perf_counter() - started:.1f} s"
        )
        run_dir = (args.keep or work / "run").resolve()
        if run_dir.exists():
            shutil.rmtree(run_dir)
        data = base_summary(run_dir, scenes=args.scenes)
        for scene in data["scenes"]:  # every scene with its frames: the heaviest report
            scene["frames_dir"] = f"{scene['id']}/generated-frames"
            scene["frame_count"] = args.frames
        write_run(run_dir, data, work / "bank")
        if not args.no_clips:
            clips = [add_video(run_dir, data, scene["id"])["video"]["clip"] for scene in data["scenes"]]
            total = sum((run_dir / clip).stat().st_size for clip in clips)
            print(f"{len(clips)} gallery clips: {total:,} bytes")
        report = run_dir / "report.html"
        baseline = copy.deepcopy(data)
        started = time.perf_counter()
        write_report(report, data, run_dir, baseline=baseline)
        cold = time.perf_counter() - started
        warm = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            write_report(report, data, run_dir, baseline=baseline)
            warm.append(time.perf_counter() - started)
        size = report.stat().st_size
        print(f"report.html: {size:,} bytes ({size / 1024**2:.3f} MiB), limit {LIMIT / 1024**2:.0f} MiB")
        print(
            f"render + write: cold {cold * 1000:.0f} ms (previews made),"
            f" warm {statistics.median(warm) * 1000:.1f} ms (previews cached)"
        )
        if args.keep:
            print(f"run directory kept: {run_dir}")
        return 0 if size < LIMIT else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
