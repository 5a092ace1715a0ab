"""The replay as a service target (a child process, like the simulators) and the run's recorder."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.replay import TRACE_DIR
from pytest_gemdirect.replay.recorder import Recorder, portable_settings
from pytest_gemdirect.services.embedded import BOOT_TIMEOUT_S, SimulatorFailed, SimulatorProcess
from pytest_gemdirect.settings import PATH_SETTINGS, Settings


def trace_settings(settings: Settings) -> dict[str, Any]:
    """The settings as a trace keeps them (paths by file name), with each workflow's sha256."""
    kept = portable_settings(settings.public(), PATH_SETTINGS)
    for name in ("workflow", "keyframe_workflow"):
        path = getattr(settings, name)
        kept[f"{name}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    return kept


def start_recorder(settings: Settings, run_root: Path) -> Recorder | None:
    """The run's recorder (``trace/`` in the run directory), or None with --record false or a replay."""
    if not settings.record or settings.replay is not None:
        return None
    header = {"run_id": run_root.name, "settings": trace_settings(settings)}
    return Recorder(run_root / TRACE_DIR, header=header, secrets=[settings.llm_api_key or ""])


class ReplayProcess(SimulatorProcess):
    """``python -m pytest_gemdirect.replay`` serving the trace of ``--replay`` on loopback ports."""

    what = "the replay server"
    log_name = "replay"

    def _root(self) -> Path:
        self._tmp = Path(tempfile.mkdtemp(prefix="gemdirect-replay-"))
        return self._tmp

    def command(self, root: Path) -> list[str]:
        import sys

        settings_file = root / "settings.json"
        settings_file.write_text(json.dumps(trace_settings(self.settings), default=str), encoding="utf-8")
        s = self.settings
        args = [sys.executable, "-m", "pytest_gemdirect.replay", "--trace", str(s.replay)]
        return args + [
            "--speed",
            str(s.replay_speed),
            "--run-id",
            self._run_root.name,
            "--settings",
            str(settings_file),
        ]


def start_replay(settings: Settings, run_root: Path) -> ReplayProcess:
    """The replay server, ready (stopped again when it cannot start)."""
    process = ReplayProcess(settings, run_root, 1)
    try:
        process.start()
        process.wait_ready(Deadline(BOOT_TIMEOUT_S))
    except BaseException:
        process.stop()
        raise
    return process


def remove_empty_trace(run_root: Path) -> None:
    """A run that never spoke to a server leaves no trace folder behind (only its header)."""
    folder = run_root / TRACE_DIR
    exchanges = folder / "exchanges.jsonl"
    if exchanges.is_file() and len(exchanges.read_text(encoding="utf-8").splitlines()) <= 1:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "ReplayProcess",
    "SimulatorFailed",
    "remove_empty_trace",
    "start_recorder",
    "start_replay",
    "trace_settings",
]
