"""Stage 1: facts about the machine the run depends on (Python, packages, disk, Node, GPU)."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pytest_gemdirect.cmdline import resolve_program
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.processes import WAIT_SLICE_S, run_captured
from pytest_gemdirect.user_cache import read_json, write_json

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
TOOL_CACHE = "tool-versions.json"  # in the user's cache folder: version lines heard, by executable
TOOL_CACHE_ENTRIES = 32
_T = TypeVar("_T")


class EnvironmentProblem(Exception):
    """Something the run cannot go on without."""


@dataclass(frozen=True)
class _Tool:
    """A tool the environment stage asks for its ``--version`` line, and what an earlier run heard."""

    name: str
    command: tuple[str, ...]
    exe: Path | None  # None: not found, nothing to start
    key: str | None  # the executable's resolved path, size and modification time; None: unknown
    remembered: str | None  # the line this same executable printed in an earlier run


def _locate(command: tuple[str, ...], cache: dict[str, Any]) -> _Tool:
    """The tool's executable, found like the suites find theirs (``npm`` is ``npm.cmd`` on Windows,
    never the extensionless shell script npm installs beside it), and its remembered version line.

    The key is the file that starts (a link followed to its target) with its size and modification
    time to the nanosecond: an upgrade, a reinstall or another tool earlier on PATH is asked again.
    """
    try:
        exe = resolve_program(command[0], cwd=None)
    except OSError:
        return _Tool(command[0], command, None, None, None)
    try:
        resolved = exe.resolve()
        stat = resolved.stat()
    except OSError:
        return _Tool(command[0], command, exe, None, None)
    key = json.dumps([*command[1:], str(resolved), stat.st_size, stat.st_mtime_ns])
    entry = cache.get(key)
    remembered = entry.get("version") if isinstance(entry, dict) else None
    return _Tool(command[0], command, exe, key, remembered if isinstance(remembered, str) else None)


def _tool_version(tool: _Tool, deadline: Deadline) -> str | None:
    """The first line the tool prints for ``--version``; None when it is missing or silent.

    Waited for in slices (Ctrl-C). Not started again where this same executable answered in an
    earlier run: its line is the tool's version as the tool said it then."""
    if tool.remembered is not None:
        return tool.remembered
    if tool.exe is None:
        return None
    try:
        done = run_captured([str(tool.exe), *tool.command[1:]], timeout_s=deadline.timeout(cap=10))
    except OSError:
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.exit_code is not None and text else None


def _remember(cache: dict[str, Any], heard: dict[_Tool, str | None]) -> None:
    """Keep the newly heard version lines for the next run (the newest few entries of the machine)."""
    fresh = {
        t.key: {"tool": t.name, "version": v, "heard": time.time()}
        for t, v in heard.items()
        if t.key is not None and t.remembered is None and v is not None
    }
    if not fresh:
        return
    entries = {k: e for k, e in cache.items() if isinstance(e, dict) and k not in fresh}
    kept = sorted(entries, key=lambda k: _heard(entries[k]), reverse=True)[: TOOL_CACHE_ENTRIES - len(fresh)]
    write_json(TOOL_CACHE, {**{k: entries[k] for k in kept}, **fresh})


def _heard(entry: dict[str, Any]) -> float:
    when = entry.get("heard")
    return float(when) if isinstance(when, int | float) else 0.0


def gpu_facts(deadline: Deadline, exe: str | None = None) -> dict[str, Any]:
    """GPUs as nvidia-smi sees them on this machine; says so plainly when there is no nvidia-smi."""
    exe = exe or shutil.which("nvidia-smi")
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
    cache = read_json(TOOL_CACHE)
    node, npm = _locate(("node", "--version"), cache), _locate(("npm", "--version"), cache)
    gpu_exe = shutil.which("nvidia-smi")  # never remembered: its free memory is news at every run
    # The probes are other programs' start-up time (npm alone takes a quarter of a second): run
    # side by side, they cost the slowest of them instead of the sum; a remembered version costs
    # nothing. Only where one is started does the stage load the later stages' heavy modules
    # meanwhile (warm_up); otherwise they load where they are first used.
    started = [t for t in (node, npm) if t.remembered is None and t.exe is not None]
    probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gemdirect-env")
    try:
        asked = {t: probes.submit(_tool_version, t, deadline) for t in (node, npm)}
        gpu = probes.submit(gpu_facts, deadline, gpu_exe)
        warm = probes.submit(warm_up) if started or gpu_exe else None
        heard = {t: _sliced_result(future) for t, future in asked.items()}
        facts: dict[str, Any] = {
            "python": sys.version.split()[0],
            "python_executable": sys.executable,
            "platform": platform.platform(),
            "packages": packages,
            "disk_free_bytes": disk.free,
            "node": heard[node],
            "npm": heard[npm],
            # the version lines these same executables (path, size, modification time) printed
            # in an earlier run, not asked again
            "tool_versions_remembered": [t.name for t in (node, npm) if t.remembered is not None],
            "gpu": _sliced_result(gpu),
        }
        if warm is not None:
            _sliced_result(warm)  # done within this stage: no import runs beside a later stage's
    finally:
        probes.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: do not wait for a slow tool here
    _remember(cache, heard)
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
