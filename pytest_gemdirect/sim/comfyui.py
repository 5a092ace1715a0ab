"""An embedded ComfyUI simulator that speaks the real 0.3.64 HTTP + WebSocket protocol.

It validates prompts against ``/object_info`` like the real server, runs them with a tiny
interpreter per node class on real images (Pillow), writes real output files, and sends the
WebSocket messages in the order the recorded real server does (see
``shared/reference/comfyui``). Named faults (``pytest_gemdirect.sim.faults``) reproduce the
failure modes the harness has to survive. Nothing here imports pytest.

Faults (per scene: the ``scene-NNN`` in the save node's filename_prefix, or for every prompt):

- ``history-never``: ``executed`` for the save node, then nothing more for that prompt; it leaves
  ``/queue`` and ``/history/<id>`` stays ``{}``; the worker goes on with the next prompt.
- ``history-late``: the history entry is stored ``history_late_seconds`` after
  ``execution_success`` / ``executing{node:null}`` were sent.
- ``ws-drop``: the prompt's client sockets are cut half-way through the sampler steps (or when
  the save node starts, in graphs without a sampler); the job completes normally.
- ``ws-silent``: sockets are accepted and never spoken to (per scene: the prompt's client is
  silenced from queueing until the prompt is done); the job completes normally.
- ``stall``: progress stops at ``steps-1`` of ``steps`` (or the save node never ends) until
  ``/interrupt`` ends it with ``execution_interrupted``.
- ``execution-error`` / ``flaky`` (first attempt of the scene only): ``execution_error`` from the
  sampler half-way through its steps (the save node in graphs without a sampler).
- ``view-404``: history lists output files that are never written, so ``/view`` answers 404.
- ``crash``: half-way through the sampler the process exits with code 3 (``crash_exits_process``,
  the ``python -m pytest_gemdirect.sim`` runner) or, in-thread, the server stops abruptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import io
import json
import logging
import mimetypes
import os
import random
import re
import shutil
import string
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.server import ServerThread, track_websocket

log = logging.getLogger("pytest_gemdirect.sim.comfyui")
mimetypes.add_type("image/webp", ".webp")  # older platforms' tables lack it

COMFYUI_VERSION = "0.3.64"
GIB = 1024**3
VRAM_TOTAL = 24 * GIB
VRAM_IDLE_FREE = VRAM_TOTAL - 640 * 1024**2  # the desktop and the CUDA context hold a little
VRAM_JOB = 8 * GIB  # what an SVD run holds while it executes
DEVICE_NAME = "cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync"
DEFAULT_CHECKPOINTS: tuple[str, ...] = ("svd_xt.safetensors", "v1-5-pruned-emaonly-fp16.safetensors")
MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
MAXIMUM_HISTORY_SIZE = 10000
SCENE_RE = re.compile(r"scene-\d{3}")
SAMPLER_CLASSES = ("KSampler",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PNG_COMPRESS_LEVEL = 1  # real SaveImage uses 4; 1 keeps 25 frames of 1024x576 well under a second

STATE_KEY: web.AppKey[ComfyUIState] = web.AppKey("gemdirect_comfyui_state")


# ---------------------------------------------------------------------------------------- helpers
def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _load_base_object_info() -> dict[str, Any]:
    text = resources.files("pytest_gemdirect.sim").joinpath("object_info.json").read_text(encoding="utf-8")
    return json.loads(text)


def scene_of(prompt: dict[str, Any]) -> str | None:
    """The scene a prompt belongs to: ``scene-NNN`` in a save node's filename_prefix (else any input)."""
    nodes = [n for n in prompt.values() if isinstance(n, dict)]
    for node in nodes:
        prefix = (node.get("inputs") or {}).get("filename_prefix")
        if isinstance(prefix, str):
            match = SCENE_RE.search(prefix)
            if match:
                return match.group(0)
    for node in nodes:
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, str):
                match = SCENE_RE.search(value)
                if match:
                    return match.group(0)
    return None


def _full_type_name(exc_type: type) -> str:
    module = exc_type.__module__
    if module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def _validate_node_input(received_type: Any, input_type: Any) -> bool:
    if not received_type != input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in wanted:
        return True
    return bool(received & wanted)


class _Token:
    """A stand-in for a torch object (model, VAE, conditioning) that prints like one."""

    def __init__(self, kind: str, type_name: str, **info: Any) -> None:
        self.kind = kind
        self.type_name = type_name
        self.info = info

    def __str__(self) -> str:
        return f"<{self.type_name} object at 0x{id(self):x}>"

    __repr__ = __str__


@dataclass
class _Latent:
    init_image: Image.Image | None
    width: int
    height: int
    frames: int
    seed: int = 0
    sampled: bool = False
    text: str | None = None  # the positive prompt of a text-to-image graph

    def __str__(self) -> str:
        return f"{{'samples': tensor of shape [{self.frames}, 4, {self.height // 8}, {self.width // 8}]}}"


class NodeFailure(Exception):
    """A node raised at run time; becomes ``execution_error``."""

    def __init__(self, message: str, exception_type: str = "Exception", tb: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.tb = tb


class Interrupted(Exception):
    """The running prompt was interrupted; becomes ``execution_interrupted``."""


class _Abandon(Exception):
    """history-never: the prompt is dropped without completion messages or history."""


class _Crash(Exception):
    """crash: the simulated server went away mid-generation."""


@dataclass
class _CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass(eq=False)
class _Conn:
    sid: str
    ws: web.WebSocketResponse
    transport: Any
    flags: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- state
class ComfyUIState:
    """Everything one simulated ComfyUI server holds: folders, queue, history, sockets, cache."""

    def __init__(
        self,
        root_dir: Path | str,
        *,
        step_seconds: float = 0.01,
        faults: FaultPlan | None = None,
        history_late_seconds: float = 3.0,
        checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
        crash_exits_process: bool = False,
    ) -> None:
        self.root_dir = Path(os.path.abspath(root_dir))
        self.input_dir = self.root_dir / "input"
        self.output_dir = self.root_dir / "output"
        self.temp_dir = self.root_dir / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.step_seconds = max(0.0, float(step_seconds))
        self.faults = faults if faults is not None else FaultPlan()
        self.history_late_seconds = max(0.0, float(history_late_seconds))
        self.checkpoints = list(checkpoints)
        self.crash_exits_process = crash_exits_process
        self.on_crash: Callable[[], None] | None = None
        self.base_object_info = _load_base_object_info()

        self.number = 0
        self.queue: list[tuple[float, int, tuple[Any, ...]]] = []
        self._seq = 0
        self.currently_running: dict[int, tuple[Any, ...]] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, _CacheEntry] = {}
        self.attempts: dict[str | None, int] = {}
        self.job_running = False
        self.free_memory_pending = False

        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.conns: set[_Conn] = set()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.silenced: dict[str, str] = {}  # prompt_id -> client_id (ws-silent per scene)

        self.interrupt_flag = False
        self._interrupt_event: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._late_handles: list[asyncio.TimerHandle] = []
        self._pool: ThreadPoolExecutor | None = None
        self._save_lock = threading.Lock()
        self._counters: dict[tuple[str, str], int] = {}
        self.crashed = False

    # ------------------------------------------------------------------ lifecycle (aiohttp signals)
    async def on_startup(self, app: web.Application) -> None:
        self._interrupt_event = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gemdirect-comfyui-io")
        self._worker_task = asyncio.get_running_loop().create_task(self._worker())

    async def on_shutdown(self, app: web.Application) -> None:
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server shutdown"), 0.2)

    async def on_cleanup(self, app: web.Application) -> None:
        for handle in self._late_handles:
            handle.cancel()
        self._late_handles.clear()
        task = self._worker_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 1.0)
        if self._pool is not None:
            # Let an image write in flight finish (bounded) so nothing writes after stop() returns.
            pool = self._pool
            self._pool = None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.to_thread(pool.shutdown, True, cancel_futures=True), 1.0)

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking image work off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ fault helpers
    def _silent_all(self) -> bool:
        return any(f.name == "ws-silent" and f.scene is None for f in self.faults.faults)

    def is_silenced(self, sid: str) -> bool:
        return self._silent_all() or sid in self.silenced.values()

    def unsilence(self, prompt_id: str) -> None:
        self.silenced.pop(prompt_id, None)

    # ------------------------------------------------------------------ messaging
    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        text = json.dumps({"type": event, "data": data})
        if sid is None:
            targets = list(self.sockets.items())
        else:
            ws = self.sockets.get(sid)
            targets = [(sid, ws)] if ws is not None else []
        for target_sid, ws in targets:
            if self.is_silenced(target_sid) or ws.closed:
                continue
            try:
                await ws.send_str(text)
            except Exception:  # noqa: BLE001 - a gone client is not the server's problem
                log.debug("could not send %s to %s", event, target_sid)

    async def send_bytes(self, payload: bytes, sid: str | None) -> None:
        targets = list(self.sockets.items()) if sid is None else [(sid, self.sockets.get(sid))]
        for target_sid, ws in targets:
            if ws is None or ws.closed or self.is_silenced(target_sid):
                continue
            with contextlib.suppress(Exception):
                await ws.send_bytes(payload)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.currently_running)}}

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()})

    async def drop_client(self, sid: str | None) -> None:
        """ws-drop: cut every socket of ``sid`` without a close frame, like a network drop.

        What was already sent is flushed first, so the client sees every message up to the drop.
        """
        if sid is None:
            return
        for conn in list(self.conns):
            if conn.sid == sid:
                self._abort(conn, flush=True)

    @staticmethod
    def _abort(conn: _Conn, flush: bool = False) -> None:
        transport = conn.transport
        if transport is not None and not transport.is_closing():
            if flush:
                transport.close()
            else:
                transport.abort()
        else:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(conn.ws.close())

    async def crash(self) -> None:
        if self.crash_exits_process:
            sys.stderr.write("gemdirect simulator: fault 'crash': the ComfyUI process dies now (exit 3)\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(3)
        self.crashed = True
        for conn in list(self.conns):
            self._abort(conn)
        if self.on_crash is not None:
            self.on_crash()
        raise _Crash()

    # ------------------------------------------------------------------ queue
    async def put(self, item: tuple[Any, ...]) -> None:
        heapq.heappush(self.queue, (item[0], self._seq, item))
        self._seq += 1
        await self.queue_updated()
        if self._wakeup is not None:
            self._wakeup.set()

    async def wipe_queue(self) -> None:
        for _, _, item in self.queue:
            self.unsilence(item[1])
        self.queue.clear()
        await self.queue_updated()

    async def delete_queue_item(self, prompt_id: str) -> bool:
        for index, (_, _, item) in enumerate(self.queue):
            if item[1] == prompt_id:
                if len(self.queue) == 1:
                    await self.wipe_queue()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                    self.unsilence(prompt_id)
                    await self.queue_updated()
                return True
        return False

    def get_queue(self) -> dict[str, Any]:
        return {
            "queue_running": [list(item) for item in self.currently_running.values()],
            "queue_pending": [list(item) for _, _, item in self.queue],
        }

    def store_history(self, prompt_id: str, entry: dict[str, Any]) -> None:
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[prompt_id] = entry

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for index, key in enumerate(list(self.history)):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    # ------------------------------------------------------------------ worker
    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.free_memory_pending:
                self.cache.clear()
                self.free_memory_pending = False
            _, _, item = heapq.heappop(self.queue)
            task_id = self.task_counter
            self.task_counter += 1
            self.currently_running[task_id] = item
            await self.queue_updated()
            try:
                await self._process(task_id, item)
            except asyncio.CancelledError:
                raise
            except _Crash:
                return
            except Exception:  # noqa: BLE001 - keep serving; record what went wrong
                log.exception("gemdirect ComfyUI simulator: internal error while running %s", item[1])
                self.currently_running.pop(task_id, None)
                self.unsilence(item[1])
                self.job_running = False

    async def _process(self, task_id: int, item: tuple[Any, ...]) -> None:
        prompt_id = item[1]
        run = _Run(self, item)
        self.client_id = item[3].get("client_id")
        self.interrupt_flag = False
        if self._interrupt_event is not None:
            self._interrupt_event.clear()
        self.job_running = True
        try:
            outcome = await run.execute()
        except _Abandon:
            # history-never: the prompt simply vanishes after `executed` (the 2025-11-11 hang).
            self.currently_running.pop(task_id, None)
            self.last_node_id = None
            self.unsilence(prompt_id)
            return
        finally:
            self.job_running = False
        self.last_node_id = None
        entry = run.history_entry(outcome)
        self.currently_running.pop(task_id, None)
        late = run.fault("history-late")
        if not late:
            self.store_history(prompt_id, entry)
        await self.queue_updated()
        if self.client_id is not None:
            await self.send("executing", {"node": None, "prompt_id": prompt_id}, self.client_id)
        if late:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(self.history_late_seconds, self.store_history, prompt_id, entry)
            self._late_handles = [h for h in self._late_handles if not h.cancelled()]
            self._late_handles.append(handle)
        self.unsilence(prompt_id)

    def interrupt(self) -> None:
        self.interrupt_flag = True
        if self._interrupt_event is not None:
            self._interrupt_event.set()

    # ------------------------------------------------------------------ files
    def input_files(self) -> list[str]:
        try:
            names = [
                p.name
                for p in self.input_dir.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            ]
        except OSError:
            names = []
        return sorted(names)

    def directory_by_type(self, kind: str | None) -> str | None:
        return {
            "output": str(self.output_dir),
            "input": str(self.input_dir),
            "temp": str(self.temp_dir),
        }.get(kind or "")

    def annotated_filepath(self, name: str, default: str = "input") -> tuple[str, str]:
        for tag in ("output", "input", "temp"):
            suffix = f" [{tag}]"
            if name.endswith(suffix):
                return name[: -len(suffix)], str(self.directory_by_type(tag))
        return name, str(self.directory_by_type(default))

    def get_save_image_path(
        self, filename_prefix: str, output_dir: str, width: int = 0, height: int = 0
    ) -> tuple[str, str, int, str]:
        """ComfyUI's folder_paths.get_save_image_path: (folder, filename, counter, subfolder)."""
        if "%" in filename_prefix:
            now = time.localtime()
            for key, value in (
                ("%width%", str(width)),
                ("%height%", str(height)),
                ("%year%", str(now.tm_year)),
                ("%month%", f"{now.tm_mon:02}"),
                ("%day%", f"{now.tm_mday:02}"),
                ("%hour%", f"{now.tm_hour:02}"),
                ("%minute%", f"{now.tm_min:02}"),
                ("%second%", f"{now.tm_sec:02}"),
            ):
                filename_prefix = filename_prefix.replace(key, value)
        normalized = os.path.normpath(filename_prefix)
        subfolder = os.path.dirname(normalized)
        filename = os.path.basename(normalized)
        full_output_folder = os.path.join(output_dir, subfolder)
        try:
            common = os.path.commonpath((output_dir, os.path.abspath(full_output_folder)))
        except ValueError:
            common = ""
        if common != output_dir:
            err = (
                "**** ERROR: Saving image outside the output folder is not allowed."
                + "\n full_output_folder: "
                + os.path.abspath(full_output_folder)
                + "\n         output_dir: "
                + output_dir
                + "\n         commonpath: "
                + common
                + "\n"
            )
            raise NodeFailure(err, "Exception", _save_traceback())
        prefix_len = len(filename)

        def map_filename(name: str) -> tuple[int, str]:
            prefix = name[: prefix_len + 1]
            try:
                digits = int(name[prefix_len + 1 :].split("_")[0])
            except ValueError:
                digits = 0
            return digits, prefix

        try:
            candidates = [
                digits
                for digits, prefix in map(map_filename, os.listdir(full_output_folder))
                if os.path.normcase(prefix[:-1]) == os.path.normcase(filename) and prefix[-1:] == "_"
            ]
            counter = max(candidates) + 1 if candidates else 1
        except FileNotFoundError:
            os.makedirs(full_output_folder, exist_ok=True)
            counter = 1
        counter_key = (os.path.normcase(os.path.abspath(full_output_folder)), os.path.normcase(filename))
        counter = max(counter, self._counters.get(counter_key, 1))
        return full_output_folder, filename, counter, subfolder

    def reserve_counter(self, folder: str, filename: str, next_counter: int) -> None:
        key = (os.path.normcase(os.path.abspath(folder)), os.path.normcase(filename))
        self._counters[key] = max(self._counters.get(key, 1), next_counter)

    # ------------------------------------------------------------------ object_info
    def object_info(self) -> dict[str, Any]:
        info = copy.deepcopy(self.base_object_info)
        if "LoadImage" in info:
            info["LoadImage"]["input"]["required"]["image"][0] = self.input_files()
        for loader in ("ImageOnlyCheckpointLoader", "CheckpointLoaderSimple"):
            if loader in info:
                info[loader]["input"]["required"]["ckpt_name"][0] = list(self.checkpoints)
        return info

    def system_stats(self, port: int | None, host: str | None) -> dict[str, Any]:
        try:
            import psutil

            mem = psutil.virtual_memory()
            ram_total, ram_free = int(mem.total), int(mem.available)
        except Exception:  # noqa: BLE001
            ram_total, ram_free = 32 * GIB, 24 * GIB
        vram_free = VRAM_IDLE_FREE - (VRAM_JOB if self.job_running else 0)
        argv = ["gemdirect-sim", "--simulated-comfyui", "--listen", host or "127.0.0.1"]
        if port is not None:
            argv += ["--port", str(port)]
        return {
            "system": {
                "os": os.name,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130",
                "embedded_python": False,
                "argv": argv,
            },
            "devices": [
                {
                    "name": DEVICE_NAME,
                    "type": "cuda",
                    "index": 0,
                    "vram_total": VRAM_TOTAL,
                    "vram_free": vram_free,
                    "torch_vram_total": VRAM_TOTAL,
                    "torch_vram_free": vram_free,
                }
            ],
        }

    # ------------------------------------------------------------------ validation (execution.py)
    def validate_prompt(
        self, prompt: Any, partial_targets: Iterable[str] | None = None
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        if not isinstance(prompt, dict):
            raise TypeError("prompt must be an object")
        info = self.object_info()
        outputs: list[str] = []
        targets = None if partial_targets is None else {str(t) for t in partial_targets}
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                error = {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {},
                }
                return False, error, [], {}
            class_type = node["class_type"]
            class_info = info.get(class_type) if isinstance(class_type, str) else None
            if class_info is None:
                error = {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {class_type} does not exist.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {},
                }
                return False, error, [], {}
            if class_info.get("output_node") is True and (targets is None or node_id in targets):
                outputs.append(node_id)
        if not outputs:
            error = {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }
            return False, error, [], {}

        good_outputs: list[str] = []
        errors: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        for out in outputs:
            valid = False
            reasons: list[dict[str, Any]] = []
            try:
                valid, reasons, _ = self._validate_inputs(prompt, out, validated, info)
            except Exception as ex:  # noqa: BLE001 - reported like the real server
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": _full_type_name(type(ex)),
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ]
                validated[out] = (False, reasons, out)
            if valid is True:
                good_outputs.append(out)
            else:
                errors.append((out, reasons))
                for node_id, result in validated.items():
                    if result[0] is not True and len(result[1]) > 0:
                        if node_id not in node_errors:
                            node_errors[node_id] = {
                                "errors": result[1],
                                "dependent_outputs": [],
                                "class_type": prompt[node_id]["class_type"],
                            }
                        node_errors[node_id]["dependent_outputs"].append(out)
        if not good_outputs:
            lines = [f"{e['message']}: {e['details']}" for _, errs in errors for e in errs]
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "\n".join(lines),
                "extra_info": {},
            }
            return False, error, [], node_errors
        return True, None, good_outputs, node_errors

    def _validate_inputs(
        self,
        prompt: dict[str, Any],
        unique_id: str,
        validated: dict[str, tuple[bool, list[dict[str, Any]], str]],
        info: dict[str, Any],
    ) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in validated:
            return validated[unique_id]
        node = prompt[unique_id]
        inputs = node.setdefault("inputs", {}) if isinstance(node.get("inputs", {}), dict) else {}
        class_type = node["class_type"]
        class_info = info[class_type]
        class_inputs = class_info.get("input", {})
        order = class_info.get("input_order", {})
        valid_inputs: list[tuple[str, str]] = []
        for category in ("required", "optional"):
            names = order.get(category) or list(class_inputs.get(category, {}))
            valid_inputs += [(name, category) for name in names if name in class_inputs.get(category, {})]
        validate_function_inputs = ["image"] if class_type == "LoadImage" else []
        errors: list[dict[str, Any]] = []
        valid = True
        for x, category in valid_inputs:
            definition = class_inputs[category][x]
            input_type = definition[0]
            extra_info = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
            if x not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue
            val = inputs[x]
            input_config = [input_type, extra_info]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            "details": f"{x}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                o_id = val[0]
                o_class_type = prompt[o_id]["class_type"]
                received_type = info[o_class_type]["output"][val[1]]
                if not _validate_node_input(received_type, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": (
                                f"{x}, received_type({received_type}) mismatch input_type({input_type})"
                            ),
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    r = self._validate_inputs(prompt, o_id, validated, info)
                    if r[0] is False:
                        valid = False
                        continue
                except Exception as ex:  # noqa: BLE001 - reported like the real server
                    valid = False
                    reasons = [
                        {
                            "type": "exception_during_inner_validation",
                            "message": "Exception when validating inner node",
                            "details": str(ex),
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "exception_message": str(ex),
                                "exception_type": _full_type_name(type(ex)),
                                "traceback": traceback.format_tb(ex.__traceback__),
                                "linked_node": val,
                            },
                        }
                    ]
                    validated[o_id] = (False, reasons, o_id)
                    continue
            else:
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:  # noqa: BLE001
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{x}, {val}, {ex}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue
                if x in validate_function_inputs:
                    continue
                try:
                    below = "min" in extra_info and val < extra_info["min"]
                    above = "max" in extra_info and val > extra_info["max"]
                except TypeError:
                    below = above = False
                if below:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": "Value {} smaller than min of {}".format(val, extra_info["min"]),
                            "details": f"{x}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                if above:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": "Value {} bigger than max of {}".format(val, extra_info["max"]),
                            "details": f"{x}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": input_config,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                if isinstance(input_type, list) or input_type == "COMBO":
                    options = input_type if isinstance(input_type, list) else extra_info.get("options", [])
                    if val not in options:
                        config: Any = input_config
                        if len(options) > 20:
                            list_info = f"(list of length {len(options)})"
                            config = None
                        else:
                            list_info = str(options)
                        errors.append(
                            {
                                "type": "value_not_in_list",
                                "message": "Value not in list",
                                "details": f"{x}: '{val}' not in {list_info}",
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": config,
                                    "received_value": val,
                                },
                            }
                        )
                        continue
        if class_type == "LoadImage" and "image" in inputs and not isinstance(inputs["image"], list):
            name, folder = self.annotated_filepath(str(inputs["image"]))
            if not os.path.exists(os.path.join(folder, name)):
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"image - Invalid image file: {inputs['image']}",
                        "extra_info": {"input_name": "image"},
                    }
                )
        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = ret
        return ret

    # ------------------------------------------------------------------ caching
    def signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """Structural cache keys (class, inputs, ancestors, IS_CHANGED) like ComfyUI's classic cache."""
        memo: dict[str, str] = {}

        def is_changed(node: dict[str, Any]) -> str:
            if node.get("class_type") == "LoadImage":
                name, folder = self.annotated_filepath(str((node.get("inputs") or {}).get("image", "")))
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as fh:
                        return hashlib.sha256(fh.read()).hexdigest()
                except OSError:
                    return "missing"
            return ""

        def sig(node_id: str, stack: frozenset[str]) -> str:
            if node_id in memo:
                return memo[node_id]
            node = prompt[node_id]
            parts: list[Any] = [node.get("class_type"), is_changed(node)]
            inputs = node.get("inputs") or {}
            for name in sorted(inputs):
                value = inputs[name]
                if _is_link(value) and value[0] in prompt and value[0] not in stack:
                    parts.append([name, "link", sig(value[0], stack | {node_id}), value[1]])
                else:
                    parts.append([name, json.dumps(value, sort_keys=True, default=str)])
            digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
            memo[node_id] = digest
            return digest

        return {node_id: sig(node_id, frozenset()) for node_id in prompt}


def _save_traceback() -> list[str]:
    return [
        '  File "/opt/ComfyUI/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        '  File "/opt/ComfyUI/nodes.py", line 1590, in save_images\n'
        "    full_output_folder, filename, counter, subfolder, filename_prefix = "
        "folder_paths.get_save_image_path(...)\n",
        '  File "/opt/ComfyUI/folder_paths.py", line 397, in get_save_image_path\n    raise Exception(err)\n',
    ]


def _sampler_traceback() -> list[str]:
    return [
        '  File "/opt/ComfyUI/execution.py", line 496, in execute\n'
        "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(...)\n",
        '  File "/opt/ComfyUI/nodes.py", line 1525, in sample\n'
        "    return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, "
        "latent_image, denoise=denoise)\n",
        '  File "/opt/ComfyUI/comfy/sample.py", line 60, in sample\n'
        "    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, ...)\n",
        '  File "/opt/ComfyUI/comfy/ldm/modules/attention.py", line 598, in attention_pytorch\n'
        "    out = comfy.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, "
        "is_causal=False)\n",
        "  [gemdirect-sim: simulated failure]\n",
    ]


# ---------------------------------------------------------------------------------------- execution
class _ExecutionList:
    """ComfyUI's ExecutionList: pending nodes, blocking links, UX-friendly pick."""

    def __init__(
        self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ):
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def add_node(self, node_unique_id: str) -> None:
        node_ids = [node_unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            unique_id = node_ids.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            for value in (self.prompt[unique_id].get("inputs") or {}).values():
                if _is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, socket, unique_id))
        for from_id, socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            raise RuntimeError("dependency cycle in prompt")
        for node_id in available:
            if self.is_output(node_id):
                return node_id
        for node_id in available:
            if any(self.is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in available:
            for blocked in self.blocking[node_id]:
                if any(self.is_output(b) for b in self.blocking.get(blocked, {})):
                    return node_id
        return available[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1


class _Run:
    """One execution of one queued prompt."""

    def __init__(self, state: ComfyUIState, item: tuple[Any, ...]) -> None:
        self.state = state
        self.item = item
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item[:5]
        self.client_id: str | None = self.extra_data.get("client_id")
        self.scene = scene_of(self.prompt)
        self.messages: list[list[Any]] = []
        self.progress_nodes: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.values: dict[str, tuple[Any, ...]] = {}
        self.info = state.object_info()
        self.has_sampler = any(
            isinstance(n, dict) and n.get("class_type") in SAMPLER_CLASSES for n in self.prompt.values()
        )
        self.midpoint_done = False
        self.fail_this = False
        self.current_node: str | None = None
        self.sigs: dict[str, str] = {}

    def resolve(self, value: Any) -> Any:
        """An input value: a link resolves to the linked node's output (this run's, or the cache's)."""
        if not _is_link(value):
            return value
        from_id, slot = value
        outputs = self.values.get(from_id)
        if outputs is None:
            cached = self.state.cache.get(self.sigs.get(from_id, ""))
            outputs = cached.outputs if cached is not None else None
        if outputs is None:
            return value
        try:
            return outputs[slot]
        except (IndexError, TypeError):
            return value

    def fault(self, name: str) -> bool:
        return self.state.faults.active(name, self.scene)

    def is_output(self, node_id: str) -> bool:
        class_type = self.prompt[node_id].get("class_type")
        return bool(self.info.get(class_type, {}).get("output_node"))

    # ------------------------------------------------------------------ messages
    async def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            await self.state.send(event, data, self.client_id)

    def _entry(self, node_id: str, value: Any, max_: Any, state: str) -> dict[str, Any]:
        return {
            "value": value,
            "max": max_,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def _send_progress_state(self) -> None:
        nodes = {k: dict(v) for k, v in self.progress_nodes.items()}
        await self.state.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    async def start_progress(self, node_id: str) -> None:
        self.progress_nodes[node_id] = self._entry(node_id, 0.0, 1.0, "running")
        await self._send_progress_state()

    async def progress(self, node_id: str, value: int, max_: int) -> None:
        """A progress-bar tick: progress_state, then the legacy ``progress`` message."""
        entry = self.progress_nodes.setdefault(node_id, self._entry(node_id, 0, 1, "running"))
        entry.update(value=value, max=max_, state="running")
        await self._send_progress_state()
        await self.state.send(
            "progress",
            {"value": value, "max": max_, "prompt_id": self.prompt_id, "node": node_id},
            self.client_id,
        )

    async def finish_progress(self, node_id: str) -> None:
        entry = self.progress_nodes.setdefault(node_id, self._entry(node_id, 0, 1, "running"))
        entry.update(value=entry["max"], state="finished")
        await self._send_progress_state()

    def check_interrupt(self) -> None:
        if self.state.interrupt_flag:
            raise Interrupted()

    async def stall(self) -> None:
        """stall: never finish until interrupted (or the server stops)."""
        event = self.state._interrupt_event
        assert event is not None
        while not self.state.interrupt_flag:
            await event.wait()
        raise Interrupted()

    async def midpoint(self) -> None:
        """Mid-generation: where ws-drop and crash strike."""
        if self.midpoint_done:
            return
        self.midpoint_done = True
        if self.fault("ws-drop"):
            await self.state.drop_client(self.client_id)
        if self.fault("crash"):
            await self.state.crash()

    def simulated_failure(self, node_id: str) -> NodeFailure:
        name = "execution-error" if self.fault("execution-error") else "flaky"
        return NodeFailure(
            "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
            f"[gemdirect-sim: simulated failure, fault '{name}'"
            + (f" for {self.scene}" if self.scene else "")
            + "]",
            "torch.OutOfMemoryError",
            _sampler_traceback(),
        )

    # ------------------------------------------------------------------ execute
    async def execute(self) -> str:
        state = self.state
        key = self.scene
        state.attempts[key] = state.attempts.get(key, 0) + 1
        self.fail_this = self.fault("execution-error") or (self.fault("flaky") and state.attempts[key] == 1)
        await self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        sigs = await state.offload(state.signatures, self.prompt)
        self.sigs = sigs
        wanted = set(sigs.values())
        state.cache = {k: v for k, v in state.cache.items() if k in wanted}
        cached_nodes = [n for n in self.prompt if sigs[n] in state.cache]
        await self.add_message(
            "execution_cached", {"nodes": cached_nodes, "prompt_id": self.prompt_id}, False
        )
        current_outputs = list(self.prompt)
        elist = _ExecutionList(self.prompt, lambda n: sigs.get(n) in state.cache, self.is_output)
        for node_id in self.outputs:
            elist.add_node(node_id)
        while not elist.is_empty():
            node_id = elist.stage()
            self.current_node = node_id
            try:
                await self.execute_node(node_id)
            except Interrupted:
                mes = {
                    "prompt_id": self.prompt_id,
                    "node_id": node_id,
                    "node_type": self.prompt[node_id]["class_type"],
                    "executed": list(self.executed),
                }
                await self.add_message("execution_interrupted", mes, broadcast=True)
                return "error"
            except NodeFailure as failure:
                await self._execution_error(node_id, failure, current_outputs)
                return "error"
            elist.complete(node_id)
        await self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        return "success"

    async def _execution_error(self, node_id: str, failure: NodeFailure, current_outputs: list[str]) -> None:
        current_inputs: dict[str, list[str]] = {}
        for name, value in (self.prompt[node_id].get("inputs") or {}).items():
            current_inputs[name] = [_describe(self.resolve(value))]
        tb = failure.tb if failure.tb is not None else traceback.format_tb(failure.__traceback__)
        mes = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
            "exception_message": failure.message,
            "exception_type": failure.exception_type,
            "traceback": tb,
            "current_inputs": current_inputs,
            "current_outputs": current_outputs,
        }
        await self.add_message("execution_error", mes, broadcast=False)

    async def execute_node(self, node_id: str) -> None:
        state = self.state
        node = self.prompt[node_id]
        class_type = node["class_type"]
        cached = state.cache.get(self.sigs[node_id])
        if cached is not None:
            if self.client_id is not None:
                output = cached.ui.get("output") if cached.ui else None
                await state.send(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": output, "prompt_id": self.prompt_id},
                    self.client_id,
                )
                if cached.ui is not None:
                    self.ui_outputs[node_id] = cached.ui
            if self.fault("history-never") and self.is_output(node_id):
                raise _Abandon()
            await self.finish_progress(node_id)
            self.values[node_id] = cached.outputs
            return
        await self.start_progress(node_id)
        if self.client_id is not None:
            state.last_node_id = node_id
            await state.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                self.client_id,
            )
        self.check_interrupt()
        if not self.has_sampler and self.is_output(node_id):
            # No sampler in the graph: the save node is where the generation "happens".
            await self.midpoint()
            if self.fault("stall"):
                await self.stall()
            if self.fail_this:
                raise self.simulated_failure(node_id)
        inputs = {name: self.resolve(value) for name, value in (node.get("inputs") or {}).items()}
        impl = NODE_IMPLS.get(class_type)
        if impl is None:
            raise NodeFailure(
                f"gemdirect-sim: node class {class_type} is listed but not simulated", "NotImplementedError"
            )
        outputs, ui = await impl(self, node_id, inputs)
        self.values[node_id] = outputs
        ui_entry = None
        if ui:
            ui_entry = {
                "meta": {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                },
                "output": ui,
            }
            self.ui_outputs[node_id] = ui_entry
        state.cache[self.sigs[node_id]] = _CacheEntry(outputs, ui_entry)
        self.executed.append(node_id)
        if ui and self.client_id is not None:
            await state.send(
                "executed",
                {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
                self.client_id,
            )
        if self.fault("history-never") and self.is_output(node_id):
            raise _Abandon()
        await self.finish_progress(node_id)

    def history_entry(self, outcome: str) -> dict[str, Any]:
        success = outcome == "success"
        return {
            "prompt": list(self.item[:5]),
            "outputs": {k: v["output"] for k, v in self.ui_outputs.items()},
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": self.messages,
            },
            "meta": {k: v["meta"] for k, v in self.ui_outputs.items()},
        }


def _describe(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        first = value[0]
        return f"tensor of shape [{len(value)}, {first.height}, {first.width}, 3]"
    return str(value)


# ---------------------------------------------------------------------------------------- nodes
NodeImpl = Callable[[_Run, str, dict[str, Any]], Awaitable[tuple[tuple[Any, ...], dict[str, Any] | None]]]
NODE_IMPLS: dict[str, NodeImpl] = {}


def _node(*names: str) -> Callable[[NodeImpl], NodeImpl]:
    def register(fn: NodeImpl) -> NodeImpl:
        for name in names:
            NODE_IMPLS[name] = fn
        return fn

    return register


RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _frames(value: Any) -> list[Image.Image]:
    if isinstance(value, list) and all(isinstance(v, Image.Image) for v in value):
        return value
    raise NodeFailure(f"expected IMAGE, got {_describe(value)}", "TypeError")


@_node("LoadImage")
async def _load_image(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name, folder = run.state.annotated_filepath(str(inp["image"]))
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise NodeFailure(f"[Errno 2] No such file or directory: '{path}'", "FileNotFoundError")

    def load() -> tuple[list[Image.Image], list[Image.Image]]:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgba = im.convert("RGBA")
        rgb = rgba.convert("RGB")
        mask = ImageOps.invert(rgba.getchannel("A"))
        return [rgb], [mask]

    try:
        images, masks = await run.state.offload(load)
    except OSError as exc:
        raise NodeFailure(str(exc), _full_type_name(type(exc))) from None
    return (images, masks), None


@_node("EmptyImage")
async def _empty_image(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    color = int(inp.get("color", 0))
    rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
    image = Image.new("RGB", (max(1, int(inp["width"])), max(1, int(inp["height"]))), rgb)
    return ([image] * max(1, int(inp.get("batch_size", 1))),), None


@_node("ImageScale")
async def _image_scale(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = _frames(inp["image"])
    width, height = int(inp["width"]), int(inp["height"])
    method = RESAMPLE.get(str(inp.get("upscale_method")), Image.Resampling.BILINEAR)
    crop = inp.get("crop") == "center"

    def scale() -> list[Image.Image]:
        done: dict[int, Image.Image] = {}
        out = []
        for frame in frames:
            if id(frame) not in done:
                w, h = width, height
                if w == 0 and h == 0:
                    done[id(frame)] = frame
                else:
                    if w == 0:
                        w = max(1, round(frame.width * h / frame.height))
                    if h == 0:
                        h = max(1, round(frame.height * w / frame.width))
                    if crop:
                        done[id(frame)] = ImageOps.fit(frame, (w, h), method=method)
                    else:
                        done[id(frame)] = frame.resize((w, h), method)
            out.append(done[id(frame)])
        return out

    return (await run.state.offload(scale),), None


@_node("RepeatImageBatch")
async def _repeat(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (_frames(inp["image"]) * int(inp["amount"]),), None


@_node("ImageInvert")
async def _invert(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = _frames(inp["image"])

    def invert() -> list[Image.Image]:
        done: dict[int, Image.Image] = {}
        return [done.setdefault(id(f), ImageOps.invert(f.convert("RGB"))) for f in frames]

    return (await run.state.offload(invert),), None


def _check_checkpoint(run: _Run, name: str) -> None:
    if name not in run.state.checkpoints:
        raise NodeFailure(
            f"Model in folder 'checkpoints' with filename '{name}' not found.", "FileNotFoundError"
        )


@_node("ImageOnlyCheckpointLoader")
async def _svd_loader(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name = str(inp["ckpt_name"])
    _check_checkpoint(run, name)
    await asyncio.sleep(run.state.step_seconds)
    return (
        _Token("MODEL", "comfy.model_patcher.ModelPatcher", ckpt=name),
        _Token("CLIP_VISION", "comfy.clip_vision.ClipVisionModel", ckpt=name),
        _Token("VAE", "comfy.sd.VAE", ckpt=name),
    ), None


@_node("CheckpointLoaderSimple")
async def _ckpt_loader(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    name = str(inp["ckpt_name"])
    _check_checkpoint(run, name)
    return (
        _Token("MODEL", "comfy.model_patcher.ModelPatcher", ckpt=name),
        _Token("CLIP", "comfy.sd.CLIP", ckpt=name),
        _Token("VAE", "comfy.sd.VAE", ckpt=name),
    ), None


@_node("SVD_img2vid_Conditioning")
async def _svd_cond(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = _frames(inp["init_image"])
    width, height, count = int(inp["width"]), int(inp["height"]), int(inp["video_frames"])
    positive = _Token(
        "CONDITIONING", "list", motion_bucket_id=inp.get("motion_bucket_id"), fps=inp.get("fps")
    )
    negative = _Token("CONDITIONING", "list")
    latent = _Latent(init_image=frames[0], width=width, height=height, frames=count)
    return (positive, negative, latent), None


@_node("CLIPTextEncode")
async def _text_encode(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (_Token("CONDITIONING", "list", text=str(inp["text"])),), None


@_node("EmptyLatentImage")
async def _empty_latent(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    width, height, batch = int(inp["width"]), int(inp["height"]), int(inp["batch_size"])
    return (_Latent(init_image=None, width=width, height=height, frames=batch),), None


@_node("VideoLinearCFGGuidance")
async def _cfg_guidance(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (inp["model"],), None


@_node("KSampler")
async def _ksampler(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    steps = max(1, int(inp["steps"]))
    latent = inp.get("latent_image")
    if not isinstance(latent, _Latent):
        latent = _Latent(None, 512, 512, 1)
    stall = run.fault("stall")
    half = max(1, steps // 2)
    for step in range(1, steps + 1):
        if stall and step == steps:
            await run.stall()
        if run.state.step_seconds:
            await asyncio.sleep(run.state.step_seconds)
        run.check_interrupt()
        await run.progress(node_id, step, steps)
        if step == half:
            await run.midpoint()
            if run.fail_this:
                raise run.simulated_failure(node_id)
    positive = inp.get("positive")
    text = positive.info.get("text") if isinstance(positive, _Token) else None
    sampled = _Latent(
        latent.init_image, latent.width, latent.height, latent.frames, int(inp.get("seed", 0)), True, text
    )
    return (sampled,), None


def _render_text_image(text: str, seed: int, width: int, height: int) -> Image.Image:
    """A text-to-image stand-in: a picture that is a pure function of prompt and seed."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    top, bottom = tuple(digest[0:3]), tuple(digest[3:6])
    gradient = Image.linear_gradient("L").resize((width, height), Image.Resampling.BICUBIC)
    image = ImageOps.colorize(gradient, black=top, white=bottom)
    draw = ImageDraw.Draw(image)
    for index in range(6):
        d = hashlib.sha256(digest + bytes([index])).digest()
        x, y = d[0] * width // 256, d[1] * height // 256
        r = max(4, min(width, height) * (10 + d[2] % 30) // 100)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(d[3:6]))
    return image


def _render_video(latent: _Latent) -> list[Image.Image]:
    width, height, count = max(8, latent.width), max(8, latent.height), max(1, latent.frames)
    if latent.init_image is None and latent.text is not None:
        image = _render_text_image(latent.text, latent.seed, width, height)
        return [image] * count
    if latent.init_image is not None:
        base = ImageOps.fit(
            latent.init_image.convert("RGB"), (width, height), method=Image.Resampling.BILINEAR
        )
    else:
        base = Image.new("RGB", (width, height), (96, 96, 96))
    frames = []
    radius = max(2, min(width, height) // 40)
    for k in range(count):
        t = k / (count - 1) if count > 1 else 0.0
        zoom = 1.0 + 0.12 * t  # a slow zoom in while panning right
        box_w, box_h = width / zoom, height / zoom
        x0 = (width - box_w) * t
        y0 = (height - box_h) / 2
        frame = base.resize((width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + box_w, y0 + box_h))
        draw = ImageDraw.Draw(frame)
        cx = radius * 2 + (width - radius * 4) * t
        cy = height - radius * 2
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=(255, 255, 255), outline=(0, 0, 0)
        )
        frames.append(frame)
    return frames


@_node("VAEDecode")
async def _vae_decode(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    latent = inp.get("samples")
    if not isinstance(latent, _Latent):
        latent = _Latent(None, 512, 512, 1)
    return (await run.state.offload(_render_video, latent),), None


@_node("CreateVideo")
async def _create_video(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    return (_Token("VIDEO", "comfy_api.input_impl.VideoFromComponents", frames=_frames(inp["images"])),), None


@_node("SaveVideo", "SaveWEBM")
async def _save_video(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    raise NodeFailure(
        "gemdirect-sim: video encoders are not simulated; use SaveImage, SaveAnimatedWEBP or SaveAnimatedPNG",
        "NotImplementedError",
    )


def _png_info(run: _Run) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(run.prompt))
    extra = run.extra_data.get("extra_pnginfo")
    if isinstance(extra, dict):
        for key, value in extra.items():
            info.add_text(str(key), json.dumps(value))
    return info


def _encode_png(image: Image.Image, pnginfo: PngImagePlugin.PngInfo, level: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=pnginfo, compress_level=level)
    return buf.getvalue()


def _save_frames(
    run: _Run, frames: list[Image.Image], prefix: str, folder_type: str, level: int, write: bool
) -> list[dict[str, str]]:
    state = run.state
    base = str(state.output_dir if folder_type == "output" else state.temp_dir)
    first = frames[0] if frames else None
    with state._save_lock:
        folder, filename, counter, subfolder = state.get_save_image_path(
            prefix, base, first.width if first else 0, first.height if first else 0
        )
        names = []
        for batch_number in range(len(frames)):
            stem = filename.replace("%batch_num%", str(batch_number))
            names.append(f"{stem}_{counter + batch_number:05}_.png")
        state.reserve_counter(folder, filename, counter + len(frames))
    if write:
        pnginfo = _png_info(run)
        encoded: dict[int, bytes]
        unique = {id(f): f for f in frames}
        pool = state._pool
        if pool is None:  # shutting down: encode here
            encoded = {key: _encode_png(f, pnginfo, level) for key, f in unique.items()}
        else:
            futures = {key: pool.submit(_encode_png, f, pnginfo, level) for key, f in unique.items()}
            encoded = {key: fut.result() for key, fut in futures.items()}
        for frame, name in zip(frames, names, strict=True):
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(encoded[id(frame)])
    return [{"filename": name, "subfolder": subfolder, "type": folder_type} for name in names]


@_node("SaveImage")
async def _save_image(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = _frames(inp["images"])
    prefix = str(inp.get("filename_prefix", "ComfyUI"))
    write = not run.fault("view-404")
    results = await run.state.offload(_save_frames, run, frames, prefix, "output", PNG_COMPRESS_LEVEL, write)
    return (), {"images": results}


@_node("PreviewImage")
async def _preview_image(
    run: _Run, node_id: str, inp: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = _frames(inp["images"])
    prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    write = not run.fault("view-404")
    results = await run.state.offload(_save_frames, run, frames, prefix, "temp", 1, write)
    return (), {"images": results}


def _save_animated(
    run: _Run, frames: list[Image.Image], prefix: str, ext: str, opts: dict[str, Any], write: bool
):
    state = run.state
    first = frames[0]
    with state._save_lock:
        folder, filename, counter, subfolder = state.get_save_image_path(
            prefix, str(state.output_dir), first.width, first.height
        )
        name = f"{filename}_{counter:05}_.{ext}"
        state.reserve_counter(folder, filename, counter + 1)
    if write:
        fmt = "WEBP" if ext == "webp" else "PNG"
        first.save(os.path.join(folder, name), fmt, save_all=True, append_images=frames[1:], **opts)
    return [{"filename": name, "subfolder": subfolder, "type": "output"}]


@_node("SaveAnimatedWEBP")
async def _save_webp(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = _frames(inp["images"])
    fps = float(inp.get("fps", 6.0))
    opts = {
        "duration": int(1000.0 / fps),
        "lossless": bool(inp.get("lossless", False)),
        "quality": int(inp.get("quality", 80)),
        "method": 0,  # fastest: the simulator must stay quick
        "loop": 0,
    }
    write = not run.fault("view-404")
    results = await run.state.offload(
        _save_animated, run, frames, str(inp["filename_prefix"]), "webp", opts, write
    )
    return (), {"images": results, "animated": [len(frames) != 1]}


@_node("SaveAnimatedPNG")
async def _save_apng(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    frames = _frames(inp["images"])
    fps = float(inp.get("fps", 6.0))
    opts = {
        "duration": int(1000.0 / fps),
        "compress_level": min(int(inp.get("compress_level", 4)), 4),
        "loop": 0,
        "pnginfo": _png_info(run),
    }
    write = not run.fault("view-404")
    results = await run.state.offload(
        _save_animated, run, frames, str(inp["filename_prefix"]), "png", opts, write
    )
    return (), {"images": results, "animated": [len(frames) != 1]}


@_node("SaveImageWebsocket")
async def _save_ws(run: _Run, node_id: str, inp: dict[str, Any]) -> tuple[tuple[Any, ...], None]:
    frames = _frames(inp["images"])
    state = run.state
    total = len(frames)
    conn_flags: dict[str, Any] = {}
    for conn in state.conns:
        if conn.sid == run.client_id and state.sockets.get(conn.sid) is conn.ws:
            conn_flags = conn.flags
    metadata = bool(conn_flags.get("supports_preview_metadata"))
    for step, frame in enumerate(frames):
        run.check_interrupt()
        png = await state.offload(_encode_png, frame, PngImagePlugin.PngInfo(), 1)
        entry = run.progress_nodes.setdefault(node_id, run._entry(node_id, 0, 1, "running"))
        entry.update(value=step, max=total, state="running")
        await run._send_progress_state()
        progress = {"value": step, "max": total, "prompt_id": run.prompt_id, "node": node_id}
        if metadata:
            meta = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": run.prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/png",
                }
            ).encode()
            await state.send_bytes(struct.pack(">II", 4, len(meta)) + meta + png, run.client_id)
            await state.send("progress", progress, run.client_id)
        else:
            await state.send("progress", progress, run.client_id)
            await state.send_bytes(struct.pack(">II", 1, 2) + png, run.client_id)
    return (), None


# ---------------------------------------------------------------------------------------- HTTP
def _internal_error() -> web.Response:
    return web.Response(status=500, text=INTERNAL_ERROR_TEXT, content_type="text/plain")


async def _json_body(request: web.Request) -> Any:
    text = await request.text()
    return json.loads(text)


def _listen_port(request: web.Request) -> tuple[str | None, int | None]:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None, None


class _Handlers:
    def __init__(self, state: ComfyUIState) -> None:
        self.state = state

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>gemdirect ComfyUI simulator</title>"
            "<p>This is the gemdirect ComfyUI simulator (protocol of ComfyUI "
            f"{COMFYUI_VERSION}), not a real ComfyUI server.</p>",
            content_type="text/html",
        )

    async def system_stats(self, request: web.Request) -> web.Response:
        host, port = _listen_port(request)
        return web.json_response(self.state.system_stats(port, host))

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.object_info())

    async def object_info_node(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        info = self.state.object_info()
        return web.json_response({node_class: info[node_class]} if node_class in info else {})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(list(MODEL_FOLDERS))

    async def models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list(self.state.checkpoints) if folder == "checkpoints" else [])

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        state = self.state
        try:
            json_data = await _json_body(request)
            if not isinstance(json_data, dict):
                raise TypeError("body must be an object")
        except Exception:  # noqa: BLE001 - malformed JSON: the real server answers 500 text/plain
            return _internal_error()
        if "number" in json_data:
            try:
                number: float = float(json_data["number"])
            except (TypeError, ValueError):
                return _internal_error()
        else:
            number = state.number
            if json_data.get("front"):
                number = -number
            state.number += 1
        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        try:
            valid = state.validate_prompt(prompt, json_data.get("partial_execution_targets"))
        except Exception:  # noqa: BLE001
            log.exception("validation crashed")
            return _internal_error()
        extra_data = dict(json_data.get("extra_data") or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        item = (number, prompt_id, prompt, extra_data, valid[2])
        client_id = extra_data.get("client_id")
        if client_id is not None and state.faults.active("ws-silent", scene_of(prompt)):
            state.silenced[prompt_id] = client_id
        await state.put(item)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_queue())

    async def post_queue(self, request: web.Request) -> web.Response:
        try:
            json_data = await _json_body(request)
        except Exception:  # noqa: BLE001
            return _internal_error()
        if isinstance(json_data, dict):
            if json_data.get("clear"):
                await self.state.wipe_queue()
            for prompt_id in json_data.get("delete") or []:
                await self.state.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            max_items = int(query["max_items"]) if "max_items" in query else None
            offset = int(query["offset"]) if "offset" in query else -1
        except ValueError:
            return _internal_error()
        return web.json_response(self.state.get_history(max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.state.history.get(prompt_id)
        return web.json_response({prompt_id: copy.deepcopy(entry)} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        try:
            json_data = await _json_body(request)
        except Exception:  # noqa: BLE001
            return _internal_error()
        if isinstance(json_data, dict):
            if json_data.get("clear"):
                self.state.history.clear()
            for prompt_id in json_data.get("delete") or []:
                self.state.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await _json_body(request)
        except Exception:  # noqa: BLE001 - no body: a global interrupt
            json_data = {}
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        if prompt_id:
            if any(item[1] == prompt_id for item in self.state.currently_running.values()):
                self.state.interrupt()
        else:
            self.state.interrupt()
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        try:
            json_data = await _json_body(request)
        except Exception:  # noqa: BLE001
            json_data = {}
        if isinstance(json_data, dict) and json_data.get("free_memory"):
            self.state.free_memory_pending = True
        return web.Response(status=200)

    async def upload_image(self, request: web.Request) -> web.Response:
        state = self.state
        try:
            post = await request.post()
        except Exception:  # noqa: BLE001
            return web.Response(status=400)
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type") or "input"
        upload_dir = state.directory_by_type(str(upload_type))
        if upload_dir is None:
            return _internal_error()
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        data = image.file.read()
        filename = image.filename
        subfolder = str(post.get("subfolder", ""))
        full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_output_folder, filename))
        try:
            if os.path.commonpath((upload_dir, filepath)) != upload_dir:
                return web.Response(status=400)
        except ValueError:
            return web.Response(status=400)
        os.makedirs(full_output_folder, exist_ok=True)
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            i = 1
            digest = hashlib.sha256(data).hexdigest()
            while os.path.exists(filepath):
                with open(filepath, "rb") as fh:
                    if hashlib.sha256(fh.read()).hexdigest() == digest:
                        duplicate = True
                        break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(full_output_folder, filename)
                i += 1
        if not duplicate:
            with open(filepath, "wb") as fh:
                fh.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    async def view(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, output_dir = query["filename"], None
        for tag in ("output", "input", "temp"):
            if filename.endswith(f" [{tag}]"):
                filename, output_dir = filename[: -len(tag) - 3], state.directory_by_type(tag)
                break
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if output_dir is None:
            output_dir = state.directory_by_type(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            try:
                inside = os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) == output_dir
            except ValueError:
                inside = False
            if not inside:
                return web.Response(status=403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if not os.path.isfile(file):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        preview = query.get("preview")
        channel = query.get("channel", "rgba")
        if preview or channel in ("rgb", "a"):
            try:
                body, content_type = await state.offload(_convert_view, file, preview, channel)
            except OSError:
                return web.Response(status=404)
            return web.Response(body=body, headers={**disposition, "Content-Type": content_type})
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            content_type = "application/octet-stream"
        return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        state = self.state
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        track_websocket(request, ws)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            state.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        state.sockets[sid] = ws
        conn = _Conn(sid, ws, request.transport)
        state.conns.add(conn)
        try:
            await state.send("status", {"status": state.queue_info(), "sid": sid}, sid)
            if state.client_id == sid and state.last_node_id is not None:
                await state.send("executing", {"node": state.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    conn.flags = flags if isinstance(flags, dict) else {}
                    await state.send("feature_flags", SERVER_FEATURES, sid)
                first_message = False
        finally:
            # Like the real server: this forgets the client id even when a newer socket owns it (i2).
            state.sockets.pop(sid, None)
            state.conns.discard(conn)
        return ws


def _convert_view(file: str, preview: str | None, channel: str) -> tuple[bytes, str]:
    with Image.open(file) as im:
        im.load()
        image = im
        if channel == "rgb":
            image = image.convert("RGB")
        elif channel == "a":
            rgba = image.convert("RGBA")
            alpha = rgba.getchannel("A")
            image = Image.merge("RGBA", (alpha, alpha, alpha, alpha))
        buf = io.BytesIO()
        if preview:
            parts = preview.split(";")
            fmt = parts[0].lower() if parts[0] else "webp"
            if fmt not in ("webp", "jpeg"):
                fmt = "webp"
            quality = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 90
            if fmt == "jpeg":
                image = image.convert("RGB")
            image.save(buf, fmt.upper(), quality=quality)
            return buf.getvalue(), f"image/{fmt}"
        image.save(buf, "PNG")
        return buf.getvalue(), "image/png"


def create_comfyui_app(state: ComfyUIState | None = None, /, **options: Any) -> web.Application:
    """The simulator's aiohttp application.

    Pass a ``ComfyUIState`` or the options to build one (``root_dir`` required then, plus any of
    ``step_seconds``, ``faults``, ``history_late_seconds``, ``checkpoints``, ``crash_exits_process``).
    The queue worker starts with the application and stops at its cleanup.
    """
    if state is None:
        if "root_dir" not in options:
            options["root_dir"] = Path(tempfile.mkdtemp(prefix="gemdirect-comfyui-"))
        state = ComfyUIState(**options)
    elif options:
        raise TypeError("pass either a ComfyUIState or options, not both")
    app = web.Application(client_max_size=SERVER_FEATURES["max_upload_size"] + 1024 * 1024)
    app[STATE_KEY] = state
    h = _Handlers(state)
    app.router.add_get("/", h.index)
    for prefix in ("", "/api"):
        app.router.add_get(prefix + "/ws", h.websocket)
        app.router.add_get(prefix + "/system_stats", h.system_stats)
        app.router.add_get(prefix + "/features", h.features)
        app.router.add_get(prefix + "/embeddings", h.empty_list)
        app.router.add_get(prefix + "/extensions", h.empty_list)
        app.router.add_get(prefix + "/object_info", h.object_info)
        app.router.add_get(prefix + "/object_info/{node_class}", h.object_info_node)
        app.router.add_get(prefix + "/models", h.models)
        app.router.add_get(prefix + "/models/{folder}", h.models_folder)
        app.router.add_get(prefix + "/prompt", h.get_prompt)
        app.router.add_post(prefix + "/prompt", h.post_prompt)
        app.router.add_get(prefix + "/queue", h.get_queue)
        app.router.add_post(prefix + "/queue", h.post_queue)
        app.router.add_get(prefix + "/history", h.get_history)
        app.router.add_get(prefix + "/history/{prompt_id}", h.get_history_item)
        app.router.add_post(prefix + "/history", h.post_history)
        app.router.add_post(prefix + "/interrupt", h.interrupt)
        app.router.add_post(prefix + "/free", h.free)
        app.router.add_post(prefix + "/upload/image", h.upload_image)
        app.router.add_get(prefix + "/view", h.view)
    app.on_startup.append(state.on_startup)
    app.on_shutdown.append(state.on_shutdown)
    app.on_cleanup.append(state.on_cleanup)
    return app


# ---------------------------------------------------------------------------------------- simulator
class ComfyUISimulator:
    """The embedded ComfyUI simulator on a real port, in a background thread.

    >>> with ComfyUISimulator(faults=FaultPlan.parse(["stall@scene-002"])) as sim:
    ...     requests.get(sim.url + "/system_stats").json()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        root_dir: Path | None = None,
        step_seconds: float = 0.01,
        faults: FaultPlan | None = None,
        history_late_seconds: float = 3.0,
        checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
        crash_exits_process: bool = False,
    ) -> None:
        self._own_root = root_dir is None
        root = Path(tempfile.mkdtemp(prefix="gemdirect-comfyui-")) if root_dir is None else Path(root_dir)
        self.state = ComfyUIState(
            root,
            step_seconds=step_seconds,
            faults=faults,
            history_late_seconds=history_late_seconds,
            checkpoints=checkpoints,
            crash_exits_process=crash_exits_process,
        )
        self.crashed = threading.Event()
        self.state.on_crash = self._on_crash
        state = self.state
        self._server = ServerThread(
            lambda: create_comfyui_app(state), host, port, name="gemdirect-comfyui-sim"
        )
        self._finalizer = weakref.finalize(self, _cleanup_root, root, self._own_root)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def faults(self) -> FaultPlan:
        return self.state.faults

    @property
    def root_dir(self) -> Path:
        return self.state.root_dir

    @property
    def input_dir(self) -> Path:
        return self.state.input_dir

    @property
    def output_dir(self) -> Path:
        return self.state.output_dir

    def start(self, timeout: float = 15.0) -> ComfyUISimulator:
        self._server.start(timeout)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._server.stop(timeout)
        if self._own_root:
            self._finalizer()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once the server thread has ended (after stop() or a simulated crash)."""
        return self._server.wait_stopped(timeout)

    def _on_crash(self) -> None:
        self.crashed.set()
        self._server.stop()

    def __enter__(self) -> ComfyUISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cleanup_root(root: Path, own: bool) -> None:
    if own:
        shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "COMFYUI_VERSION",
    "ComfyUISimulator",
    "ComfyUIState",
    "DEFAULT_CHECKPOINTS",
    "NodeFailure",
    "create_comfyui_app",
    "scene_of",
]
