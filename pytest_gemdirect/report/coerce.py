"""The few rules that turn a raw JSON value into a typed one, for the view (the report's boundary).

Only ``view`` and ``evidence`` use these: past them, nothing in the report checks a type again.
"""

from __future__ import annotations

import math
from typing import Any


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list (anything else in it is dropped)."""
    return [item for item in as_list(value) if isinstance(item, dict)]


def as_num(value: Any) -> float | None:
    """A finite number (``True`` is not a number here), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_text(value: Any) -> str:
    """What a value reads as on the page: ``""`` for a missing one."""
    return "" if value is None else str(value)


def as_path(value: Any) -> str | None:
    """A path as the summary names it: a non-empty string, or nothing."""
    return value if isinstance(value, str) and value else None
