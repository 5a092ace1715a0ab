"""Links from the report to files of the run, and the rule that keeps the report inside the run.

The report is read from wherever it was written (the run directory, or pytest-html's folder), so a
link is relative to that folder, percent-encoded (a server names the frames), and never a URL a
summary could smuggle in (``javascript:`` becomes a harmless relative path).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# A scene id that may name a folder of the run (an unexpected one never makes the report write or read).
SCENE_ID = re.compile(r"^scene-\d{3}$")


def inside(root: Path, rel: str | None) -> Path | None:
    """``root/rel`` when it stays inside ``root`` (a summary never makes the report read elsewhere)."""
    if not rel:
        return None
    try:
        base = root.resolve()
        path = (base / rel).resolve()
        path.relative_to(base)
    except (ValueError, OSError):
        return None
    return path


@dataclass(frozen=True)
class FileLink:
    """A file of the run as the report shows it: its text, and where the link goes (if anywhere)."""

    text: str
    href: str | None


class Links:
    """Paths of the run as shown (relative to the run directory) and as linked (relative to the HTML)."""

    def __init__(self, run_root: Path, link_base: Path) -> None:
        self.run_root = run_root
        self.link_base = link_base
        self._resolved_root = run_root.resolve()  # asked for every link: resolved once

    def shown(self, path: str | None) -> str | None:
        """A run-relative or absolute path as it is shown (relative to the run directory when inside)."""
        if not path:
            return None
        p = Path(path)
        if p.is_absolute():
            try:
                return p.resolve().relative_to(self._resolved_root).as_posix()
            except (ValueError, OSError):
                return str(p)
        return p.as_posix()

    def href(self, path: str | None) -> str | None:
        shown = self.shown(path)
        if shown is None:
            return None
        p = Path(shown)
        if p.is_absolute():
            try:
                return p.as_uri()
            except ValueError:
                return None
        target = self.run_root / p
        try:
            relative = os.path.relpath(target, self.link_base)
        except ValueError:  # another drive on Windows
            return target.resolve().as_uri()
        return quote(Path(relative).as_posix(), safe="/")

    def exists(self, path: str | None) -> bool | None:
        shown = self.shown(path)
        if shown is None:
            return None
        p = Path(shown)
        return (p if p.is_absolute() else self.run_root / p).exists()

    def file(self, path: str | None, text: str | None = None) -> FileLink | None:
        """The link to a file of the run (``None`` when there is no path to show)."""
        shown = self.shown(path)
        if shown is None:
            return None
        return FileLink(text if text is not None else shown, self.href(path))
