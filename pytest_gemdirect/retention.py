"""``--keep-runs``: the oldest run directories the harness made under ``--logs-dir`` are pruned.

Only folders that look like the harness's own are ever removed: a name of the harness's run-id
shape (``20261202-051347`` or ``20261202-051347-1``), a real folder (not a link) that holds a
``run-summary.json``. Anything else under the logs folder is never touched, nor the current run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

RUN_ID = re.compile(r"\d{8}-\d{6}(-\d{1,2})?")


def harness_runs(logs_dir: Path) -> list[Path]:
    """The run directories the harness made under ``logs_dir``, oldest first."""
    try:
        entries = list(logs_dir.iterdir())
    except OSError:
        return []
    runs = [
        entry
        for entry in entries
        if RUN_ID.fullmatch(entry.name)
        and not entry.is_symlink()
        and entry.is_dir()
        and (entry / "run-summary.json").is_file()
    ]
    return sorted(runs, key=_order)


def _order(path: Path) -> tuple[str, int]:
    suffix = path.name[16:]
    return (path.name[:15], int(suffix or 0))


def prune_runs(logs_dir: Path, keep: int, current: Path) -> list[Path]:
    """Remove the oldest of the harness's runs so that ``keep`` remain with ``current`` among them.

    ``keep`` 0 keeps every run. Returns what was removed; a folder that cannot be removed (held
    open on Windows) is left for the next run, silently: pruning never fails a run.
    """
    if keep <= 0:
        return []
    current = current.resolve()
    older = [run for run in harness_runs(logs_dir) if run.resolve() != current]
    excess = len(older) - (keep - 1)
    removed: list[Path] = []
    for run in older[: max(excess, 0)]:
        try:
            shutil.rmtree(run)
        except OSError:
            continue
        removed.append(run)
    return removed
