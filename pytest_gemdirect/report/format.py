"""How values read in the report: durations, sizes, first lines, compact JSON and the status marks.

Plain functions on typed values (the view has already coerced the summary), shared by the sections
and the charts so that a duration or a size reads the same everywhere on the page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pytest_gemdirect.report.links import FileLink

STATUS_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "not_reached": "not reached",
    "skipped": "skipped",
    "running": "running",
    "interrupted": "interrupted",
    "deselected": "deselected",
}
# Marks from the fonts every desktop has (DejaVu Sans, Segoe UI Symbol, Apple Symbols), always shown
# beside the status word. The terminal's emoji (summary.SYMBOLS) render as empty boxes in a browser
# on a machine without an emoji font, which is most Linux servers and CI images.
MARKS = {
    "passed": "✔",
    "failed": "✘",
    "not_reached": "‖",
    "skipped": "»",
    "running": "…",
    "interrupted": "■",
    "deselected": "○",
}
UNKNOWN_MARK = "?"

_SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|auth)", re.IGNORECASE)


@dataclass(frozen=True)
class Fact:
    """One row of a key/value table: a label and its text, shown as code or as a link to a file."""

    label: str
    text: str = ""
    code: bool = False
    link: FileLink | None = None


def facts(*rows: Fact) -> list[Fact]:
    """The rows that have something to show (a key/value table never lists empty values)."""
    return [row for row in rows if row.text or row.link is not None]


def mark(status: str) -> str:
    return MARKS.get(status, UNKNOWN_MARK)


def word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def secs(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


def size(value: float | None) -> str:
    """Bytes as GiB from 1 GiB up, else as MiB."""
    if value is None:
        return ""
    if abs(value) >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def short(value: float) -> str:
    """A coordinate or an axis figure: one decimal at most, no trailing zeros."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def first_line(text: str | None, limit: int = 180) -> str:
    if not text or not text.strip():
        return ""
    line = text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def compact(value: Any, limit: int = 400) -> str:
    """Any JSON value on one line (strings as they are), cut at ``limit`` characters."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def secret_safe(name: str, value: Any) -> Any:
    """Belt and braces over the summary's own redaction: a secret-looking setting never shows."""
    if _SECRET_NAME.search(name) and value not in (None, "", "***", [], ()):
        return "***"
    return value


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of a nested value with every secret-looking key's value replaced by ``***``."""
    if depth > 12:
        return value
    if isinstance(value, dict):
        return {k: secret_safe(str(k), redact(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    return value


def setting_value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and not value:
        return "none"
    return compact(value, 300)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
