"""The embedded simulators as child processes (``python -m pytest_gemdirect.sim``).

A child process, so that a simulated crash is a real dead process and the harness's handling of
one is the real code path; several of them form a pool of servers (``--sim-servers K``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.processes import kill_tree, launch_logged, log_tail
from pytest_gemdirect.settings import Settings

BOOT_TIMEOUT_S = 30.0


class SimulatorFailed(Exception):
    """A simulator did not become ready; the message has its log's tail."""


class SimulatorProcess:
    """One simulator: ComfyUI (and an LLM) on free loopback ports, its output in a log file."""

    what = "the embedded simulator"
    log_name = "simulator"

    def __init__(self, settings: Settings, run_root: Path, number: int) -> None:
        self.settings = settings
        self.number = number
        suffix = "" if number == 1 else f"-{number}"
        self.log_path = run_root / f"{self.log_name}{suffix}.log"
        self._run_root = run_root
        self._tmp: Path | None = None  # the simulator's own files, removed at stop()
        self.popen: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, Any] = {}

    def _root(self) -> Path:
        """Where it keeps its inputs and outputs: a temporary folder, unless asked.

        Its outputs are the frames the harness downloads into the run directory anyway; kept,
        they would double a run directory's size (--sim-keep-files true keeps them).
        """
        if self.settings.sim_keep_files:
            suffix = "" if self.number == 1 else f"-{self.number}"
            return self._run_root / f"simulator{suffix}"
        self._tmp = Path(tempfile.mkdtemp(prefix="gemdirect-sim-"))
        return self._tmp

    def start(self) -> None:
        root = self._root()
        root.mkdir(parents=True, exist_ok=True)
        self._ready_file = root / "ready.json"
        self._ready_file.unlink(missing_ok=True)
        args = self.command(root) + ["--ready-file", str(self._ready_file), "--parent-pid", str(os.getpid())]
        self.popen = launch_logged(args, cwd=self._run_root, env_overrides={}, log_path=self.log_path)

    def command(self, root: Path) -> list[str]:
        """The child's command line, without the ready file and parent pid every child gets."""
        s = self.settings
        args = [sys.executable, "-m", "pytest_gemdirect.sim", "--root", str(root)]
        args += ["--step-seconds", str(s.sim_step_seconds), "--seed", str(s.llm_seed)]
        for spec in s.faults.specs():
            args += ["--fault", spec]
        for path in model_sources(s):
            args += ["--models-from", str(path)]
        return args

    def wait_ready(self, deadline: Deadline) -> dict[str, Any]:
        """``{"comfyui_url", "llm_url", "pid", "log"}`` once it answers; SimulatorFailed if it cannot."""
        assert self.popen is not None, "start() first"
        while not self._ready_file.exists():
            try:
                code = self.popen.wait(timeout=deadline.timeout(cap=0.05))
            except subprocess.TimeoutExpired:
                if deadline.expired():
                    raise SimulatorFailed(
                        f"{self.what} did not become ready within {BOOT_TIMEOUT_S:g} s;"
                        f" its log ({self.log_path}) ends:\n{log_tail(self.log_path)}"
                    ) from None
                continue
            raise SimulatorFailed(
                f"{self.what} exited with code {code} while booting; its log ({self.log_path})"
                f" ends:\n{log_tail(self.log_path)}"
            )
        self.urls = json.loads(self._ready_file.read_text(encoding="utf-8"))
        self.urls["log"] = str(self.log_path)
        return self.urls

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is not None:
            kill_tree(self.popen, grace_s=3.0)
            self.popen = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


MODEL_SOURCE_SETTINGS = ("workflow", "keyframe_workflow", "app_settings")


def model_sources(settings: Settings) -> list[Path]:
    """The JSON files whose graphs name the model files the simulated ComfyUI must have."""
    found = []
    for name in MODEL_SOURCE_SETTINGS:
        path = getattr(settings, name, None)  # app_settings: only where that setting exists
        if path is not None:
            found.append(Path(path))
    return found


def start_simulators(settings: Settings, run_root: Path, count: int) -> list[SimulatorProcess]:
    """Start ``count`` simulators at once and wait until each is ready (all stopped on failure)."""
    sims = [SimulatorProcess(settings, run_root, number) for number in range(1, count + 1)]
    try:
        for sim in sims:
            sim.start()
        deadline = Deadline(BOOT_TIMEOUT_S)
        for sim in sims:
            sim.wait_ready(deadline)
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims
