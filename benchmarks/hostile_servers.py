"""Measured figures for a slow, huge or hostile ComfyUI (issue 11's closing note), as one table.

Each row runs ``pytest -m e2e`` in a temporary project (its module is the pipeline's
``from pytest_gemdirect.pipeline_tests import *``) against the embedded simulator:

- ``view-trickle@scene-002`` with ``--scene-max-wait 20 --max-scene-retries 0``: when scene-002's
  frame retrieval failed, in seconds after its ``POST /prompt``, against the 20 s (the run summary
  is watched while it runs; ``post_prompt``'s time comes from scene-002/events.jsonl);
- ``history-huge`` against a fault-free run: peak RSS of the harness (the pytest process and its
  children but the simulator), of the simulator (with its children) and the run directory's size;
- ``history-never@scene-002`` with ``--completion-grace 30``: from the last message of scene-002
  to its failure (events.jsonl), against the 30 s;
- ``stall@scene-002``, SIGINT once scene-002's prompt is queued: seconds until pytest exited, and
  whether simulator.log shows ``POST /interrupt prompt_id=<ours>``.

Medians of ``--repeat`` runs (3) but the history-never one (once, it takes ~35 s). Not a test.

    python benchmarks/hostile_servers.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

PIPELINE = "from pytest_gemdirect.pipeline_tests import *  # noqa\n"
SIM_MODULE = "pytest_gemdirect.sim"
SAMPLE_S = 0.05
MB = 1024 * 1024


class Project:
    """A temporary user project; each run gets a fresh run directory in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = 0
        (root / "test_pipeline.py").write_text(PIPELINE, encoding="utf-8")

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        run_dir = self.root / f"run-{self.runs}"
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "e2e"]
        argv += [f"--run-dir={run_dir}", *args]
        # its own process group on Windows, where Ctrl-Break (the harness's Ctrl-C there) reaches it
        group = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if sys.platform == "win32" else 0
        proc = subprocess.Popen(
            argv, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, creationflags=group
        )
        return proc, run_dir


def watch(proc: subprocess.Popen[bytes], each: Callable[[], None]) -> None:
    """Call ``each`` every SAMPLE_S until the process ends (10 minutes at most)."""
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        each()
        time.sleep(SAMPLE_S)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def events(run_dir: Path, scene: str) -> list[dict[str, Any]]:
    path = run_dir / scene / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def item_status(summary: Any, key: str) -> str | None:
    for stage in (summary or {}).get("stages", []):
        for item in stage.get("items") or []:
            if item.get("key") == key:
                return str(item.get("status"))
    return None


def post_prompt(run_dir: Path, scene: str) -> dict[str, Any]:
    return [e for e in events(run_dir, scene) if e.get("event") == "post_prompt"][-1]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# ------------------------------------------------------------------------------------------ figures
def trickle_failure_after_post(project: Project, max_wait: float) -> float:
    """Seconds after scene-002's POST /prompt when its frame retrieval showed as failed."""
    proc, run_dir = project.start(
        "--sim-fault",
        "view-trickle@scene-002",
        "--scene-max-wait",
        f"{max_wait:g}",
        "--max-scene-retries",
        "0",
    )
    seen: list[float] = []

    def look() -> None:
        if not seen and item_status(read_json(run_dir / "run-summary.json"), "frames[scene-002]") == "failed":
            seen.append(time.time())

    watch(proc, look)
    if not seen:
        raise SystemExit(f"view-trickle: frames[scene-002] never failed (see {run_dir})")
    return seen[0] - epoch(post_prompt(run_dir, "scene-002")["t"])


def is_simulator(proc: psutil.Process) -> bool:
    try:
        return SIM_MODULE in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def rss(procs: Sequence[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def memory_and_size(project: Project, *args: str) -> tuple[float, float, float]:
    """(harness peak RSS MB, simulator peak RSS MB, run directory MB) of one run."""
    proc, run_dir = project.start(*args)
    root = psutil.Process(proc.pid)
    peaks = [0, 0]

    def look() -> None:
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            return
        sims = [c for c in children if is_simulator(c)]
        sim_tree = set(sims)
        for sim in sims:
            try:
                sim_tree.update(sim.children(recursive=True))
            except psutil.Error:
                pass
        harness = [root, *(c for c in children if c not in sim_tree)]
        peaks[0] = max(peaks[0], rss(harness))
        peaks[1] = max(peaks[1], rss(list(sim_tree)))

    watch(proc, look)
    if (read_json(run_dir / "run-summary.json") or {}).get("status") != "passed":
        raise SystemExit(f"{' '.join(args) or 'fault-free'}: the run did not pass (see {run_dir})")
    size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    return peaks[0] / MB, peaks[1] / MB, size / MB


def history_never_gap(project: Project, grace: float) -> float:
    """Seconds from scene-002's last WebSocket message to its failure under history-never."""
    proc, run_dir = project.start(
        "--sim-fault", "history-never@scene-002", "--completion-grace", f"{grace:g}"
    )
    watch(proc, lambda: None)
    timed = [e for e in events(run_dir, "scene-002") if "s" in e]
    failed = next(e for e in timed if e["event"] == "failed")
    last = max(e["s"] for e in timed if e["event"] == "ws" and e["s"] <= failed["s"])
    return float(failed["s"] - last)


def sigint_to_exit(project: Project) -> tuple[float, bool]:
    """(seconds from SIGINT to pytest's exit, whether the simulator logged our /interrupt)."""
    proc, run_dir = project.start(
        "--story-mode", "fallback", "--scenes", "3", "--scene-max-wait", "300",
        "--history-poll-interval", "0.3", "--ws-idle-timeout", "1", "--sim-fault", "stall@scene-002",
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not scene_002_queued(run_dir):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"stall: scene-002 never ran (see {run_dir})")
        time.sleep(SAMPLE_S)
    sent = time.monotonic()
    proc.send_signal(
        getattr(signal, "CTRL_BREAK_EVENT", signal.SIGINT) if sys.platform == "win32" else signal.SIGINT
    )
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    ours = post_prompt(run_dir, "scene-002")["prompt_id"]
    log = (run_dir / "simulator.log").read_text(encoding="utf-8", errors="replace")
    return took, f"POST /interrupt prompt_id={ours}" in log


def scene_002_queued(run_dir: Path) -> bool:
    """Scene-002's attempt is running and the server has its prompt (its ``queued`` event is written):
    the summary shows the attempt as running a moment before the prompt is posted."""
    summary = read_json(run_dir / "run-summary.json")
    scene = next((s for s in (summary or {}).get("scenes", []) if s["id"] == "scene-002"), None)
    if not (scene and scene["attempts"] and scene["attempts"][-1]["outcome"] == "running"):
        return False
    try:
        return any(e.get("event") == "queued" for e in events(run_dir, "scene-002"))
    except (OSError, ValueError):
        return False  # not written yet, or a line half written


# ------------------------------------------------------------------------------------------ table
def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, the median shown (3)")
    args = parser.parse_args()
    n = max(1, args.repeat)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(Path(tmp))

        after = [trickle_failure_after_post(project, 20) for _ in range(n)]
        rows.append(
            (
                "view-trickle@scene-002, --scene-max-wait 20",
                f"frames failed {median(after):.2f} s after POST (overshoot {median(after) - 20:+.2f} s)",
                f"runs: {', '.join(f'{a:.2f}' for a in after)}",
            )
        )

        clean = [memory_and_size(project) for _ in range(n)]
        huge = [memory_and_size(project, "--sim-fault", "history-huge") for _ in range(n)]
        for name, runs in (("fault-free", clean), ("history-huge", huge)):
            harness, sim, size = (median([r[i] for r in runs]) for i in range(3))
            rows.append(
                (
                    f"{name}: peak RSS harness / simulator, run dir",
                    f"{harness:.0f} MB / {sim:.0f} MB, {size:.1f} MB",
                    f"harness runs: {', '.join(f'{r[0]:.0f}' for r in runs)} MB",
                )
            )
        extra = median([r[0] for r in huge]) - median([r[0] for r in clean])
        rows.append(
            ("history-huge vs fault-free: harness peak RSS", f"{extra:+.0f} MB", "bound: within 50 MB")
        )

        gap = history_never_gap(project, 30)
        rows.append(
            (
                "history-never@scene-002, --completion-grace 30",
                f"last message -> failure {gap:.2f} s (error {gap - 30:+.2f} s)",
                "one run",
            )
        )

        stops = [sigint_to_exit(project) for _ in range(n)]
        rows.append(
            (
                "stall@scene-002, SIGINT while it runs",
                f"exit {median([s[0] for s in stops]):.2f} s after SIGINT",
                f"our /interrupt logged: {sum(s[1] for s in stops)} of {len(stops)} runs",
            )
        )
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    head = ("case", "measured (median)", "notes")
    width = [max(w, len(h)) for w, h in zip(width, head, strict=True)]
    for row in (head, tuple("-" * w for w in width), *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width, strict=True)).rstrip())


if __name__ == "__main__":
    main()
