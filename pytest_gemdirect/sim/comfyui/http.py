"""The simulator's HTTP and WebSocket routes, as ComfyUI 0.3.64's server.py answers them."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import mimetypes
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from pytest_gemdirect.sim.comfyui.constants import (
    COMFYUI_VERSION,
    INTERNAL_ERROR_TEXT,
    MODEL_FOLDERS,
    SERVER_FEATURES,
)
from pytest_gemdirect.sim.comfyui.execution import start_worker
from pytest_gemdirect.sim.comfyui.faulty_http import (
    GARBAGE_ANSWERS,
    garbage,
    json_answer,
    scene_in,
    trickle_file,
    with_junk,
)
from pytest_gemdirect.sim.comfyui.graph import scene_of
from pytest_gemdirect.sim.comfyui.models import model_names_in
from pytest_gemdirect.sim.comfyui.state import STATE_KEY, ComfyUIState, Conn
from pytest_gemdirect.sim.comfyui.stats import STATS_ROUTE, counting_middleware, stats_handler
from pytest_gemdirect.sim.comfyui.validation import validate_prompt
from pytest_gemdirect.sim.server import track_websocket

log = logging.getLogger("pytest_gemdirect.sim.comfyui")


def _said(line: str) -> None:
    """A request that changes what the GPU does, in the simulator's log (simulator.log under the harness)."""
    print(f"gemdirect simulator: {line}", flush=True)


mimetypes.add_type("image/webp", ".webp")  # older platforms' tables lack it
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/mp4", ".mp4")


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
        if self.state.faults.active("history-huge"):  # no scene here: only when on for every scene
            return await json_answer(with_junk(self.state.object_info()))
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
        return web.json_response(self.state.models.offer(folder))

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
            valid = validate_prompt(
                prompt,
                self._info_for(prompt),
                state.annotated_filepath,
                json_data.get("partial_execution_targets"),
            )
        except Exception:
            log.exception("validation crashed")
            return _internal_error()
        extra_data = dict(json_data.get("extra_data") or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid.ok:
            return web.json_response({"error": valid.error, "node_errors": valid.node_errors}, status=400)
        item = (number, prompt_id, prompt, extra_data, valid.outputs)
        client_id = extra_data.get("client_id")
        state.prompt_scenes[prompt_id] = scene_of(prompt)
        if client_id is not None and state.faults.active("ws-silent", scene_of(prompt)):
            state.silenced[prompt_id] = client_id
        await state.put(item)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors})

    def _info_for(self, prompt: Any) -> dict[str, Any]:
        """The table a prompt is validated against: the models it names are on the server from now
        on (missing-model aside), under either separator."""
        asked = list(model_names_in(prompt))
        withhold: list[str] = []
        scene = scene_of(prompt) if isinstance(prompt, dict) else None
        if asked and self.state.faults.active("missing-model", scene) and self.state.models.withheld is None:
            withhold.append(asked[0][1])  # missing-model for one scene: its first model is gone
        self.state.models.learn(asked, except_names=withhold)
        if self.state.models.withheld is not None:
            withhold.append(self.state.models.withheld)
        return self.state.object_info(withhold=withhold, spellings=[name for _, name in asked])

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
                _said(f"POST /queue delete {prompt_id}")
                await self.state.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            max_items = int(query["max_items"]) if "max_items" in query else None
            offset = int(query["offset"]) if "offset" in query else -1
        except ValueError:
            return _internal_error()
        history = self.state.get_history(max_items, offset)
        if not self._huge_anywhere():
            return web.json_response(history)
        return await json_answer({key: self._maybe_huge(key, entry) for key, entry in history.items()})

    async def get_history_item(self, request: web.Request) -> web.Response:
        state = self.state
        prompt_id = request.match_info["prompt_id"]
        if state.faults.active("history-garbage", state.prompt_scenes.get(prompt_id)):
            served = state.garbage_served.get(prompt_id, 0)
            if served < GARBAGE_ANSWERS:
                state.garbage_served[prompt_id] = served + 1
                return garbage(served)
        entry = state.history.get(prompt_id)
        if entry is None:
            return web.json_response({})
        if self._huge_anywhere():
            return await json_answer({prompt_id: self._maybe_huge(prompt_id, copy.deepcopy(entry))})
        return web.json_response({prompt_id: copy.deepcopy(entry)})

    def _huge_anywhere(self) -> bool:
        return any(f.name == "history-huge" for f in self.state.faults.faults)

    def _maybe_huge(self, prompt_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        """history-huge: the entry with 50 MB of junk fields when the fault is on for its scene."""
        scene = self.state.prompt_scenes.get(prompt_id)
        return with_junk(entry) if self.state.faults.active("history-huge", scene) else entry

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
        running = [item[1] for item in self.state.currently_running.values()]
        _said(f"POST /interrupt prompt_id={prompt_id or '(none: global)'} running={','.join(running) or '-'}")
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
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        alias = self.state.view_aliases.get(
            (query.get("type", "output"), query.get("subfolder", ""), query["filename"])
        )
        found = (alias, alias.name) if alias is not None else self._view_file(query)
        if isinstance(found, web.Response):
            return found
        file, filename = found
        if not os.path.isfile(file):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        preview = query.get("preview")
        channel = query.get("channel", "rgba")
        if preview or channel in ("rgb", "a"):
            try:
                body, content_type = await self.state.offload(_convert_view, file, preview, channel)
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
        headers = {**disposition, "Content-Type": content_type}
        if self.state.faults.active("view-trickle", scene_in(query.get("subfolder", ""), query["filename"])):
            return await trickle_file(request, Path(file), headers)
        return web.FileResponse(file, headers=headers)

    def _view_file(self, query: Mapping[str, str]) -> tuple[str, str] | web.Response:
        """The file a /view query names (path, basename), or the error status ComfyUI answers."""
        state = self.state
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
        return os.path.join(output_dir, filename), filename

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
        conn = Conn(sid, ws, request.transport)
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
    app = web.Application(
        client_max_size=SERVER_FEATURES["max_upload_size"] + 1024 * 1024,
        middlewares=[counting_middleware(state.requests)],
    )
    app[STATE_KEY] = state
    h = _Handlers(state)
    app.router.add_get("/", h.index)
    app.router.add_get(STATS_ROUTE, stats_handler(state.requests))
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
    app.on_startup.append(start_worker)
    app.on_shutdown.append(state.on_shutdown)
    app.on_cleanup.append(state.on_cleanup)
    return app
