"""Hostile HTTP answers for the faults view-trickle, history-huge and history-garbage.

Each is what a slow proxy, a bloated custom node or a half-broken server does to a client: the
answers stay well-formed HTTP, only their body is slow, huge or not JSON. None of them blocks the
event loop: the simulator keeps answering other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pytest_gemdirect.sim.comfyui.constants import SCENE_RE

TRICKLE_BYTES_PER_SECOND = 1024
TRICKLE_CHUNK = 256  # 4 writes a second
HUGE_TOTAL_BYTES = 50 * 1024 * 1024
HUGE_FIELD_BYTES = 1024 * 1024
GARBAGE_ANSWERS = 3
GARBAGE_BODIES = (
    "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n",
    '{"status": {"status_str": "succ',
    "",
)


def scene_in(*texts: str) -> str | None:
    """The ``scene-NNN`` named in a file's subfolder or name (how /view answers are targeted)."""
    for text in texts:
        match = SCENE_RE.search(text)
        if match:
            return match.group(0)
    return None


async def trickle_file(request: web.Request, path: Path, headers: Mapping[str, str]) -> web.StreamResponse:
    """view-trickle: the file at about 1 KB/s, in small writes with a sleep between them."""
    size = path.stat().st_size
    response = web.StreamResponse(headers=dict(headers))
    response.content_length = size
    await response.prepare(request)
    with path.open("rb") as fh:
        while True:
            chunk = await asyncio.to_thread(fh.read, TRICKLE_CHUNK)
            if not chunk:
                break
            await response.write(chunk)
            await asyncio.sleep(len(chunk) / TRICKLE_BYTES_PER_SECOND)
    await response.write_eof()
    return response


@functools.lru_cache(maxsize=1)
def junk_fields() -> dict[str, str]:
    """history-huge: 50 fields of 1 MB each (built once, shared by every answer)."""
    line = "gemdirect-sim junk field (history-huge) " * 32
    text = (line * (HUGE_FIELD_BYTES // len(line) + 1))[:HUGE_FIELD_BYTES]
    return {f"x_gemdirect_junk_{n:02}": text for n in range(HUGE_TOTAL_BYTES // HUGE_FIELD_BYTES)}


def with_junk(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, **junk_fields()}


async def json_answer(value: Any) -> web.Response:
    """A JSON answer encoded in a worker thread: a 50 MB dumps must not stall the event loop."""
    body = await asyncio.to_thread(lambda: json.dumps(value).encode())
    return web.Response(body=body, content_type="application/json")


def garbage(count: int) -> web.Response:
    """history-garbage: HTTP 200 that says JSON and is not."""
    return web.Response(
        text=GARBAGE_BODIES[count % len(GARBAGE_BODIES)], content_type="application/json", charset="utf-8"
    )
