"""The user's cache folder for pytest-gemdirect: what a run may keep for the next one on this machine.

Only what can be checked against its source is kept here (the report's compiled templates, checked
by Jinja2 against the template's source; a tool's ``--version`` line, checked against the
executable's path, size and modification time). Everything in it may be deleted at any time: a
run then only pays again for what it finds missing. Nothing here imports more than the standard
library: the plugin loads it in every pytest run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def cache_folder() -> Path:
    """The user's cache folder for pytest-gemdirect (``GEMDIRECT_CACHE_DIR`` overrides it)."""
    if os.environ.get("GEMDIRECT_CACHE_DIR"):
        return Path(os.environ["GEMDIRECT_CACHE_DIR"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "pytest-gemdirect" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pytest-gemdirect"


def read_json(name: str) -> dict[str, Any]:
    """A cache file's JSON object; an empty one when it is missing, unreadable or not an object."""
    try:
        data = json.loads((cache_folder() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(name: str, data: dict[str, Any]) -> bool:
    """Replace a cache file at once (a reader sees the old or the new one, never half of one).

    False where the folder cannot be made or written: the cache is only a saving, never a failure.
    Two processes writing at once leave one of the two files whole (the last replace wins).
    """
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(temp, folder / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True
