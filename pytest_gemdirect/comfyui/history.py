"""What of a ``/history/<id>`` entry is written to the run directory (``scene-NNN/history.json``).

A history entry comes from the server and may be as large as the client's size cap allows.
The harness uses ``outputs``, ``status`` and ``meta``, and the prompt's number, id, client id
and output nodes; those are kept as they are. Anything else (the queued graph, fields a newer
ComfyUI or a custom node adds) is kept when it is small and otherwise replaced by a bounded
excerpt with a note of its original size, so a run directory never grows with the server's whims.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pytest_gemdirect.net import excerpt

KEPT = ("outputs", "status", "meta")
MAX_FIELD_BYTES = 64 * 1024  # an unknown field up to this size (as JSON) is kept whole
EXCERPT_CHARS = 2000


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))


def bounded(value: Any, *, max_bytes: int = MAX_FIELD_BYTES, excerpt_chars: int = EXCERPT_CHARS) -> Any:
    """``value`` itself when its JSON is at most ``max_bytes``; otherwise an excerpt and its size."""
    size = _json_size(value)
    if size <= max_bytes:
        return value
    text = json.dumps(value, ensure_ascii=False, default=str)
    return {
        "trimmed": True,
        "original_bytes": size,
        "excerpt": excerpt(text, excerpt_chars),
        "note": f"{size} bytes as JSON, more than the {max_bytes} kept; the excerpt is its start",
    }


def _trim_prompt(item: Any, max_bytes: int) -> Any:
    """The queue item ``[number, prompt_id, graph, extra_data, outputs_to_execute, …]``: number, id,
    client id and outputs kept, the graph and any other extra bounded."""
    if not isinstance(item, list):
        return bounded(item, max_bytes=max_bytes)
    trimmed = list(item)
    if len(trimmed) > 2:
        trimmed[2] = bounded(trimmed[2], max_bytes=max_bytes)
    if len(trimmed) > 3 and isinstance(trimmed[3], Mapping):
        extra = trimmed[3]
        trimmed[3] = {
            k: (v if k == "client_id" else bounded(v, max_bytes=max_bytes)) for k, v in extra.items()
        }
    for index in range(5, len(trimmed)):
        trimmed[index] = bounded(trimmed[index], max_bytes=max_bytes)
    return trimmed


def trim_history(entry: Mapping[str, Any], *, max_field_bytes: int = MAX_FIELD_BYTES) -> dict[str, Any]:
    """The history entry as it should be written to ``history.json`` (see the module docstring)."""
    trimmed: dict[str, Any] = {}
    for key, value in entry.items():
        if key in KEPT:
            trimmed[key] = value
        elif key == "prompt":
            trimmed[key] = _trim_prompt(value, max_field_bytes)
        else:
            trimmed[key] = bounded(value, max_bytes=max_field_bytes)
    return trimmed


__all__ = ["KEPT", "MAX_FIELD_BYTES", "bounded", "trim_history"]
