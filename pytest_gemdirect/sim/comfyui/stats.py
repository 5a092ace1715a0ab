"""Instrumentation for benchmarks: requests the simulator receives, and when each execution runs.

Not part of ComfyUI's protocol. The counts answer ``GET /gemdirect/stats``; every execution's start
and end is a line in the simulator's log with a monotonic timestamp (``time.monotonic()``, one
clock for the whole machine on Linux and Windows), so the idle gap between two executions and the
request rate during one can be read from the log alone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

STATS_ROUTE = "/gemdirect/stats"


@dataclass
class RequestStats:
    """Requests received so far, per route (method and route pattern, e.g. ``GET /history/{prompt_id}``)."""

    per_route: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def count(self, route: str) -> None:
        self.per_route[route] += 1
        self.total += 1

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "per_route": dict(sorted(self.per_route.items()))}


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else request.path
    return f"{request.method} {pattern}"


def counting_middleware(stats: RequestStats) -> Any:
    """An aiohttp middleware counting every request but the stats route's own."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != STATS_ROUTE:
            stats.count(_route_of(request))
        return await handler(request)

    return middleware


def stats_handler(stats: RequestStats) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    return handler


def said_execution(kind: str, prompt_id: str, stats: RequestStats) -> None:
    """``gemdirect simulator: execution start|end <prompt_id> monotonic=<s> requests=<total>``."""
    print(
        f"gemdirect simulator: execution {kind} {prompt_id} monotonic={time.monotonic():.6f}"
        f" requests={stats.total}",
        flush=True,
    )
