"""What recording costs, and how fast a replay is (issue 23).

Runs `pytest -m e2e` (3 scenes, the default workflow, the embedded simulator) in subprocesses:
  - recording's cost: the same run with --record true (the default) and --record false, each
    ``--repeats`` times; per scene, the median of (generation + retrieval) seconds from the
    summary, the run's wall time divided by the scenes, and the trace's bytes per scene;
  - a replay of one recorded run at --replay-speed 0 (and 1) against the recorded run's time.

The simulator takes ``--step-seconds`` a sampler step (default 0.2: 20 steps are 4 s a scene, a
server that works for a while, as a GPU does); the harness's own time is the same either way.

    python benchmarks/record_replay.py [--repeats 3] [--step-seconds 0.2] [--project DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = "from pytest_gemdirect.pipeline_tests import *  # noqa\n"
SCENES = 3


def run(project: Path, run_dir: Path, *args: str) -> tuple[float, dict]:
    """Wall seconds of one `pytest -m e2e` and its run summary."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "e2e",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--run-dir={run_dir}",
            *args,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    summary = json.loads((run_dir / "run-summary.json").read_text(encoding="utf-8"))
    if summary["status"] != "passed":
        sys.exit(f"{run_dir}: the run did not pass:\n{done.stdout[-2000:]}")
    return wall, summary


def scene_seconds(summary: dict) -> float:
    """Mean seconds a scene took, generation plus retrieval, from the summary's stage items."""
    took = [
        item["duration_s"] or 0.0
        for stage in summary["stages"]
        if stage["name"] in ("svd", "frames")
        for item in stage.get("items", [])
    ]
    return sum(took) / SCENES


def trace_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "trace").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--project", type=Path, default=None)
    args = parser.parse_args()
    project = args.project or Path(tempfile.mkdtemp(prefix="gemdirect-record-replay-"))
    project.mkdir(parents=True, exist_ok=True)
    (project / "test_pipeline.py").write_text(PIPELINE, encoding="utf-8")
    common = (
        "--scenes",
        str(SCENES),
        "--sim-step-seconds",
        str(args.step_seconds),
        "--completion-grace",
        "5",
    )

    figures: dict[str, list[float]] = {
        k: [] for k in ("on_scene", "off_scene", "on_wall", "off_wall", "bytes")
    }
    recorded = None
    for n in range(args.repeats):
        for record in ("true", "false"):  # interleaved: a busy machine weighs on both alike
            run_dir = project / f"record-{record}-{n}"
            wall, summary = run(project, run_dir, "--record", record, *common)
            key = "on" if record == "true" else "off"
            figures[f"{key}_scene"].append(scene_seconds(summary))
            figures[f"{key}_wall"].append(wall / SCENES)
            if record == "true":
                figures["bytes"].append(trace_bytes(run_dir) / SCENES)
                recorded = recorded or (run_dir, wall, summary)
    assert recorded is not None
    recorded_dir, recorded_wall, recorded_summary = recorded
    replays = {}
    for speed in ("0", "1"):
        replay_dir = project / f"replay-speed-{speed}"
        wall, summary = run(project, replay_dir, f"--replay={recorded_dir}", "--replay-speed", speed, *common)
        replays[speed] = (wall, summary["duration_s"])

    med = statistics.median
    on, off = med(figures["on_scene"]), med(figures["off_scene"])
    on_wall, off_wall = med(figures["on_wall"]), med(figures["off_wall"])
    print(f"3-scene runs on the simulator, {args.step_seconds:g} s a sampler step, median of {args.repeats}:")
    print(
        f"  scene seconds (generation + retrieval)  record on {on:.3f}  off {off:.3f}  cost {on - off:+.3f} s"
    )
    print(
        f"  wall seconds per scene (whole run / 3)  record on {on_wall:.3f}"
        f"  off {off_wall:.3f}  cost {on_wall - off_wall:+.3f} s"
    )
    print(f"  trace bytes per scene                   {med(figures['bytes']) / 1e6:.2f} MB")
    recorded_run = recorded_summary["duration_s"]
    for speed, (wall, duration) in replays.items():
        print(
            f"  replay at --replay-speed {speed}: run {duration:.2f} s against {recorded_run:.2f} s recorded"
            f" ({duration / recorded_run:.0%}); wall {wall:.2f} s against {recorded_wall:.2f} s"
        )


if __name__ == "__main__":
    main()
