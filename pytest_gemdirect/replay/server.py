"""Answering a new run from a trace, in place of ComfyUI and the LLM (aiohttp, one event loop).

The new run's requests are translated into the recorded run's words (its run id, prompt ids and
client ids: :class:`Aliases`) and looked up:

- ``POST /prompt``: the first unused recorded prompt with the same graph (after the per-run
  changes: the run id in the save prefix and the uploaded keyframe's name). Its answer is given
  back with the ids rewritten, and the WebSocket frames that prompt's client read are sent to the
  new client at the recorded pace (seconds since the POST divided by ``speed``; 0: at once).
- ``GET /history/<id>``, ``GET /view`` and every other request: the recorded answers to the same
  request, in the order they were given (the last one again once they run out).
- ``GET /queue``: each replayed prompt as the recording's ``/queue`` showed it at the point the
  replay has reached (its frames sent, its history answers given).
- ``POST /upload/image``: the recorded upload of the same bytes.

A request the recording does not hold gets HTTP 409 ``replay diverged at …`` naming what was
asked, what the recording holds, and the settings that differ from the recording's. Recorded
failures replay as they were: a 400, a history that never comes, a stream that stops, an
answer that never came (held until the client gives up).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pytest_gemdirect.names import safe_file_name
from pytest_gemdirect.replay.recorder import canonical, sha256
from pytest_gemdirect.replay.trace import Trace

DIVERGED_STATUS = 409
HELD_ANSWER_S = 3600.0  # a recorded timeout: held until the client's own deadline ends the exchange
_SCENE = re.compile(r"scene-\d{3}")
_COMMANDS = ("/interrupt", "/free", "/queue")  # POSTs that change the server: always accepted


class Aliases:
    """The new run's ids and the recorded run's, both ways (plain text replacement)."""

    def __init__(self) -> None:
        self._to_old: dict[str, str] = {}

    def add(self, new: str, old: str) -> None:
        if new and old and new != old:
            self._to_old[new] = old

    def to_old(self, text: str) -> str:
        for new, old in self._to_old.items():
            text = text.replace(new, old)
        return text

    def to_new(self, text: str) -> str:
        for new, old in self._to_old.items():
            text = text.replace(old, new)
        return text


@dataclass
class RecordedPrompt:
    """One recorded ``POST /prompt``, its graph and the frames its client read after it."""

    record: dict[str, Any]
    graph: str  # canonical JSON of the recorded graph
    scene: str
    client_id: str
    prompt_id: str
    frames: list[dict[str, Any]]
    used: bool = False


@dataclass
class Replayed:
    """A new prompt being replayed: its recorded twin and how far the replay has got (trace seconds)."""

    prompt: RecordedPrompt
    client_id: str
    number: Any
    cursor: float
    done: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def first_difference(asked: Any, recorded: Any, where: str = "") -> str | None:
    """``at 3.inputs.steps: asked 20, the recording has 25``; None when both are equal."""
    if isinstance(asked, dict) and isinstance(recorded, dict):
        for key in sorted(set(asked) | set(recorded), key=str):
            here = f"{where}.{key}" if where else str(key)
            if key not in recorded:
                return f"at {here}: asked {_short(asked[key])}, the recording has no {here}"
            if key not in asked:
                return f"at {here}: the recording has {_short(recorded[key])}, not asked"
            found = first_difference(asked[key], recorded[key], here)
            if found:
                return found
        return None
    if isinstance(asked, list) and isinstance(recorded, list) and len(asked) == len(recorded):
        for index, (a, r) in enumerate(zip(asked, recorded, strict=True)):
            found = first_difference(a, r, f"{where}[{index}]")
            if found:
                return found
        return None
    if asked != recorded:
        return f"at {where or '(top)'}: asked {_short(asked)}, the recording has {_short(recorded)}"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ReplayState:
    """Everything one replay knows and has done; used from the one event loop only."""

    def __init__(self, trace: Trace, *, speed: float, run_id: str, differences: list[str]) -> None:
        self.trace = trace
        self.speed = speed
        self.differences = differences
        self.aliases = Aliases()
        old_run = str(trace.header.get("run_id") or "")
        self.aliases.add(run_id, old_run)
        self.aliases.add(safe_file_name(run_id), safe_file_name(old_run))
        self.sequences: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        self.served: dict[tuple[str, ...], int] = defaultdict(int)
        self.prompts: list[RecordedPrompt] = []
        self.uploads: list[dict[str, Any]] = []
        self.replayed: dict[str, Replayed] = {}  # by the new prompt id
        self.sockets: dict[str, web.WebSocketResponse] = {}  # by the new client id
        self.divergences: list[str] = []
        self.queue_states: dict[str, list[tuple[float, str]]] = defaultdict(list)  # old prompt id
        self.first_status: dict[str, Any] | None = None
        self._index()

    # --- the recording, indexed -----------------------------------------------------------

    def _index(self) -> None:
        frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.trace.of_kind("ws"):
            frames[str(record.get("client_id"))].append(record)
            message = record.get("message") or {}
            if self.first_status is None and message.get("type") == "status":
                self.first_status = message
        for record in self.trace.of_kind("http"):
            service, method, path = record["service"], record["method"], record["path"]
            if service == "comfyui" and method == "POST" and path == "/prompt":
                self._index_prompt(record, frames)
            elif service == "comfyui" and method == "POST" and path == "/upload/image":
                self.uploads.append(record)
            else:
                self.sequences[
                    self.key(service, method, path, record["query"], record.get("request"))
                ].append(record)
            if service == "comfyui" and method == "GET" and path == "/queue" and record.get("status") == 200:
                self._index_queue(record)

    def _index_prompt(self, record: dict[str, Any], frames: Mapping[str, list[dict[str, Any]]]) -> None:
        payload = (record.get("request") or {}).get("json") or {}
        client_id, prompt_id = str(payload.get("client_id") or ""), str(payload.get("prompt_id") or "")
        graph = canonical(payload.get("prompt"))
        scene = _SCENE.search(graph)
        after = [f for f in frames.get(client_id, []) if f.get("since_prompt") is not None]
        self.prompts.append(
            RecordedPrompt(record, graph, scene.group(0) if scene else "", client_id, prompt_id, after)
        )

    def _index_queue(self, record: dict[str, Any]) -> None:
        try:
            data = json.loads(self.trace.body(record))
        except ValueError:
            return
        listed: dict[str, str] = {}
        for state, items in (("running", data.get("queue_running")), ("pending", data.get("queue_pending"))):
            for item in items or []:
                if isinstance(item, list) and len(item) > 1:
                    listed[str(item[1])] = state
        for prompt in self.prompts:
            if prompt.record["at"] <= record["at"]:
                self.queue_states[prompt.prompt_id].append(
                    (record["at"], listed.get(prompt.prompt_id, "absent"))
                )

    @staticmethod
    def key(
        service: str, method: str, path: str, query: Mapping[str, Any], request: Mapping[str, Any] | None
    ) -> tuple[str, ...]:
        body = str((request or {}).get("sha256") or "")
        return (service, method, path, canonical({str(k): str(v) for k, v in query.items()}), body)

    # --- answers --------------------------------------------------------------------------

    def next_recorded(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        records = self.sequences.get(key)
        if not records:
            return None
        index = self.served[key]
        self.served[key] = index + 1
        return records[min(index, len(records) - 1)]

    def diverged(self, asked: str, what: str, holds: str) -> web.Response:
        text = f"replay diverged at {asked}: {what}; the recording holds {holds}"
        if self.differences:
            text += "; settings that differ from the recording: " + ", ".join(self.differences)
        self.divergences.append(text)
        print(f"gemdirect replay: {text}", file=sys.stderr, flush=True)
        return web.Response(status=DIVERGED_STATUS, text=text, content_type="text/plain")

    async def answer(
        self, record: dict[str, Any], request: web.Request, *, rewrite: bool = True
    ) -> web.StreamResponse:
        """The recorded answer (ids rewritten); a recorded failure to answer, replayed."""
        error = record.get("error")
        if error == "timeout":
            await asyncio.sleep(HELD_ANSWER_S)
        if error is not None:  # refused, reset, too large…: the connection ends without an answer
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable(text=f"recorded: {error}")
        body = self.trace.body(record)
        if rewrite and "text" in (record.get("body") or {}):
            body = self.aliases.to_new(body.decode("utf-8")).encode("utf-8")
        headers = dict(record.get("headers") or {})
        content_type = headers.pop("Content-Type", None)
        response = web.Response(status=int(record.get("status") or 200), body=body, headers=headers)
        if content_type:
            response.headers["Content-Type"] = content_type
        return response

    def cursor_to(self, prompt_id: str, at: float) -> None:
        replayed = self.replayed.get(prompt_id)
        if replayed is not None:
            replayed.cursor = max(replayed.cursor, at)

    def queue_answer(self) -> dict[str, Any]:
        running: list[Any] = []
        pending: list[Any] = []
        for new_id, replayed in self.replayed.items():
            states = [
                state
                for at, state in self.queue_states.get(replayed.prompt.prompt_id, [])
                if at <= replayed.cursor
            ]
            state = states[-1] if states else ("absent" if replayed.done else "running")
            item = [replayed.number, new_id, {}, {"client_id": replayed.client_id}, []]
            (running if state == "running" else pending if state == "pending" else []).append(item)
        return {"queue_running": running, "queue_pending": pending}

    # --- the WebSocket stream of one prompt -----------------------------------------------

    async def stream(self, replayed: Replayed, posted: float) -> None:
        for frame in replayed.prompt.frames:
            if self.speed > 0:
                delay = posted + float(frame.get("since_prompt") or 0.0) / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            ws = self.sockets.get(replayed.client_id)
            if ws is None or ws.closed:
                break
            replayed.cursor = max(replayed.cursor, float(frame.get("at") or 0.0))
            kind = frame.get("frame")
            try:
                if kind == "text":
                    await ws.send_str(
                        self.aliases.to_new(json.dumps(frame.get("message"), ensure_ascii=False))
                    )
                elif kind == "binary":
                    head = int(frame.get("event_type") or 1).to_bytes(4, "big")
                    await ws.send_bytes(head + bytes(max(int(frame.get("length") or 4) - 4, 0)))
                elif kind == "unparseable":
                    await ws.send_str("\x00 recorded: not JSON")
                elif kind == "lost":
                    await ws.close()
                    break
            except (ConnectionError, RuntimeError):
                break
        replayed.done = True


# ---------------------------------------------------------------------------------------- ComfyUI
STATE_KEY: web.AppKey[ReplayState] = web.AppKey("gemdirect_replay", ReplayState)


def _path(request: web.Request) -> str:
    path = request.path
    return path[4:] if path.startswith("/api/") else path


async def comfyui_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    path = _path(request)
    if path == "/ws":
        return await _websocket(state, request)
    if path == "/gemdirect/replay":
        return web.json_response({"divergences": state.divergences, "replayed": len(state.replayed)})
    if request.method == "POST" and path == "/prompt":
        return await _post_prompt(state, request)
    if request.method == "POST" and path == "/upload/image":
        return await _upload(state, request)
    if request.method == "GET" and path == "/queue":
        return web.json_response(state.queue_answer())
    query = {k: state.aliases.to_old(v) for k, v in request.query.items()}
    old_path = state.aliases.to_old(path)
    body = await request.read()
    request_record: dict[str, Any] | None = None
    if body:
        try:
            request_record = {
                "sha256": sha256(state.aliases.to_old(canonical(json.loads(body))).encode("utf-8"))
            }
        except ValueError:
            request_record = None
    record = state.next_recorded(state.key("comfyui", request.method, old_path, query, request_record))
    if record is None and request.method == "POST" and path in _COMMANDS:
        return web.Response(status=200)
    if record is None:
        asked = f"{request.method} {path}" + (f"?{request.query_string}" if request.query_string else "")
        return state.diverged(
            asked, "the recording has no such request", _holds(state, request.method, old_path)
        )
    if old_path.startswith("/history/"):
        prompt_id = next((new for new, r in state.replayed.items() if r.prompt.prompt_id == old_path[9:]), "")
        state.cursor_to(prompt_id, float(record.get("at") or 0.0))
    return await state.answer(record, request, rewrite=path != "/view")


def _holds(state: ReplayState, method: str, path: str) -> str:
    """What the recording has for this route, in a few words."""
    same = [key for key in state.sequences if key[1] == method and key[2] == path and key[0] == "comfyui"]
    if path == "/view":
        names = sorted({json.loads(key[3]).get("filename", "?") for key in same})
        return f"{len(names)} /view file(s): " + ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
    if same:
        return f"{method} {path} with other parameters ({len(same)} kind(s))"
    routes = sorted({f"{k[1]} {k[2]}" for k in state.sequences if k[0] == "comfyui"})
    return "only " + ", ".join(routes[:8]) + (" …" if len(routes) > 8 else "")


async def _post_prompt(state: ReplayState, request: web.Request) -> web.StreamResponse:
    try:
        payload = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": "replay: the prompt is not JSON", "node_errors": {}}, status=400)
    asked_graph = json.loads(state.aliases.to_old(canonical(payload.get("prompt"))))
    graph = canonical(asked_graph)
    match = next((p for p in state.prompts if not p.used and p.graph == graph), None)
    if match is None:
        scene_found = _SCENE.search(graph)
        scene = scene_found.group(0) if scene_found else ""
        twin = next((p for p in state.prompts if not p.used and p.scene == scene), None) or next(
            (p for p in state.prompts if not p.used), None
        )
        where = f"POST /prompt ({scene})" if scene else "POST /prompt"
        if twin is None:
            return state.diverged(
                where, "one prompt more than the recording has", f"{len(state.prompts)} prompt(s)"
            )
        why = first_difference(asked_graph, json.loads(twin.graph)) or "the graph differs"
        return state.diverged(
            where,
            f"the graph differs from the recorded {twin.scene or 'prompt'}'s {why}",
            f"{len(state.prompts)} prompt(s), {sum(not p.used for p in state.prompts)} not yet replayed",
        )
    match.used = True
    new_prompt, new_client = str(payload.get("prompt_id") or ""), str(payload.get("client_id") or "")
    state.aliases.add(new_prompt, match.prompt_id)
    state.aliases.add(new_client, match.client_id)
    response = await state.answer(match.record, request)
    if match.record.get("status") == 200:
        number = None
        try:
            number = json.loads(state.trace.body(match.record)).get("number")
        except ValueError:
            pass
        replayed = Replayed(match, new_client, number, float(match.record.get("at") or 0.0))
        state.replayed[new_prompt] = replayed
        replayed.task = asyncio.get_running_loop().create_task(state.stream(replayed, time.monotonic()))
    return response


async def _upload(state: ReplayState, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    image = form.get("image")
    if not isinstance(image, web.FileField):
        return web.Response(status=400)
    digest = sha256(image.file.read())
    matches = [u for u in state.uploads if (u.get("request") or {}).get("file") == digest]
    record = next((u for u in matches if not u.get("_used")), matches[-1] if matches else None)
    if record is None:
        names = ", ".join(
            state.aliases.to_new(str((u.get("request") or {}).get("name"))) for u in state.uploads
        )
        return state.diverged(
            f"POST /upload/image ({image.filename})",
            f"no recorded upload has these bytes (sha256 {digest[:12]}…)",
            f"{len(state.uploads)} upload(s): {names or 'none'}",
        )
    record["_used"] = True
    return await state.answer(record, request)


async def _websocket(state: ReplayState, request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    client_id = request.query.get("clientId", "")
    state.sockets[client_id] = ws
    status = json.loads(json.dumps(state.first_status or {"type": "status", "data": {"status": {}}}))
    status.setdefault("data", {})["sid"] = client_id
    await ws.send_str(json.dumps(status))
    async for _message in ws:  # nothing a client says matters; read until it closes
        pass
    if state.sockets.get(client_id) is ws:
        del state.sockets[client_id]
    return ws


def comfyui_app(state: ReplayState) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", comfyui_route)
    return app


# ---------------------------------------------------------------------------------------- LLM
async def llm_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await request.read()
    asked: Any = None
    request_record: dict[str, Any] | None = None
    if body:
        try:
            asked = json.loads(body)
            request_record = {"sha256": sha256(canonical(asked).encode("utf-8"))}
        except ValueError:
            request_record = {"sha256": sha256(body)}
    query = dict(request.query)
    record = state.next_recorded(state.key("llm", request.method, request.path, query, request_record))
    if record is not None:
        return await state.answer(record, request, rewrite=False)
    same = [
        r
        for key, records in state.sequences.items()
        for r in records
        if key[:3] == ("llm", request.method, request.path)
    ]
    where = f"{request.method} {request.path}"
    if not same:
        routes = sorted({f"{k[1]} {k[2]}" for k in state.sequences if k[0] == "llm"})
        return state.diverged(
            where, "the recording has no such request", "only " + (", ".join(routes) or "nothing")
        )
    recorded = (same[0].get("request") or {}).get("json")
    why = first_difference(asked, recorded) or "the request differs"
    return state.diverged(
        where, f"the request differs from the recorded one {why}", f"{len(same)} such request(s)"
    )


def llm_app(state: ReplayState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_route("*", "/{tail:.*}", llm_route)
    return app


__all__ = ["Aliases", "ReplayState", "comfyui_app", "first_difference", "llm_app"]
