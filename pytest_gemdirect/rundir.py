"""The run directory (design §5): its paths, atomic JSON writes and append-only event logs.

Files are replaced whole (``atomic_write_bytes``); on Windows, where a file another program
holds (OneDrive, Defender) cannot be replaced for a moment, the rename is retried for about ten
seconds, and report rewrites can ask for a best effort that never raises.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# How long a held file is waited for before a write gives up (OneDrive and Defender hold a file
# for a second or more; 1 s was not enough), and the pauses between tries.
REPLACE_RETRY_S = 10.0
_FIRST_PAUSE_S = 0.05
_MAX_PAUSE_S = 1.0

_append_lock = threading.Lock()
_locks_guard = threading.Lock()
_path_writes: dict[str, _PathWrites] = {}


def new_run_id(now: datetime | None = None) -> str:
    """Timestamp id of a run, as the folder name ``logs/<YYYYMMDD-HHMMSS>``."""
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def atomic_write_bytes(
    path: Path,
    data: bytes,
    *,
    sync: bool = False,
    best_effort: bool = False,
    retry_s: float = REPLACE_RETRY_S,
    replace: Callable[[Path, Path], None] = os.replace,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Write a temp file beside ``path``, then rename it over: no reader or crash sees half a file.

    The temp file is made with mode 0666 less the umask, like any file the user writes (not
    tempfile's 0600): artifacts are for everyone who may read the run folder. ``sync`` flushes
    it to disk first, for files that must survive a power cut (the summary).

    On Windows the rename fails while another program holds the file (OneDrive syncing it,
    Defender scanning it, an editor): it is retried with a growing pause for ``retry_s`` seconds.
    When it still fails, the PermissionError is raised; with ``best_effort`` that (or any other
    OSError, a full disk) leaves the old file as it was and returns False instead (for files
    rewritten later anyway: report.html; never the summary). True when written.

    Writes to one path from this process happen one at a time, and a write that was waiting
    while a later call wrote is dropped (True: the later content stands), so a write held up by a
    held file never lands after a later one: the last call wins (the summary on disk is the last
    one asked for). ``replace`` and ``sleep`` are for tests.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    state = _path_state(path)
    with _locks_guard:
        state.calls += 1
        call = state.calls
    with state.lock:
        if call < state.written:
            return True  # a later call has written already: its content is the one to keep
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())
            replace_with_retry(tmp, path, retry_s=retry_s, replace=replace, sleep=sleep)
        except OSError:
            _discard(tmp)
            if best_effort:
                return False
            raise
        except BaseException:
            _discard(tmp)
            raise
        state.written = call
    return True


def atomic_write_text(path: Path, text: str, *, best_effort: bool = False, sync: bool = True) -> bool:
    """``text`` as UTF-8 (line ends as given: no CRLF on Windows), atomically and (``sync``) synced.

    ``sync=False`` for files made again from the summary at its next write (its text form, the
    app's files): a sync costs milliseconds on the run's critical path, at every summary change."""
    return atomic_write_bytes(path, text.encode("utf-8"), sync=sync, best_effort=best_effort)


def replace_with_retry(
    src: Path,
    dst: Path,
    *,
    retry_s: float = REPLACE_RETRY_S,
    replace: Callable[[Path, Path], None] = os.replace,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """``replace(src, dst)``, retried on PermissionError with pauses from 50 ms doubling to 1 s
    until ``retry_s`` seconds of pauses have passed; then the last PermissionError is raised."""
    waited = 0.0
    pause = _FIRST_PAUSE_S
    while True:
        try:
            replace(src, dst)
            return
        except PermissionError:
            if waited >= retry_s:
                raise
        step = min(pause, retry_s - waited)
        sleep(step)
        waited += step
        pause = min(pause * 2, _MAX_PAUSE_S)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # held too (a scanner): the original error is the one to report


@dataclass
class _PathWrites:
    """The writes to one path: one at a time (``lock``), numbered in call order."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    written: int = 0  # the number of the call whose content is on disk


def _path_state(path: Path) -> _PathWrites:
    key = os.path.normcase(os.path.abspath(path))
    with _locks_guard:
        return _path_writes.setdefault(key, _PathWrites())


def atomic_write_json(path: Path, data: Any, *, best_effort: bool = False) -> bool:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return atomic_write_text(path, text, best_effort=best_effort)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one event line and flush it, so the evidence survives a killed run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with _append_lock, open(path, "a", encoding="utf-8", newline="\n") as handle:
        handle.write(line)
        handle.flush()


MIN_FREE_BYTES = 64 * 2**20
"""Free space a run needs where its directory goes: frames, clips and logs of a few scenes."""
PROBE_BYTES = 2**20
"""What the start-up check writes (and removes) to prove the folder takes a file."""


class RunPlaceError(Exception):
    """The run directory cannot go where the settings put it; the message names the path and why."""


def _write_probe(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def check_run_place(
    target: Path,
    *,
    is_run_dir: bool,
    min_free: int = MIN_FREE_BYTES,
    write: Callable[[Path, bytes], None] = _write_probe,
) -> None:
    """The run directory ``target`` (or, ``is_run_dir`` False, the folder that holds run directories)
    can be made and written, before any stage runs: an error names the path and the reason.

    Nothing is left behind: the folders are not made here, and the probe file written in the
    nearest folder that exists is removed. ``write`` is for tests (a full disk, a read-only one).
    """
    path = Path(target).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise RunPlaceError(
            f"{path} is a file, not a folder" + ("" if is_run_dir else " to hold run directories")
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunPlaceError(f"{path} cannot be created: {existing} is a file, not a folder")
    probe = existing / f".gemdirect-probe-{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        write(probe, b"\0" * PROBE_BYTES)
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or type(exc).__name__
        made = "written in" if existing == path else f"created ({existing} cannot be written)"
        raise RunPlaceError(f"{path} cannot be {made}: {why}") from None
    finally:
        _discard(probe)
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if free < min_free:
        raise RunPlaceError(
            f"{path} is on a disk with {free / 2**20:.0f} MB free; a run needs at least"
            f" {min_free / 2**20:.0f} MB (frames, clips, logs)"
        )


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
