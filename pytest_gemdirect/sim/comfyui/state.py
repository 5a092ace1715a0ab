"""What one simulated ComfyUI server holds: folders, queue, history, sockets and the node cache.

The queue worker that empties the queue lives in ``execution``; the HTTP side in ``http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pytest_gemdirect.sim.comfyui.catalog import (
    INPUT_FILE_LISTS,
    combo_options,
    declared_inputs,
    input_file_inputs,
    model_inputs,
    recorded_object_info,
)
from pytest_gemdirect.sim.comfyui.constants import (
    COMFYUI_VERSION,
    DEFAULT_CHECKPOINTS,
    DEVICE_NAME,
    GIB,
    IMAGE_EXTENSIONS,
    MAXIMUM_HISTORY_SIZE,
    VRAM_IDLE_FREE,
    VRAM_JOB,
    VRAM_TOTAL,
)
from pytest_gemdirect.sim.comfyui.errors import Crash, NodeFailure, save_traceback
from pytest_gemdirect.sim.comfyui.models import ModelShelf, model_names_in_file, same_name_key
from pytest_gemdirect.sim.comfyui.stats import RequestStats
from pytest_gemdirect.sim.faults import FaultPlan

log = logging.getLogger("pytest_gemdirect.sim.comfyui")


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass(eq=False)
class Conn:
    sid: str
    ws: web.WebSocketResponse
    transport: Any
    flags: dict[str, Any] = field(default_factory=dict)


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
        models: Mapping[str, Iterable[str]] | None = None,
        models_from: Iterable[Path | str] = (),
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
        shelf: dict[str, list[str]] = {"checkpoints": list(checkpoints)}
        for model_folder, names in (models or {}).items():
            shelf.setdefault(model_folder, []).extend(names)
        self.models = ModelShelf(
            shelf,
            withhold_first=any(f.name == "missing-model" and f.scene is None for f in self.faults.faults),
        )
        for path in models_from:
            self.models.learn(model_names_in_file(Path(path)))
        self.crash_exits_process = crash_exits_process
        self.on_crash: Callable[[], None] | None = None

        self.number = 0
        self.queue: list[tuple[float, int, tuple[Any, ...]]] = []
        self._seq = 0
        self.currently_running: dict[int, tuple[Any, ...]] = {}
        self.task_counter = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, CacheEntry] = {}
        self.attempts: dict[str | None, int] = {}
        self.job_running = False
        self.free_memory_pending = False

        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.conns: set[Conn] = set()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.silenced: dict[str, str] = {}  # prompt_id -> client_id (ws-silent per scene)
        self.prompt_scenes: dict[str, str | None] = {}  # prompt_id -> scene, for faults on /history
        self.garbage_served: dict[str, int] = {}  # history-garbage: non-JSON answers so far per prompt
        self.view_aliases: dict[tuple[str, str, str], Path] = {}  # names-hostile: (type, subfolder, name)

        self.interrupt_flag = False
        self.interrupt_event: asyncio.Event | None = None
        self.wakeup: asyncio.Event | None = None
        self.worker_task: asyncio.Task[None] | None = None
        self.late_handles: list[asyncio.TimerHandle] = []
        self.pool: ThreadPoolExecutor | None = None
        self.save_lock = threading.Lock()
        self._counters: dict[tuple[str, str], int] = {}
        self.crashed = False
        self.requests = RequestStats()  # instrumentation only (GET /gemdirect/stats, log lines)

    # ------------------------------------------------------------------ lifecycle (aiohttp signals)
    async def on_startup(self, app: web.Application) -> None:
        self.interrupt_event = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gemdirect-comfyui-io")

    async def on_shutdown(self, app: web.Application) -> None:
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server shutdown"), 0.2)

    async def on_cleanup(self, app: web.Application) -> None:
        for handle in self.late_handles:
            handle.cancel()
        self.late_handles.clear()
        task = self.worker_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 1.0)
        if self.pool is not None:
            # Let an image write in flight finish (bounded) so nothing writes after stop() returns.
            pool = self.pool
            self.pool = None
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.to_thread(pool.shutdown, True, cancel_futures=True), 1.0)

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking image work off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, fn, *args)

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
    def _abort(conn: Conn, flush: bool = False) -> None:
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
        raise Crash()

    # ------------------------------------------------------------------ queue
    async def put(self, item: tuple[Any, ...]) -> None:
        heapq.heappush(self.queue, (item[0], self._seq, item))
        self._seq += 1
        await self.queue_updated()
        if self.wakeup is not None:
            self.wakeup.set()

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

    # ------------------------------------------------------------------ interrupt

    def interrupt(self) -> None:
        self.interrupt_flag = True
        if self.interrupt_event is not None:
            self.interrupt_event.set()

    # ------------------------------------------------------------------ files
    def input_files(self, subfolder: str = "", suffixes: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
        """Files of the input folder (or one of its subfolders, named with it) with these suffixes."""
        folder = self.input_dir / subfolder if subfolder else self.input_dir
        try:
            names = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
        except OSError:
            names = []
        return sorted(f"{subfolder}/{name}" if subfolder else name for name in names)

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
            raise NodeFailure(err, "Exception", save_traceback())
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
    def object_info(self, *, withhold: Iterable[str] = (), spellings: Iterable[str] = ()) -> dict[str, Any]:
        """``/object_info``: the recorded table with this server's input files and model files.

        ``withhold``: model names left out (missing-model for one scene); ``spellings``: names to
        list as given when the server has them under the other separator (either is valid).
        """
        info = dict(recorded_object_info())
        changed: dict[str, dict[str, Any]] = {}

        def entry(class_type: str) -> dict[str, Any]:
            if class_type not in changed:
                changed[class_type] = copy.deepcopy(info[class_type])
            return changed[class_type]

        files = self.input_files()
        for class_type, name in input_file_inputs():
            _set_options(entry(class_type), name, files)
        for (class_type, name), (subfolder, suffixes) in INPUT_FILE_LISTS.items():
            _set_options(entry(class_type), name, self.input_files(subfolder, suffixes))
        withheld = {same_name_key(n) for n in withhold}
        extra = list(spellings)
        for class_type, inputs in model_inputs().items():
            for name, folder in inputs.items():
                recorded = combo_options(declared_inputs(info[class_type])[name]) or []
                offered = self.models.offer(folder)
                offered += [n for n in extra if n not in offered and self.models.has(folder, n)]
                offered = [n for n in offered if same_name_key(n) not in withheld]
                _set_options(entry(class_type), name, [*offered, *recorded])
        info.update(changed)
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


def _set_options(class_info: dict[str, Any], name: str, options: list[Any]) -> None:
    """Set the choices of a combo input in either of ComfyUI's two spellings of a combo."""
    inputs = class_info["input"]
    category = "required" if name in inputs.get("required", {}) else "optional"
    definition = inputs[category][name]
    if isinstance(definition[0], list):
        definition[0] = options
    else:
        definition[1]["options"] = options


STATE_KEY: web.AppKey[ComfyUIState] = web.AppKey("gemdirect_comfyui_state")
