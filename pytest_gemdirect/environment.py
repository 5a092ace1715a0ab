"""Stage 1: facts about the machine the run depends on (Python, packages, disk, Node, GPU)."""

from __future__ import annotations

import platform
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pytest_gemdirect.cmdline import resolve_program
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.processes import WAIT_SLICE_S, run_captured

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
_T = TypeVar("_T")


class EnvironmentProblem(Exception):
    """Something the run cannot go on without."""


def _tool_version(command: list[str], deadline: Deadline) -> str | None:
    """The first line a tool prints for ``--version``; None when it is missing or silent.

    The tool is found like the suites find theirs (``npm`` is ``npm.cmd`` on Windows, never the
    extensionless shell script npm installs beside it), and waited for in slices (Ctrl-C)."""
    try:
        exe = resolve_program(command[0], cwd=None)
        done = run_captured([str(exe), *command[1:]], timeout_s=deadline.timeout(cap=10))
    except OSError:
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.exit_code is not None and text else None


def gpu_facts(deadline: Deadline) -> dict[str, Any]:
    """GPUs as nvidia-smi sees them on this machine; says so plainly when there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"visible": False, "note": "nvidia-smi not found on this machine", "gpus": []}
    query = ["--query-gpu=name,memory.total,memory.free,driver_version", "--format=csv,noheader,nounits"]
    limit = deadline.timeout(cap=15)
    try:
        done = run_captured([exe, *query], timeout_s=limit)
    except OSError as exc:
        return {"visible": False, "note": f"nvidia-smi did not answer: {exc}", "gpus": []}
    if done.exit_code is None:
        return {"visible": False, "note": f"nvidia-smi did not answer within {limit:g} s", "gpus": []}
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


def warm_up() -> None:
    """Load what the later stages need while this stage waits for the probes anyway: the video
    checks (numpy, PyAV) and the report's compiled templates. A failure here is left for the stage
    that needs the module to report."""
    try:
        import pytest_gemdirect.video  # noqa: F401 - the frames stage's checks
        from pytest_gemdirect.report.templating import environment

        templates = environment()
        for name in templates.list_templates(extensions=["j2"]):
            templates.get_template(name)
    except Exception:  # noqa: BLE001 - only a head start; the real use reports the problem
        pass


def _sliced_result(future: Future[_T]) -> _T:
    """The probe's result, waited for a slice at a time so a Ctrl-C lands promptly on Windows too."""
    while True:
        try:
            return future.result(timeout=WAIT_SLICE_S)
        except FutureTimeout:
            continue


def check_environment(run_root: Path, *, deadline: Deadline) -> dict[str, Any]:
    """Collect the facts; raise EnvironmentProblem for what blocks the run (missing package, full disk)."""
    packages: dict[str, str | None] = {}
    for name in REQUIRED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    disk = shutil.disk_usage(run_root)
    # The three probes are other programs' start-up time (npm alone takes a quarter of a second):
    # run side by side, they cost the slowest of them instead of the sum.
    probes = ThreadPoolExecutor(max_workers=3, thread_name_prefix="gemdirect-env")
    try:
        node = probes.submit(_tool_version, ["node", "--version"], deadline)
        npm = probes.submit(_tool_version, ["npm", "--version"], deadline)
        gpu = probes.submit(gpu_facts, deadline)
        warm = probes.submit(warm_up)
        facts: dict[str, Any] = {
            "python": sys.version.split()[0],
            "python_executable": sys.executable,
            "platform": platform.platform(),
            "packages": packages,
            "disk_free_bytes": disk.free,
            "node": _sliced_result(node),
            "npm": _sliced_result(npm),
            "gpu": _sliced_result(gpu),
        }
        _sliced_result(warm)  # done within this stage: no import runs beside a later stage's
    finally:
        probes.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not wait for a slow tool here
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
