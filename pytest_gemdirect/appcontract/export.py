"""Writing the app's contract beside the summary, and publishing it to the app.

``export`` is called by the summary writer each time it writes, so the contract is as current
as run-summary.json and survives an interrupt or a crash like it. Each file is replaced
atomically, and only when its content changed (the summary is rewritten many times a run).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pytest_gemdirect.appcontract.lines import app_lines
from pytest_gemdirect.appcontract.mapping import (
    APP_SUITES,
    HELPER_FILES,
    app_suite,
    comfyui_status,
    mapping_preflight,
    metadata,
    vitest_results,
)
from pytest_gemdirect.rundir import atomic_write_bytes, atomic_write_text

METADATA_FILE = "artifact-metadata.json"
VITEST_FILE = "vitest-results.json"
LATEST_RUN = Path("public") / "artifacts" / "latest-run.json"
APP_SECTION_TITLE = "## gemDirect app contract"

_lock = threading.Lock()
_written: dict[str, str] = {}  # path -> (compact JSON of) the value last written there by this process


def enabled(data: dict[str, Any]) -> bool:
    """``--app-contract`` (on unless switched off)."""
    return bool((data.get("settings") or {}).get("app_contract", True))


def _write(path: Path, value: Any, render: Callable[[Any], str]) -> None:
    """``render(value)`` to ``path`` unless ``value`` is what this process last wrote there.

    The comparison is on compact JSON (the C encoder: fast); the indented text is made only when
    the value changed: most summary writes change nothing the app's files show.
    """
    key = json.dumps(value, ensure_ascii=False, default=str)
    with _lock:
        if _written.get(str(path)) == key and path.is_file():
            return
        atomic_write_text(path, render(value))
        _written[str(path)] = key


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def _helper_log(title: str, facts: dict[str, Any]) -> str:
    """The helper's facts as ``Key: value`` lines (the JSON holds them too)."""
    from pytest_gemdirect.text import visible

    lines = [title]
    for key, value in facts.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        lines.append(f"{key}: {visible(str(shown), limit=2000, one_line=True)}")
    return "\n".join(lines) + "\n"


def export(root: Path, data: dict[str, Any]) -> str:
    """Write artifact-metadata.json, vitest-results.json (when suites ran) and the helper summaries;
    return the app's section of run-summary.txt (empty when the export is switched off)."""
    if not enabled(data):
        return ""
    root = Path(root)
    vitest = vitest_results(data, root)
    meta = metadata(data, root, vitest=vitest)
    helpers = {
        "MappingPreflight": (
            "workflow preflight (nodes and models against /object_info)",
            mapping_preflight(data),
        ),
        "ComfyUIStatus": ("ComfyUI status (/system_stats of the servers)", comfyui_status(data)),
    }
    for key, (title, facts) in helpers.items():
        stem = root / "test-results" / HELPER_FILES[key]
        _write(stem.with_suffix(".json"), facts, _json)
        _write(stem.with_suffix(".log"), facts, partial(_helper_log, title))
    if vitest is not None:
        _write(root / VITEST_FILE, vitest, _json)
    _write(root / METADATA_FILE, meta, _json)
    heading = f"{APP_SECTION_TITLE} ({METADATA_FILE}; [HH:mm:ss] is the run's local time)"
    return "\n".join(["", heading, *app_lines(data, meta)]) + "\n"


def warnings_for(data: dict[str, Any]) -> list[str]:
    """Warnings for the harness's own summary: the app's suites that did not run in this run."""
    if not enabled(data):
        return []
    absent = [name for name, _key, _prefix in APP_SUITES if app_suite(data, name) is None]
    if not absent:
        return []
    return [
        f"app contract: the app's suite(s) {', '.join(absent)} did not run (no --suite of that name;"
        " --suite gemdirect runs all three): run-summary.txt records exitCode=-1 for them"
    ]


def publish_latest(root: Path, app_dir: Path) -> Path:
    """Copy the run's artifact-metadata.json to ``APP_DIR/public/artifacts/latest-run.json``.

    Atomically: a temp file in the same folder, then renamed over (the app never reads half a
    file). Raises OSError when the run has no metadata or the file cannot be written.
    """
    data = (Path(root) / METADATA_FILE).read_bytes()
    target = Path(app_dir) / LATEST_RUN
    atomic_write_bytes(target, data, sync=True)
    return target
