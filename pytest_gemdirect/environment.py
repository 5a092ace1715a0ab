"""Stage 1: facts about the machine the run depends on (Python, packages, disk, Node, GPU)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_gemdirect.deadline import Deadline

REQUIRED_PACKAGES = (
    "pytest",
    "pytest-timeout",
    "pytest-html",
    "requests",
    "websocket-client",
    "jsonschema",
    "aiohttp",
    "Pillow",
    "psutil",
)
MIN_FREE_DISK_BYTES = 1 * 1024**3


class EnvironmentProblem(Exception):
    """Something the run cannot go on without."""


def _tool_version(command: list[str], deadline: Deadline) -> str | None:
    exe = shutil.which(command[0])
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *command[1:]], capture_output=True, text=True, timeout=deadline.timeout(cap=10), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else None
    )


def gpu_facts(deadline: Deadline) -> dict[str, Any]:
    """GPUs as nvidia-smi sees them on this machine; says so plainly when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"visible": False, "note": "nvidia-smi not found on this machine", "gpus": []}
    try:
        done = subprocess.run(
            [
                exe,
                "--query-gpu=name,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=deadline.timeout(cap=15),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"visible": False, "note": f"nvidia-smi did not answer: {exc}", "gpus": []}
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(
                {
                    "name": parts[0],
                    "memory_total_mib": parts[1],
                    "memory_free_mib": parts[2],
                    "driver": parts[3],
                }
            )
    return {"visible": bool(gpus), "note": None if gpus else done.stderr.strip()[:200], "gpus": gpus}


def check_environment(run_root: Path, *, deadline: Deadline) -> dict[str, Any]:
    """Collect the facts; raise EnvironmentProblem for what blocks the run (missing package, full disk)."""
    packages: dict[str, str | None] = {}
    for name in REQUIRED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    disk = shutil.disk_usage(run_root)
    facts: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": packages,
        "disk_free_bytes": disk.free,
        "node": _tool_version(["node", "--version"], deadline),
        "npm": _tool_version(["npm", "--version"], deadline),
        "gpu": gpu_facts(deadline),
    }
    missing = [name for name, version in packages.items() if version is None]
    if missing:
        raise EnvironmentProblem(
            f"missing Python packages: {', '.join(missing)} (pip install pytest-gemdirect)"
        )
    if disk.free < MIN_FREE_DISK_BYTES:
        raise EnvironmentProblem(
            f"only {disk.free / 1024**2:.0f} MiB free on the disk of {run_root}; the run needs at least 1 GiB"
        )
    return facts
