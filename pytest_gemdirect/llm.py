"""Client for an OpenAI-compatible LLM server (LM Studio first), and the LLM health check.

Every failure is one :class:`LLMError` whose message says what happened (connection refused,
DNS or URL error, timeout, HTTP error with status and body excerpt, non-JSON answer, ...), at
which URL, and which setting to change (``--llm-url``, ``--llm-model``, ``--llm-timeout``,
``--llm-api-key``, ``--max-response-mb``). The API key is sent as a bearer token and never
appears in a message, a repr or a log line. Nothing here imports pytest.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from pytest_gemdirect import net
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.net import classify_connection_error, excerpt, innermost, redact_url
from pytest_gemdirect.policy import flag_of

if TYPE_CHECKING:
    from pytest_gemdirect.replay.recorder import Recorder

log = logging.getLogger("pytest_gemdirect.llm")

URL_SETTING = "--llm-url"
MODEL_SETTING = "--llm-model"
TIMEOUT_SETTING = "--llm-timeout"
KEY_SETTING = "--llm-api-key"
MAX_RESPONSE_SETTING = "--max-response-mb"

#: LLMError kinds and how a message names them.
KINDS: dict[str, str] = {
    net.REFUSED: "connection refused",
    net.RESET: "connection reset",
    net.DNS: "DNS lookup failed",
    "invalid_url": "invalid URL",
    net.TIMEOUT: "timeout",
    "http": "HTTP error",
    "non_json": "non-JSON answer",
    net.OTHER: "connection error",
    "bad_response": "unexpected answer",
    "too_large": "answer too large",
    "model_not_found": "model not listed",
    "no_models": "no models listed",
}
HEALTH_PROMPT = "Reply with the single word OK."


class LLMError(Exception):
    """An LLM request failed. ``kind`` is one of :data:`KINDS`; ``setting`` is the one to change.

    ``status`` and ``body`` (an excerpt) are set for HTTP errors.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        url: str,
        setting: str,
        *,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(kind, message, url, setting)
        self.kind = kind
        self.message = message
        self.url = url
        self.setting = setting
        self.status = status
        self.body = body

    def __str__(self) -> str:
        what = KINDS.get(self.kind, self.kind)
        return f"LLM {what} at {self.url}: {self.message} (setting: {self.setting})"

    def __reduce__(self) -> Any:  # keep status/body across pickling (xdist)
        return (_rebuild_error, (self.kind, self.message, self.url, self.setting, self.status, self.body))


def _rebuild_error(
    kind: str, message: str, url: str, setting: str, status: int | None, body: str | None
) -> LLMError:
    return LLMError(kind, message, url, setting, status=status, body=body)


# ---------------------------------------------------------------------------------------- URLs
@dataclass(frozen=True)
class LLMEndpoints:
    """The URLs derived from one configured LLM URL (``base`` has no ``/v1``)."""

    base: str
    v1: str
    models: str
    chat: str
    lmstudio_models: str

    @property
    def display(self) -> str:
        """``base`` with any user:password removed, for messages."""
        return redact_url(self.base)


_V1_SUFFIXES = ("/v1/chat/completions", "/v1/models", "/v1")


def normalize_llm_url(url: str) -> LLMEndpoints:
    """Accept ``http://host:1234``, ``.../v1`` or ``.../v1/chat/completions`` and derive the endpoints.

    A path prefix (a reverse proxy, ``http://host/lmstudio/v1``) is kept. Raises LLMError
    (kind ``invalid_url``, setting ``--llm-url``) for anything that is not an http(s) URL.
    """
    try:
        base = net.server_url(url)
    except ValueError as exc:
        raise LLMError("invalid_url", str(exc), redact_url(url or "") or "(empty)", URL_SETTING) from None
    for suffix in _V1_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return LLMEndpoints(
        base=base,
        v1=base + "/v1",
        models=base + "/v1/models",
        chat=base + "/v1/chat/completions",
        lmstudio_models=base + "/api/v0/models",
    )


# ---------------------------------------------------------------------------------------- results
@dataclass
class ChatResult:
    """One chat completion: the assistant text, why it stopped and how long it took."""

    content: str
    finish_reason: str | None
    latency_s: float
    model: str | None = None
    usage: dict[str, Any] | None = None
    response_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HealthResult:
    """What the LLM health check found."""

    url: str
    models: list[str]
    model: str
    model_source: str  # "configured" | "first listed"
    lmstudio_rest: bool
    model_state: str | None  # LM Studio REST "loaded" / "not-loaded"; None without /api/v0
    loaded: bool | None
    list_latency_s: float
    first_latency_s: float
    second_latency_s: float
    first_reply: str
    finish_reason: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- client
class LLMClient:
    """Talks to one OpenAI-compatible server. ``timeout_s`` bounds every single request, body
    included (however slowly it comes); an answer over ``max_body_bytes`` fails (kind
    ``too_large``, setting ``--max-response-mb``)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_body_bytes: int = net.DEFAULT_MAX_BODY_BYTES,
        recorder: Recorder | None = None,
    ) -> None:
        self.endpoints = normalize_llm_url(url)
        self.recorder = recorder  # the run's trace (--record); it never sees the key (no headers kept)
        if not timeout_s > 0:
            raise ValueError("timeout_s must be above 0")
        if not max_body_bytes > 0:
            raise ValueError("max_body_bytes must be above 0")
        self.timeout_s = float(timeout_s)
        self.max_body_bytes = int(max_body_bytes)
        self.__api_key = api_key or None
        self._session = net.json_session(self.endpoints.base)
        # Pooled sockets are closed even when nobody calls close() (no ResourceWarning at GC).
        self._finalizer = weakref.finalize(self, self._session.close)
        if self.__api_key:
            self._session.headers["Authorization"] = f"Bearer {self.__api_key}"

    @property
    def url(self) -> str:
        """The base URL (credentials in it redacted)."""
        return self.endpoints.display

    def __repr__(self) -> str:
        key = "'***'" if self.__api_key else "None"
        return f"LLMClient({self.url!r}, api_key={key}, timeout_s={self.timeout_s:g})"

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- API -------------------------------------------------------------------------------
    def list_models(self, *, deadline: Deadline | None = None) -> list[str]:
        """The model ids of ``GET /v1/models``."""
        data, _ = self._request("GET", self.endpoints.models, deadline=deadline)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise self._error(
                "bad_response", "GET /v1/models: no 'data' list in the answer", self.endpoints.models
            )
        ids = [item.get("id") for item in items if isinstance(item, dict)]
        return [i for i in ids if isinstance(i, str) and i]

    def lmstudio_models(self, *, deadline: Deadline | None = None) -> list[dict[str, Any]] | None:
        """LM Studio's ``GET /api/v0/models`` entries, or None when the server does not offer it."""
        try:
            data, _ = self._request("GET", self.endpoints.lmstudio_models, deadline=deadline)
        except LLMError as exc:
            if exc.kind in ("http", "non_json", "bad_response"):
                return None
            raise
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return None
        return [item for item in items if isinstance(item, dict)]

    def lmstudio_model_state(self, model: str, *, deadline: Deadline | None = None) -> str | None:
        """``"loaded"`` / ``"not-loaded"`` from LM Studio's REST API; None when it is not offered
        (or does not list ``model``)."""
        items = self.lmstudio_models(deadline=deadline)
        for item in items or ():
            state = item.get("state")
            if item.get("id") == model and isinstance(state, str):
                return state
        return None

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        model: str,
        seed: int | None,
        temperature: float | None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        deadline: Deadline | None = None,
    ) -> ChatResult:
        """``POST /v1/chat/completions`` (not streamed) and the first choice's text."""
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if temperature is not None:
            body["temperature"] = temperature
        if seed is not None:
            body["seed"] = seed
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if response_format is not None:
            body["response_format"] = response_format
        body["stream"] = False
        data, latency = self._request("POST", self.endpoints.chat, json_body=body, deadline=deadline)
        url = self.endpoints.chat
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._error("bad_response", "POST /v1/chat/completions: no 'choices' in the answer", url)
        choice = choices[0]
        raw_message = choice.get("message")
        message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is not None and not isinstance(content, str):
            raise self._error("bad_response", "the first choice's message content is not text", url)
        finish = choice.get("finish_reason")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        return ChatResult(
            content=content or "",
            finish_reason=finish if isinstance(finish, str) else None,
            latency_s=round(latency, 4),
            model=data.get("model") if isinstance(data.get("model"), str) else None,
            usage=usage,
            response_id=data.get("id") if isinstance(data.get("id"), str) else None,
        )

    # --- plumbing --------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        key = self.__api_key
        if key and key in text:
            text = text.replace(key, "***")
        return text

    def _error(self, kind: str, message: str, url: str, setting: str = URL_SETTING, **extra: Any) -> LLMError:
        return LLMError(kind, self._redact(message), redact_url(url), setting, **extra)

    def _budget(self, deadline: Deadline | None) -> tuple[Deadline, str]:
        """The deadline this request lives under (``timeout_s`` or the caller's, whichever ends
        first) and the flag of the setting that bounds it."""
        own = Deadline(self.timeout_s, setting="llm_timeout")
        budget = own.sooner(deadline)
        return budget, flag_of(budget.setting) if budget.setting else TIMEOUT_SETTING

    def _request(
        self, method: str, url: str, *, json_body: Any = None, deadline: Deadline | None = None
    ) -> tuple[Any, float]:
        started = time.monotonic()
        try:
            response, raw, latency = self._exchange(method, url, json_body, deadline)
        except LLMError as exc:
            self._record(method, url, json_body, None, None, exc.kind, time.monotonic() - started)
            raise
        self._record(method, url, json_body, response, raw, None, latency)
        return self._decode(response, raw, f"{method} {urlsplit(url).path}", url), latency

    def _record(
        self,
        method: str,
        url: str,
        json_body: Any,
        response: requests.Response | None,
        raw: bytes | None,
        error: str | None,
        took: float,
    ) -> None:
        """The exchange into the run's trace, by its path under the base URL (the URL is not portable)."""
        if self.recorder is None:
            return
        parts = urlsplit(url)
        base_path = urlsplit(self.endpoints.base).path.rstrip("/")
        self.recorder.http(
            "llm",
            self.endpoints.base,
            method,
            parts.path.removeprefix(base_path) or "/",
            query=dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item),
            request=None if json_body is None else {"json": json_body},
            status=response.status_code if response is not None else None,
            headers=dict(response.headers) if response is not None else None,
            body=raw,
            error=error,
            took_s=took,
        )

    def _exchange(
        self, method: str, url: str, json_body: Any, deadline: Deadline | None
    ) -> tuple[requests.Response, bytes, float]:
        budget, timeout_setting = self._budget(deadline)
        timeout = budget.remaining()
        route = f"{method} {urlsplit(url).path}"
        if timeout <= 0:
            raise self._error(
                "timeout", f"{route}: the time budget was spent before sending", url, timeout_setting
            )
        started = time.monotonic()
        try:
            response = self._session.request(
                method, url, json=json_body, timeout=(timeout, timeout), stream=True, allow_redirects=False
            )
            try:
                raw = net.read_body(
                    response, budget, max_bytes=self.max_body_bytes, read_cap_s=self.timeout_s
                )
            finally:
                response.close()
        except net.BodyTooLarge as exc:
            raise self._error("too_large", f"{route}: {exc}", url, MAX_RESPONSE_SETTING) from None
        except net.BodyTooSlow as exc:
            raise self._timeout_error(route, url, timeout, timeout_setting, exc.received) from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise self._error("invalid_url", f"{route}: {exc}", url) from None
        except requests.exceptions.Timeout:
            raise self._timeout_error(route, url, timeout, timeout_setting) from None
        except requests.exceptions.RequestException as exc:
            raise self._connection_error(exc, route, url, timeout, timeout_setting) from None
        latency = time.monotonic() - started
        log.debug("%s -> HTTP %s in %.3f s", route, response.status_code, latency)
        return response, raw, latency

    def _decode(self, response: requests.Response, raw: bytes, route: str, url: str) -> Any:
        """The JSON of a 2xx answer; an LLMError naming the status, or saying it is not JSON."""
        status = response.status_code
        text = raw.decode("utf-8", errors="replace")
        if status >= 300:
            raise self._http_error(status, text, response.headers.get("Location"), route, url)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
            raise self._error(
                "non_json",
                f"{route} answered HTTP {status} ({ctype}), not JSON: {excerpt(text)!r};"
                " is this URL an OpenAI-compatible server?",
                url,
            ) from None

    def _timeout_error(
        self, route: str, url: str, timeout: float, setting: str, received: int | None = None
    ) -> LLMError:
        arrived = f"; {received} bytes of the answer had arrived" if received else ""
        return self._error(
            "timeout",
            f"{route}: no complete answer within {timeout:.3g} s"
            f" (raise it if the model is only slow){arrived}",
            url,
            setting,
        )

    def _connection_error(
        self, exc: BaseException, route: str, url: str, timeout: float, timeout_setting: str
    ) -> LLMError:
        kind = classify_connection_error(exc)
        host = urlsplit(url).hostname or "?"
        port = urlsplit(url).port
        where = f"{host}:{port}" if port else host
        if kind == net.TIMEOUT:
            return self._timeout_error(route, url, timeout, timeout_setting)
        if kind == net.REFUSED:
            message = (
                f"{route}: nothing listens on {where}; start the LLM server"
                " (LM Studio: `lms server start`) or fix the URL"
            )
        elif kind == net.DNS:
            message = f"{route}: cannot resolve the host name {host!r}"
        else:
            message = f"{route}: {type(innermost(exc)).__name__}: {innermost(exc)}"
        return self._error(kind, message, url)

    def _http_error(self, status: int, text: str, location: str | None, route: str, url: str) -> LLMError:
        detail = _error_message(text)
        setting = URL_SETTING
        lowered = detail.lower()
        if status in (401, 403):
            setting = KEY_SETTING
        elif "model" in lowered and (
            "model_not_found" in text or "invalid model" in lowered or "not found" in lowered
        ):
            setting = MODEL_SETTING
        message = f"{route} answered HTTP {status}: {excerpt(detail)!r}"
        if 300 <= status < 400:
            message += f"; redirected to {redact_url(location or '?')} (set the setting to that URL)"
        return self._error("http", message, url, setting, status=status, body=self._redact(excerpt(text)))


def _error_message(text: str) -> str:
    """The ``error.message`` (OpenAI) or ``error`` string (LM Studio) of an error body, else the body."""
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):
            return message
        if isinstance(error, str):
            return error
        message = data.get("message")
        if isinstance(message, str):
            return message
    return text


# ---------------------------------------------------------------------------------------- health
def _looks_like_embedding(model_id: str) -> bool:
    return "embed" in model_id.lower()


def pick_chat_model(models: list[str], rest: list[dict[str, Any]] | None) -> str:
    """The first listed model that can chat: loaded LLM/VLM first (LM Studio), never an embedding one."""
    if rest:
        by_id = {item.get("id"): item for item in rest}
        for wanted_loaded in (True, False):
            for model in models:
                info = by_id.get(model) or {}
                if info.get("type") in ("llm", "vlm") and (info.get("state") == "loaded") == wanted_loaded:
                    return model
    for model in models:
        if not _looks_like_embedding(model):
            return model
    return models[0]


def check_health(client: LLMClient, *, model: str | None, timeout_s: float) -> HealthResult:
    """List the models, pick the model, ask LM Studio whether it is loaded, time two tiny chats.

    Raises LLMError: the server's own errors, ``no_models`` when nothing is listed, and
    ``model_not_found`` (setting ``--llm-model``, naming the offered models) when the
    configured ``model`` is not listed.
    """
    notes: list[str] = []
    started = time.monotonic()
    models = client.list_models(deadline=Deadline(timeout_s, setting="llm_timeout"))
    list_latency = time.monotonic() - started
    if not models:
        raise LLMError(
            "no_models",
            "GET /v1/models lists no models; load one (LM Studio: `lms load <model>`)",
            redact_url(client.endpoints.models),
            MODEL_SETTING,
        )
    rest = client.lmstudio_models(deadline=Deadline(timeout_s, setting="llm_timeout"))
    if model:
        if model not in models:
            offered = ", ".join(models[:20]) + (" ..." if len(models) > 20 else "")
            raise LLMError(
                "model_not_found",
                f"model {model!r} is not listed by GET /v1/models; the server offers: {offered}",
                redact_url(client.endpoints.models),
                MODEL_SETTING,
            )
        used, source = model, "configured"
    else:
        used, source = pick_chat_model(models, rest), "first listed"
        if used != models[0]:
            notes.append(f"skipped {models[0]!r}: not a loaded chat model")
    state: str | None = None
    if rest is not None:
        for item in rest:
            if item.get("id") == used and isinstance(item.get("state"), str):
                state = item["state"]
        if state is not None and state != "loaded":
            notes.append(f"{used} is {state}: the first completion includes loading it")
    messages = [
        {"role": "system", "content": "You are a health check. Answer with one word."},
        {"role": "user", "content": HEALTH_PROMPT},
    ]
    first = client.chat(
        messages,
        model=used,
        seed=0,
        temperature=0.0,
        max_tokens=16,
        deadline=Deadline(timeout_s, setting="llm_timeout"),
    )
    second = client.chat(
        messages,
        model=used,
        seed=0,
        temperature=0.0,
        max_tokens=16,
        deadline=Deadline(timeout_s, setting="llm_timeout"),
    )
    return HealthResult(
        url=client.url,
        models=models,
        model=used,
        model_source=source,
        lmstudio_rest=rest is not None,
        model_state=state,
        loaded=None if state is None else state == "loaded",
        list_latency_s=round(list_latency, 4),
        first_latency_s=first.latency_s,
        second_latency_s=second.latency_s,
        first_reply=excerpt(first.content, 80),
        finish_reason=first.finish_reason,
        notes=notes,
    )
