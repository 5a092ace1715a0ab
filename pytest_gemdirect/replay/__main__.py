"""``python -m pytest_gemdirect.replay --trace DIR``: serve a recorded run in place of its servers.

The harness starts this for ``--replay`` (as it starts the simulators). It listens on 127.0.0.1
(free ports): one ComfyUI port per ComfyUI server of the recording and one LLM port, writes
``{"comfyui_urls", "llm_url", "pid"}`` to ``--ready-file`` and serves until SIGINT/SIGTERM or
until ``--parent-pid`` is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from pytest_gemdirect.processes import pid_alive
from pytest_gemdirect.replay.server import ReplayState, comfyui_app, llm_app
from pytest_gemdirect.replay.trace import TraceError, load_trace, setting_differences
from pytest_gemdirect.rundir import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_gemdirect.replay", description=__doc__)
    parser.add_argument("--trace", type=Path, required=True, help="a run directory or its trace folder")
    parser.add_argument("--speed", type=float, default=1.0, help="recorded pace multiplier (0: at once)")
    parser.add_argument("--run-id", default="", help="the new run's id (its save prefix and upload names)")
    parser.add_argument("--settings", type=Path, default=None, help="the new run's settings (JSON)")
    parser.add_argument("--ready-file", type=Path, default=None, help="write the URLs here (JSON) when ready")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    return parser


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve(
    state: ReplayState, servers: int, ready_file: Path | None, stop: threading.Event, parent: int | None
) -> None:
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for app in [comfyui_app(state) for _ in range(servers)] + [llm_app(state)]:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        sock = _listening_socket()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
    info: dict[str, Any] = {"comfyui_urls": urls[:-1], "llm_url": urls[-1], "pid": os.getpid()}
    if ready_file is not None:
        atomic_write_json(ready_file, info)
    print(
        f"gemdirect replay: {state.trace.folder.name} at speed {state.speed:g}: {json.dumps(info)}",
        flush=True,
    )
    for line in state.differences:
        print(f"gemdirect replay: setting differs from the recording: {line}", flush=True)
    try:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if parent is not None and not pid_alive(parent):
                print("gemdirect replay: the harness is gone; exiting", file=sys.stderr, flush=True)
                break
    finally:
        for runner in runners:
            await runner.cleanup()
        print(
            f"gemdirect replay: {len(state.replayed)} prompt(s) replayed,"
            f" {len(state.divergences)} divergence(s)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trace = load_trace(args.trace)
    except TraceError as exc:
        print(f"gemdirect replay: {exc}", file=sys.stderr, flush=True)
        return 2
    now: dict[str, Any] = {}
    if args.settings is not None:
        now = json.loads(args.settings.read_text(encoding="utf-8"))
    differences = setting_differences(trace.header.get("settings") or {}, now)
    state = ReplayState(trace, speed=args.speed, run_id=args.run_id, differences=differences)
    servers = max(1, len({r.get("server") for r in trace.of_kind("http") if r.get("service") == "comfyui"}))
    stop = threading.Event()
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, lambda signum, frame: stop.set())
    try:
        asyncio.run(_serve(state, servers, args.ready_file, stop, args.parent_pid))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
