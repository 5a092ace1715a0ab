"""Helpers of benchmarks/scale.py: processes measured (wall, peak RSS, CPU), a standalone simulator,
comfy-cli in a cached venv, and readers of a run directory and a simulator log.

Not part of the product nor of the test suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
PIPELINE = "from pytest_gemdirect.pipeline_tests import *  # noqa\n"
SIM_MARK = "pytest_gemdirect.sim"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------- processes
@dataclass
class Measured:
    """One finished process: wall seconds, its own peak RSS (MB), CPU seconds by role, its output."""

    wall_s: float
    returncode: int
    peak_rss_mb: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # "harness" / "simulator" -> user+system s
    output: str = ""


class _Sampler(threading.Thread):
    """Peak RSS of the process and the last CPU times of it and its descendants, every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()

    def _sample(self) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                times = p.cpu_times()
                known = self.cpu.get(p.pid, ("other", 0.0))[0]
                role = "harness" if p.pid == self.proc.pid else _role(p, known)
                self.cpu[p.pid] = (role, times.user + times.system)
            except psutil.Error:
                continue

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._sample()
            except psutil.Error:  # a child came or went mid-sample: next time
                if not self.proc.is_running():
                    return
            self.stop.wait(0.02)


def _role(p: psutil.Process, known: str) -> str:
    """What a child is, from its command line; what it was last seen as once that is unreadable."""
    try:
        return "simulator" if SIM_MARK in " ".join(p.cmdline()) else "other"
    except psutil.Error:  # a zombie at the end: its command line is gone, its CPU times are not
        return known


def run_measured(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Measured:
    """Run ``cmd`` to its end; on POSIX the peak RSS is the kernel's (wait4), elsewhere sampled."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = _Sampler(proc.pid)
    sampler.start()
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    peak_kb: float | None = None
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak_kb = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    else:
        proc.wait()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    reader.join()
    cpu: dict[str, float] = {}
    for role, seconds in sampler.cpu.values():
        cpu[role] = cpu.get(role, 0.0) + seconds
    peak_mb = peak_kb / 1024 if peak_kb is not None else sampler.peak / 2**20
    return Measured(wall, proc.returncode or 0, peak_mb, cpu, "".join(out_chunks))


def peak_rss_mb(pid: int) -> float:
    """A live process's peak RSS so far (Linux VmHWM, Windows peak working set, else current RSS)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if match:
            return int(match.group(1)) / 1024
    info = psutil.Process(pid).memory_info()
    return float(getattr(info, "peak_wset", info.rss)) / 2**20


# ---------------------------------------------------------------------------------------- simulator
class Simulator:
    """``python -m pytest_gemdirect.sim`` started on its own (loopback, free ports), its log kept."""

    def __init__(self, folder: Path, *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "simulator.log"
        ready = folder / "ready.json"
        ready.unlink(missing_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", SIM_MARK, "--root", str(folder / "files"), "--ready-file", str(ready)]
            + list(args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start: {self.log_path.read_text()}")
            time.sleep(0.02)
        self.url: str = json.loads(ready.read_text(encoding="utf-8"))["comfyui_url"]
        host, _, port = self.url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.popen.pid)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._log.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Execution:
    """One execution as the simulator logged it (monotonic seconds, requests received so far)."""

    prompt_id: str
    start: float
    end: float
    requests_at_start: int
    requests_at_end: int

    @property
    def request_rate(self) -> float:
        return (self.requests_at_end - self.requests_at_start) / max(self.end - self.start, 1e-9)


_EXEC = re.compile(r"execution (start|end) (\S+) monotonic=([\d.]+) requests=(\d+)")


def executions(log_path: Path) -> list[Execution]:
    """The executions in a simulator log, in the order they started (ended ones only)."""
    starts: dict[str, tuple[float, int]] = {}
    done: list[Execution] = []
    for match in _EXEC.finditer(log_path.read_text(encoding="utf-8", errors="replace")):
        kind, prompt_id, mono, count = (
            match.group(1),
            match.group(2),
            float(match.group(3)),
            int(match.group(4)),
        )
        if kind == "start":
            starts[prompt_id] = (mono, count)
        elif prompt_id in starts:
            start, at_start = starts.pop(prompt_id)
            done.append(Execution(prompt_id, start, mono, at_start, count))
    return sorted(done, key=lambda e: e.start)


def idle_gaps(execs: Sequence[Execution]) -> list[float]:
    """Seconds from the end of one execution to the start of the next on the same server."""
    return [b.start - a.end for a, b in zip(execs, execs[1:], strict=False)]


# ---------------------------------------------------------------------------------------- runs
def make_project(folder: Path) -> Path:
    """A small user project: one test file with the one import line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_pipeline.py").write_text(PIPELINE, encoding="utf-8")
    return folder


def harness_cmd(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "e2e", "--run-dir", str(run_dir), *args]


def events(run_dir: Path, scene: str) -> list[dict[str, Any]]:
    path = run_dir / scene / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run-summary.json").read_text(encoding="utf-8"))
    return data


def workflow_with_frames(frames: int, dest: Path) -> Path:
    """A copy of the shipped SVD workflow whose video has ``frames`` frames."""
    workflow = json.loads((ROOT / "fixtures" / "workflows" / "svd_img2vid.json").read_text(encoding="utf-8"))
    for node in workflow.values():
        if isinstance(node, dict) and "video_frames" in (node.get("inputs") or {}):
            node["inputs"]["video_frames"] = frames
    dest.write_text(json.dumps(workflow, indent=2), encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------- comfy-cli
def comfy_cli() -> Path:
    """The ``comfy`` command of comfy-cli (PyPI), installed once into benchmarks/.cache/comfy-cli."""
    folder = CACHE / "comfy-cli"
    exe = folder / ("Scripts/comfy.exe" if os.name == "nt" else "bin/comfy")
    if exe.exists():
        return exe
    print("benchmark: installing comfy-cli into benchmarks/.cache/comfy-cli (once)", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "comfy-cli"], check=True)
    return exe


def comfy_env() -> dict[str, str]:
    """No tracking, no background watcher, its config and job files in the cache, not in ~."""
    home = CACHE / "comfy-home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DO_NOT_TRACK="1", COMFY_NO_WATCH="1", HOME=str(home), USERPROFILE=str(home))
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


def upload_keyframe(url: str, image: Path, name: str) -> None:
    import requests  # the harness's own dependency; imported here so --help stays quick

    with image.open("rb") as fh:
        response = requests.post(f"{url}/upload/image", files={"image": (name, fh, "image/png")}, timeout=30)
    response.raise_for_status()


def comfy_workflow(run_dir: Path, image_name: str, prefix: str, dest: Path) -> Path:
    """The API workflow a harness run submitted, pointed at an uploaded keyframe and a new prefix."""
    workflow = json.loads((run_dir / "scene-001" / "workflow.json").read_text(encoding="utf-8"))
    for node in workflow.values():
        inputs = node.get("inputs") or {}
        if node.get("class_type") == "LoadImage":
            inputs["image"] = image_name
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = prefix
    dest.write_text(json.dumps(workflow), encoding="utf-8")
    return dest


def temp_folder(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
