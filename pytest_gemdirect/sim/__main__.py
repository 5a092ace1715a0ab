"""``python -m pytest_gemdirect.sim``: run the ComfyUI and LLM simulators until interrupted.

The harness launches this as a subprocess (the embedded default). Once both servers listen it
writes ``{"comfyui_url", "llm_url", "pid"}`` to ``--ready-file`` atomically and prints one line
``gemdirect simulator: comfyui <url> llm <url>``. It serves until SIGINT/SIGTERM (Ctrl-C or
Ctrl-Break on Windows). The ``crash`` fault makes this process exit with code 3 mid-generation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pytest_gemdirect.processes import pid_alive
from pytest_gemdirect.rundir import atomic_write_json
from pytest_gemdirect.sim.comfyui import ComfyUISimulator
from pytest_gemdirect.sim.faults import KNOWN_FAULTS, FaultPlan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gemdirect.sim",
        description="Serve the gemdirect ComfyUI simulator and LLM simulator until interrupted.",
        epilog="faults: " + ", ".join(sorted(KNOWN_FAULTS)),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--comfyui-port", type=int, default=0, help="ComfyUI port (0: a free port)")
    parser.add_argument("--llm-port", type=int, default=0, help="LLM port (0: a free port)")
    parser.add_argument(
        "--root", type=Path, default=None, help="folder for input/ and output/ (default: a temp dir)"
    )
    parser.add_argument("--step-seconds", type=float, default=0.01, help="seconds per sampler step")
    parser.add_argument(
        "--history-late-seconds", type=float, default=3.0, help="delay of the history-late fault"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the LLM simulator")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="NAME or NAME@scene-NNN (repeatable)"
    )
    parser.add_argument(
        "--models-from",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a workflow (or app settings) JSON file whose model names the server has (repeatable)",
    )
    parser.add_argument("--ready-file", type=Path, default=None, help="write the URLs here (JSON) when ready")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process is gone (no orphan after a killed run)",
    )
    return parser


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON so a reader never sees a half-written file (temp file, then rename)."""
    atomic_write_json(Path(path), info)


def _start_llm(host: str, port: int, plan: FaultPlan, seed: int) -> Any | None:
    try:
        from pytest_gemdirect.sim.llm import LLMSimulator
    except ImportError as exc:
        print(
            f"gemdirect simulator: note: LLM simulator not available ({exc}); serving ComfyUI only",
            file=sys.stderr,
        )
        return None
    llm = LLMSimulator(host, port, faults=plan, seed=seed)
    llm.start()
    return llm


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = FaultPlan.parse(args.fault)
    except ValueError as exc:
        parser.error(str(exc))

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # SIGINT too: a parent may have started us with SIGINT ignored (background job), yet means it.
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):  # SIGBREAK: Ctrl-Break / CTRL_BREAK_EVENT on Windows
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, on_signal)

    try:
        comfy = ComfyUISimulator(
            args.host,
            args.comfyui_port,
            root_dir=args.root,
            step_seconds=args.step_seconds,
            faults=plan,
            history_late_seconds=args.history_late_seconds,
            models_from=args.models_from,
            crash_exits_process=True,
        )
    except ValueError as exc:
        parser.error(str(exc))
    llm = None
    ready_written = False
    try:
        comfy.start()
        llm = _start_llm(args.host, args.llm_port, plan, args.seed)
        llm_url = llm.url if llm is not None else None
        info = {"comfyui_url": comfy.url, "llm_url": llm_url, "pid": os.getpid()}
        if plan:
            info["faults"] = plan.specs()
        if args.ready_file is not None:
            write_ready_file(args.ready_file, info)
            ready_written = True
        print(f"gemdirect simulator: comfyui {comfy.url} llm {llm_url or '-'}", flush=True)
        # Wake up now and then so Ctrl-C is delivered promptly on Windows too.
        while not stop.wait(0.5):
            if args.parent_pid is not None and not pid_alive(args.parent_pid):
                print("gemdirect simulator: the harness is gone; exiting", file=sys.stderr, flush=True)
                break
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"gemdirect simulator: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.stop()
        comfy.stop()
        print(f"gemdirect simulator: requests {json.dumps(comfy.state.requests.as_json())}", flush=True)
        if ready_written and args.ready_file is not None:
            with contextlib.suppress(OSError, ValueError):
                current = json.loads(Path(args.ready_file).read_text(encoding="utf-8"))
                if current.get("pid") == os.getpid():
                    Path(args.ready_file).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
