"""The run directory (design §5): its paths, atomic JSON writes and append-only event logs."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

_append_lock = threading.Lock()


def new_run_id(now: datetime | None = None) -> str:
    """Timestamp id of a run, as the folder name ``logs/<YYYYMMDD-HHMMSS>``."""
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def atomic_write_bytes(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Write a temp file beside ``path``, then rename it over: no reader or crash sees half a file.

    The temp file is made with mode 0666 less the umask, like any file the user writes (not
    tempfile's 0600): artifacts are for everyone who may read the run folder. ``sync`` flushes
    it to disk first, for files that must survive a power cut (the summary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8 (line ends as given: no CRLF on Windows), atomically and synced."""
    atomic_write_bytes(path, text.encode("utf-8"), sync=True)


def _replace(tmp: Path, path: Path) -> None:
    # On Windows a reader holding the target open makes os.replace fail for a moment; retry briefly.
    for attempt in range(20):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if attempt == 19:
                raise
            time.sleep(0.05)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one event line and flush it, so the evidence survives a killed run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with _append_lock, open(path, "a", encoding="utf-8", newline="\n") as handle:
        handle.write(line)
        handle.flush()


class RunDirectory:
    """Where every artifact of one run lies."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = root
        self.run_id = run_id

    @classmethod
    def create(cls, *, logs_dir: Path, run_dir: Path | None) -> RunDirectory:
        """``run_dir`` when given, else a fresh ``logs_dir/<timestamp>`` (suffixed if taken)."""
        if run_dir is not None:
            root = Path(run_dir).resolve()
            root.mkdir(parents=True, exist_ok=True)
            return cls(root, root.name)
        base_id = new_run_id()
        logs = Path(logs_dir).resolve()
        for n in range(100):
            run_id = base_id if n == 0 else f"{base_id}-{n}"
            try:
                (logs / run_id).mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            return cls(logs / run_id, run_id)
        raise RuntimeError(f"could not make a new run directory under {logs}")

    @property
    def summary_json(self) -> Path:
        return self.root / "run-summary.json"

    @property
    def summary_txt(self) -> Path:
        return self.root / "run-summary.txt"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def story_dir(self) -> Path:
        return self.root / "story"

    def scene_dir(self, scene_id: str) -> Path:
        return self.root / scene_id

    def frames_dir(self, scene_id: str) -> Path:
        return self.scene_dir(scene_id) / "generated-frames"

    def events_path(self, scene_id: str) -> Path:
        return self.scene_dir(scene_id) / "events.jsonl"

    def relative(self, path: Path | str | None) -> str | None:
        """A path as the summary records it: relative to the run directory when inside it."""
        if path is None:
            return None
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)
