"""Read the JSON Schemas shipped in the package (``pytest_gemdirect.schemas``, i.e. ``schemas/``)."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

SCHEMA_PACKAGE = "pytest_gemdirect.schemas"


@functools.cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files(SCHEMA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"schema {name!r} is not a JSON object")
    return data


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` (e.g. ``"story.schema.json"``) as a fresh dict the caller may change.

    Raises FileNotFoundError naming the schema when the package does not ship it.
    """
    if not name or "/" in name or "\\" in name or name in (".", "..") or not name.endswith(".json"):
        raise ValueError(f"not a schema file name: {name!r} (expected e.g. 'story.schema.json')")
    try:
        return copy.deepcopy(_load(name))
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise FileNotFoundError(f"schema {name!r} is not shipped in {SCHEMA_PACKAGE}: {exc}") from None
