"""An embedded OpenAI-compatible LLM server that answers like LM Studio, with injectable faults.

Routes (every one the harness uses against LM Studio):

- ``GET /v1/models`` — OpenAI list shape ``{"object": "list", "data": [{"id", "object": "model",
  "owned_by"}]}``.
- ``GET /api/v0/models`` and ``GET /api/v0/models/{model}`` — LM Studio's REST shape with
  ``type``, ``publisher``, ``arch``, ``quantization``, ``state`` ("loaded" / "not-loaded") and
  ``max_context_length`` (switched off with ``lmstudio_rest=False``, like a plain OpenAI server).
- ``POST /v1/chat/completions`` (also ``/api/v0/chat/completions``) — OpenAI chat completion shape
  with ``usage`` and ``finish_reason``.

A request that asks for a story (a ``json_schema`` / ``json_object`` response format, or the words
story/scenes in its messages) gets a story JSON of N scenes valid against
``schemas/story.schema.json`` (no ``metadata``): N is the ``minItems`` of ``scenes`` in the
response_format's schema, else ``(\\d+) scenes`` in the last user message, else 3. The story is a
pure function of the simulator's seed and the request (model, messages, request ``seed``), so the
same request gets the same content bytes and another seed gets another story. The content is the
bare JSON; with ``plain_fenced=True`` a request without a JSON response_format gets it wrapped in
prose and a fenced code block, as chat models tend to answer. Any other chat gets a short text
(``OK`` when the prompt asks for it).

Faults (``FaultPlan.active(name)``):

- ``llm-down``: :class:`LLMSimulator` binds its port but never listens, so a client sees
  *connection refused* (and nobody else can take the port meanwhile). An app from
  :func:`create_llm_app` served some other way can only drop each connection without an answer.
- ``llm-timeout``: chat completions are accepted and never answered until the server stops
  (``/v1/models`` still answers: the server is up, the model hangs). ``stop()`` is not delayed.
- ``llm-garbage``: story requests are answered with prose that is not JSON.
- ``llm-reject-json-schema``: HTTP 400 for ``response_format`` type ``json_schema``.
- ``llm-json-object-only``: HTTP 400 unless ``response_format`` is ``json_object`` or absent.
- ``llm-control-chars``: the story JSON has raw newlines and tabs inside its strings.
- ``llm-truncated``: the story JSON is cut off halfway with ``finish_reason: "length"``.
- ``llm-slow-first``: the first chat completion takes ``slow_first_s`` seconds (default 3).
- ``llm-500``: HTTP 500 to chat completions.

A request naming a model that is not listed gets LM Studio's answer (HTTP 400, ``code``
``model_not_found``, "Invalid model identifier ...", the downloaded models as examples). A
``json_object`` format is accepted by default (as OpenAI does); pass
``formats=("json_schema", "text")`` to refuse it with LM Studio's own message.
Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.server import ServerThread

DEFAULT_MODEL = "gemdirect-sim-7b"


@dataclass(frozen=True)
class SimModel:
    """One model the simulator lists (LM Studio REST fields)."""

    id: str
    state: str = "loaded"  # "loaded" | "not-loaded"
    type: str = "llm"
    publisher: str = "gemdirect"
    arch: str = "llama"
    compatibility_type: str = "gguf"
    quantization: str = "Q4_K_M"
    max_context_length: int = 32768

    def rest(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "type": self.type,
            "publisher": self.publisher,
            "arch": self.arch,
            "compatibility_type": self.compatibility_type,
            "quantization": self.quantization,
            "state": self.state,
            "max_context_length": self.max_context_length,
        }


DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel(DEFAULT_MODEL),
    SimModel("gemdirect-sim-13b", state="not-loaded", quantization="Q5_K_M"),
)
ALL_FORMATS: tuple[str, ...] = ("json_schema", "json_object", "text")
STORY_WORDS = re.compile(r"\bstor(?:y|ies)\b|\bscenes?\b", re.IGNORECASE)
SCENES_IN_TEXT = re.compile(r"(\d+) scenes", re.IGNORECASE)


@dataclass
class LLMState:
    """Everything one simulated LLM server holds."""

    faults: FaultPlan
    seed: int
    models: tuple[SimModel, ...]
    slow_first_s: float
    lmstudio_rest: bool
    api_key: str | None
    formats: tuple[str, ...]
    plain_fenced: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    completions: int = 0
    closing: asyncio.Event | None = None

    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]


STATE_KEY: web.AppKey[LLMState] = web.AppKey("gemdirect_llm_state", LLMState)


# ---------------------------------------------------------------------------------------- errors
def _error(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _lmstudio_error(status: int, message: str) -> web.Response:
    """LM Studio's terse form for request-shape errors: ``{"error": "<text>"}``."""
    return web.json_response({"error": message}, status=status)


# ---------------------------------------------------------------------------------------- stories
_PLACES = (
    "a lighthouse on a basalt cliff",
    "a night market under paper lanterns",
    "a glacier cave lit in blue",
    "a rooftop garden above a rainy city",
    "an abandoned observatory in the desert",
    "a harbour at dawn with fishing boats",
    "a forest of birch trees in the first snow",
    "a train crossing a stone viaduct",
)
_HEROES = (
    "a keeper in a yellow raincoat",
    "a girl with a brass telescope",
    "an old cartographer",
    "a red fox",
    "a courier on a bicycle",
    "two astronomers",
    "a paper crane come to life",
)
_MOODS = (
    "golden hour light",
    "soft fog",
    "moonlight",
    "neon reflections",
    "warm candlelight",
    "a storm front",
)
_ACTIONS = (
    "looks up as the light turns",
    "follows a trail of glowing footprints",
    "opens a door that was never there",
    "releases a kite into the wind",
    "discovers a map drawn in frost",
    "waves to a passing ship",
    "lights a single lantern",
)
_MOTIONS = (
    "slow push-in, gentle parallax",
    "camera pans left, drifting particles",
    "slow orbit around the subject",
    "tilt up towards the sky",
    "static camera, wind moves the scene",
    "dolly out, light flickers",
)
_TITLE_WORDS = ("Lanterns", "Tides", "Frost", "Signals", "Embers", "Orbits", "Echoes", "Harbours")
_SCENE_TITLES = (
    "First Light",
    "The Signal",
    "Crossing",
    "The Door",
    "Lantern",
    "The Map",
    "Homeward",
    "Arrival",
    "Drift",
)
_TITLE_TAILS = ("over the Bay", "of the North", "at Dawn", "/ Night Shift", "in Blue", ": a Return")


def make_sim_story(scene_count: int, key: str) -> dict[str, Any]:
    """A story of ``scene_count`` scenes, a pure function of ``key`` (no metadata)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big"))
    hero = rng.choice(_HEROES)
    place = rng.choice(_PLACES)
    title = f"{rng.choice(_TITLE_WORDS)} {rng.choice(_TITLE_TAILS)}"
    scenes = []
    for index in range(1, scene_count + 1):
        where = place if index == 1 else rng.choice(_PLACES)
        mood = rng.choice(_MOODS)
        action = rng.choice(_ACTIONS)
        scenes.append(
            {
                "id": f"scene-{index:03d}",
                "title": rng.choice(_SCENE_TITLES),
                "visual_prompt": f"{hero} {action} in {where}, {mood}, cinematic still, highly detailed",
                "motion_prompt": rng.choice(_MOTIONS),
            }
        )
    return {
        "title": title,
        "logline": f"{hero.capitalize()} and {place}: {scene_count} moments.",
        "scenes": scenes,
    }


def _with_raw_control_chars(text: str) -> str:
    """JSON text whose escaped newlines and tabs inside strings become the raw characters."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


# ---------------------------------------------------------------------------------------- requests
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def scene_count_of(body: dict[str, Any]) -> int:
    """N for a story request: the schema's scenes minItems, else "(\\d+) scenes", else 3."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        scenes = (schema.get("properties") or {}).get("scenes") if isinstance(schema, dict) else None
        if isinstance(scenes, dict) and isinstance(scenes.get("minItems"), int) and scenes["minItems"] > 0:
            return min(99, int(scenes["minItems"]))
    match = SCENES_IN_TEXT.search(_last_user_text(body.get("messages") or []))
    if match and int(match.group(1)) > 0:
        return min(99, int(match.group(1)))
    return 3


def _is_story_request(body: dict[str, Any], rtype: str | None) -> bool:
    if rtype in ("json_schema", "json_object"):
        return True
    texts = [_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
    return any(STORY_WORDS.search(t) for t in texts)


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


# ---------------------------------------------------------------------------------------- handlers
class LLMHandlers:
    def __init__(self, state: LLMState) -> None:
        self.state = state

    def _record(self, request: web.Request, body: Any) -> None:
        self.state.requests.append(
            {"method": request.method, "path": request.path, "headers": dict(request.headers), "body": body}
        )

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        key = self.state.api_key
        if key is None:
            return None
        if request.headers.get("Authorization", "") == f"Bearer {key}":
            return None
        return _error(
            401, "Invalid or missing API token.", type_="invalid_request_error", code="invalid_api_key"
        )

    async def models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        data = [{"id": m.id, "object": "model", "owned_by": "organization_owner"} for m in self.state.models]
        return web.json_response({"object": "list", "data": data})

    async def rest_models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if not self.state.lmstudio_rest:
            return _lmstudio_error(404, f"Unexpected endpoint or method. ({request.method} {request.path})")
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        return web.json_response({"object": "list", "data": [m.rest() for m in self.state.models]})

    async def rest_model(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if not self.state.lmstudio_rest:
            return _lmstudio_error(404, f"Unexpected endpoint or method. ({request.method} {request.path})")
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        wanted = request.match_info["model"]
        for model in self.state.models:
            if model.id == wanted:
                return web.json_response(model.rest())
        return _lmstudio_error(404, f'Model "{wanted}" not found')

    async def chat(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        raw = await request.read()
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._record(request, None)
            return _lmstudio_error(400, "Unexpected token in JSON body")
        self._record(request, body)
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            return _lmstudio_error(400, "The request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _lmstudio_error(400, "'messages' field is required and must be a non-empty array")
        ids = state.model_ids()
        model = body.get("model") or ids[0]
        if not isinstance(model, str) or model not in ids:
            examples = ", ".join(ids[:3])
            return _error(
                400,
                f'Invalid model identifier "{model}".'
                f" Please specify a valid downloaded model (e.g., {examples}).",
                type_="invalid_request_error",
                param="model",
                code="model_not_found",
            )
        if body.get("stream"):
            return _lmstudio_error(400, "The gemdirect simulator does not stream; send stream: false")

        fmt = body.get("response_format")
        rtype: str | None = None
        if fmt is not None:
            if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
                return _lmstudio_error(400, "'response_format' must be an object with a 'type'")
            rtype = fmt["type"]
        rejected = self._rejects_format(rtype, fmt)
        if rejected is not None:
            return rejected

        if state.faults.active("llm-500"):
            return _error(
                500,
                "Internal server error: the model crashed while generating (simulated llm-500)",
                type_="server_error",
            )
        if state.faults.active("llm-timeout"):
            await self._wait_closing(None)  # until the server stops: the client gives up first
            return _lmstudio_error(503, "The server is shutting down")
        state.completions += 1
        if state.faults.active("llm-slow-first") and state.completions == 1 and state.slow_first_s > 0:
            await self._wait_closing(state.slow_first_s)
        return web.json_response(self._complete(body, model, rtype))

    def _rejects_format(self, rtype: str | None, fmt: Any) -> web.Response | None:
        faults = self.state.faults
        if rtype is None:
            return None
        if rtype == "json_schema" and faults.active("llm-reject-json-schema"):
            return _error(
                400,
                "response_format type 'json_schema' is not supported by this server",
                type_="invalid_request_error",
                param="response_format",
            )
        if faults.active("llm-json-object-only") and rtype != "json_object":
            return _lmstudio_error(400, "'response_format.type' must be 'json_object'")
        if rtype not in self.state.formats:
            allowed = " or ".join(f"'{f}'" for f in self.state.formats)
            return _lmstudio_error(400, f"'response_format.type' must be {allowed}")
        if rtype == "json_schema":
            spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                return _lmstudio_error(400, "'response_format.json_schema.schema' must be an object")
        return None

    async def _wait_closing(self, timeout: float | None) -> None:
        closing = self.state.closing
        if closing is None:  # pragma: no cover - set at startup
            closing = self.state.closing = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closing.wait(), timeout)

    def _complete(self, body: dict[str, Any], model: str, rtype: str | None) -> dict[str, Any]:
        state = self.state
        messages = body["messages"]
        faults = state.faults
        finish_reason = "stop"
        key = json.dumps(
            {"sim_seed": state.seed, "seed": body.get("seed"), "model": model, "messages": messages},
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )
        if _is_story_request(body, rtype):
            if faults.active("llm-garbage"):
                content = (
                    "Once upon a time there was a story, but I am not able to format it as JSON today. "
                    "Scene one: a lighthouse. Scene two: the sea. The end."
                )
            else:
                story = make_sim_story(scene_count_of(body), key)
                if faults.active("llm-control-chars"):
                    for scene in story["scenes"]:
                        scene["visual_prompt"] = scene["visual_prompt"].replace(", ", ",\n", 1)
                        scene["motion_prompt"] = "\t" + scene["motion_prompt"]
                text = json.dumps(story, ensure_ascii=False, indent=2)
                if faults.active("llm-control-chars"):
                    text = _with_raw_control_chars(text)
                if state.plain_fenced and rtype in (None, "text"):
                    text = f"Here is your story:\n\n```json\n{text}\n```\n"
                content = text
                if faults.active("llm-truncated"):
                    content = content[: len(content) // 2]
                    finish_reason = "length"
        else:
            prompt = _last_user_text(messages)
            content = (
                "OK"
                if re.search(r"\bok\b", prompt, re.IGNORECASE)
                else "Hello from the gemdirect LLM simulator."
            )
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
            if _tokens(content) > max_tokens:
                content = content[: max_tokens * 4]
                finish_reason = "length"
        prompt_tokens = sum(_tokens(_text_of(m.get("content"))) for m in messages)
        completion_tokens = _tokens(content)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:21]
        return {
            "id": f"chatcmpl-{digest}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "stats": {},
            "system_fingerprint": model,
        }


@web.middleware
async def _down_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """llm-down when the app is served by someone else: drop the connection without an answer."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


def create_llm_app(
    *,
    faults: FaultPlan,
    seed: int = 42,
    models: Sequence[SimModel] = DEFAULT_MODELS,
    slow_first_s: float = 3.0,
    lmstudio_rest: bool = True,
    api_key: str | None = None,
    formats: Iterable[str] = ALL_FORMATS,
    plain_fenced: bool = False,
) -> web.Application:
    """The simulator as an aiohttp application (see the module docstring for routes and faults).

    ``models``: what the server lists (the first one is the default). ``slow_first_s``: the delay
    of ``llm-slow-first``. ``lmstudio_rest=False``: no ``/api/v0`` routes (HTTP 404, like a plain
    OpenAI-compatible server). ``api_key``: when set, every route answers 401 unless the request
    carries ``Authorization: Bearer <api_key>``. ``formats``: the ``response_format`` types
    accepted (others get LM Studio's HTTP 400). ``plain_fenced``: see the module docstring.
    """
    if not models:
        raise ValueError("the LLM simulator needs at least one model")
    state = LLMState(
        faults=faults if faults is not None else FaultPlan(),
        seed=int(seed),
        models=tuple(models),
        slow_first_s=max(0.0, float(slow_first_s)),
        lmstudio_rest=bool(lmstudio_rest),
        api_key=api_key,
        formats=tuple(formats),
        plain_fenced=bool(plain_fenced),
    )
    middlewares = [_down_middleware] if state.faults.active("llm-down") else []
    app = web.Application(middlewares=middlewares)
    app[STATE_KEY] = state
    handlers = LLMHandlers(state)

    async def on_startup(app: web.Application) -> None:
        state.closing = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        if state.closing is not None:
            state.closing.set()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/api/v0/models", handlers.rest_models)
    app.router.add_get("/api/v0/models/{model}", handlers.rest_model)
    app.router.add_post("/v1/chat/completions", handlers.chat)
    app.router.add_post("/api/v0/chat/completions", handlers.chat)
    return app


class LLMSimulator:
    """The LLM simulator on a real port, served from a background thread.

    >>> with LLMSimulator(faults=FaultPlan.parse(["llm-slow-first"])) as sim:
    ...     requests.get(sim.url + "/v1/models").json()

    Under ``llm-down`` the port is bound but never listened on: connecting is refused.
    """

    def __init__(  # noqa: PLR0913 - keyword-only simulator options, each with a default
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: FaultPlan | None = None,
        seed: int = 42,
        models: Sequence[SimModel] = DEFAULT_MODELS,
        slow_first_s: float = 3.0,
        lmstudio_rest: bool = True,
        api_key: str | None = None,
        formats: Iterable[str] = ALL_FORMATS,
        plain_fenced: bool = False,
    ) -> None:
        self.host = host
        self.requested_port = int(port)
        self.faults = faults if faults is not None else FaultPlan()
        self.seed = int(seed)
        self.app = create_llm_app(
            faults=self.faults,
            seed=self.seed,
            models=models,
            slow_first_s=slow_first_s,
            lmstudio_rest=lmstudio_rest,
            api_key=api_key,
            formats=formats,
            plain_fenced=plain_fenced,
        )
        self.state = self.app[STATE_KEY]
        self._server: ServerThread | None = None
        self._refusing: socket.socket | None = None
        self._port: int | None = None

    # --- public --------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        if self._server is not None:
            return self._server.port
        return self._port

    @property
    def url(self) -> str:
        if self._server is not None:
            return self._server.url
        if self._port is None:
            raise RuntimeError("LLM simulator not started")
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def model(self) -> str:
        """The first listed model (what a client without a configured model uses)."""
        return self.state.models[0].id

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far: ``{"method", "path", "headers", "body"}`` (body parsed)."""
        return list(self.state.requests)

    def start(self) -> LLMSimulator:
        if self._server is not None or self._refusing is not None:
            raise RuntimeError("LLM simulator already started")
        if self.faults.active("llm-down"):
            self._refusing = _bind_without_listening(self.host, self.requested_port)
            self._port = int(self._refusing.getsockname()[1])
            return self
        server = ServerThread(self.app, self.host, self.requested_port, name="gemdirect-llm-sim")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._refusing is not None:
            with contextlib.suppress(OSError):
                self._refusing.close()
            self._refusing = None

    def __enter__(self) -> LLMSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_without_listening(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` without listening, so connections to it are refused."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last: OSError | None = None
    for family, socktype, proto, _canon, addr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            if sys.platform == "win32" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            sock.bind(addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"cannot bind {host}:{port}")
