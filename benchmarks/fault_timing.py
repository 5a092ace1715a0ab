"""Wall times of the main job, and how fast the harness fails on the history-never and crash faults.

Runs `pytest -m e2e` in subprocesses (default settings unless given), reads each run's
scene-002/events.jsonl and prints:
  - the fault-free wall time,
  - history-never@scene-002: wall time, and seconds from the last simulator message to the failure
    against the configured completion grace,
  - crash@scene-002: seconds from the last message before the crash to the failure.

    python benchmarks/fault_timing.py [--completion-grace 30] [--project DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = "from pytest_gemdirect.pipeline_tests import *  # noqa\n"


def run(project: Path, run_dir: Path, *args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "e2e",
            "-q",
            "-p",
            "no:cacheprovider",
            "--run-dir",
            str(run_dir),
            *args,
        ],
        cwd=project,
        capture_output=True,
        check=False,
    )
    return time.monotonic() - started


def events(run_dir: Path, scene: str) -> list[dict]:
    path = run_dir / scene / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def last_message_to_failure(run_dir: Path, scene: str) -> tuple[float, str]:
    evs = [e for e in events(run_dir, scene) if "s" in e]
    failed = next(e for e in evs if e["event"] == "failed")
    last_ws = max((e for e in evs if e["event"] == "ws" and e["s"] <= failed["s"]), key=lambda e: e["s"])
    return failed["s"] - last_ws["s"], failed["kind"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--completion-grace", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_pipeline.py").write_text(PIPELINE, encoding="utf-8")
        clean = run(project, project / "clean")
        print(f"fault-free pytest -m e2e (3 scenes): {clean:.1f} s wall")
        grace = ["--completion-grace", str(args.completion_grace)]
        never = run(project, project / "never", "--sim-fault", "history-never@scene-002", *grace)
        gap, kind = last_message_to_failure(project / "never", "scene-002")
        print(
            f"history-never@scene-002: {never:.1f} s wall ({never - clean:+.1f} s beyond fault-free);"
            f" last simulator message -> failure {gap:.1f} s ({kind}),"
            f" completion grace {args.completion_grace:g} s"
        )
        crash = run(project, project / "crash", "--sim-fault", "crash@scene-002")
        gap, kind = last_message_to_failure(project / "crash", "scene-002")
        print(
            f"crash@scene-002: {crash:.1f} s wall;"
            f" last message before the crash -> failure {gap:.2f} s ({kind})"
        )


if __name__ == "__main__":
    main()
