"""One HTTP exchange with a ComfyUI server, bounded in time and size.

Every exchange has a deadline: the caller's, or the client's request timeout when it gives
none. Waiting for the answer's head is bounded by what is left of it (at most the request
timeout); the body is read in small pieces with :func:`pytest_gemdirect.net.read_body`, so it
ends at the deadline however slowly it trickles, and an answer over ``max_body_bytes`` fails
naming the cap (``max_response_mb``). A refused or reset connection is :class:`ServerGone`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from pytest_gemdirect import net
from pytest_gemdirect.comfyui.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyTimeout,
    ResponseTooLarge,
    ServerGone,
)
from pytest_gemdirect.comfyui.long_strings import LongStringCut
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.net import excerpt
from pytest_gemdirect.policy import flag_of

if TYPE_CHECKING:
    from pytest_gemdirect.replay.recorder import Recorder

_MIN_TIMEOUT_S = 0.001


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read in full: status, body bytes, headers."""

    status: int
    body: bytes
    headers: dict[str, str]


class Transport:
    """The pooled session of one ComfyClient and the rules every request follows."""

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout_s: float,
        max_body_bytes: int,
        recorder: Recorder | None = None,
    ) -> None:
        if request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.base_url = base_url
        self.request_timeout_s = float(request_timeout_s)
        self.max_body_bytes = int(max_body_bytes)
        self.session = net.json_session(base_url)
        self.recorder = recorder  # the run's trace (--record): every exchange is written there

    # ------------------------------------------------------------------ time
    def _budget(self, deadline: Deadline | None, route: str, url: str) -> tuple[Deadline, float]:
        """The deadline this exchange lives under, and the timeout for connecting and the head."""
        budget = deadline if deadline is not None else Deadline(self.request_timeout_s)
        timeout = budget.timeout(cap=self.request_timeout_s)
        if deadline is not None and timeout < _MIN_TIMEOUT_S:
            raise ComfyTimeout(
                f"{route}: not sent, the deadline of {deadline.seconds:g} s{_bound(deadline)} has passed",
                route=route,
                url=url,
            )
        return budget, timeout

    def _timeout_text(self, deadline: Deadline | None, timeout: float) -> str:
        if deadline is not None and timeout < self.request_timeout_s - 1e-6:
            return f"within the {timeout:.3g} s left of its deadline{_bound(deadline)}"
        return f"within {timeout:g} s (the client's request timeout)"

    def _limit_text(self, deadline: Deadline | None) -> str:
        if deadline is None:
            return f"the client's request timeout of {self.request_timeout_s:g} s"
        return f"the deadline of {deadline.seconds:g} s{_bound(deadline)}"

    # ------------------------------------------------------------------ exchange
    def send(
        self,
        method: str,
        path: str,
        *,
        deadline: Deadline | None = None,
        retry_reset: bool | None = None,
        cut_long_strings: bool = False,
        **kwargs: Any,
    ) -> Answer:
        """One HTTP exchange; the body is read fully, bounded by the deadline and the size cap.

        ``cut_long_strings`` (a JSON answer): string literals over 64 KB are cut as they arrive
        (:class:`~pytest_gemdirect.comfyui.long_strings.LongStringCut`), so a padded answer
        costs its useful size in memory, not its full size.
        """
        route = f"{method} {path.split('?')[0]}"
        url = self.base_url + path
        tries = 2 if (retry_reset if retry_reset is not None else method == "GET") else 1
        for attempt in range(tries):
            budget, timeout = self._budget(deadline, route, url)
            started = time.monotonic()
            try:
                keep = LongStringCut() if cut_long_strings else None
                answer = self._exchange(method, url, route, budget, timeout, deadline, keep, kwargs)
            except requests.exceptions.RequestException as exc:
                kind = net.classify_connection_error(exc)
                if kind == net.RESET and attempt + 1 < tries:
                    continue  # a pooled keep-alive socket closed under us: one fresh try
                took = time.monotonic() - started
                self._record(method, path, kwargs, None, kind, took)
                raise self._connection_error(exc, kind, route, url, deadline, timeout, took) from None
            except ComfyError as exc:
                self._record(method, path, kwargs, None, exc.kind, time.monotonic() - started)
                raise
            self._record(method, path, kwargs, answer, None, time.monotonic() - started)
            return answer
        raise AssertionError("unreachable")

    def _record(
        self,
        method: str,
        path: str,
        kwargs: dict[str, Any],
        answer: Answer | None,
        error: str | None,
        took: float,
    ) -> None:
        """The exchange into the run's trace: the request as sent, the answer as read (or why none came)."""
        if self.recorder is None:
            return
        request: dict[str, Any] = {}
        if "json" in kwargs:
            request["json"] = kwargs["json"]
        for field, (name, data, _type) in (kwargs.get("files") or {}).items():
            request.update(file=data, name=name, fields={"field": field, **(kwargs.get("data") or {})})
        self.recorder.http(
            "comfyui",
            self.base_url,
            method,
            path.split("?")[0],
            query=kwargs.get("params"),
            request=request,
            status=answer.status if answer else None,
            headers=answer.headers if answer else None,
            body=answer.body if answer else None,
            error=error,
            took_s=took,
        )

    def _exchange(
        self,
        method: str,
        url: str,
        route: str,
        budget: Deadline,
        timeout: float,
        deadline: Deadline | None,
        keep: net.BodyFilter | None,
        kwargs: dict[str, Any],
    ) -> Answer:
        response = self.session.request(
            method, url, timeout=(timeout, timeout), stream=True, allow_redirects=False, **kwargs
        )
        try:
            body = net.read_body(
                response, budget, max_bytes=self.max_body_bytes, read_cap_s=self.request_timeout_s, keep=keep
            )
        except net.BodyTooLarge as exc:
            raise ResponseTooLarge(
                f"{route} to {url}: {exc}", route=route, url=url, status=response.status_code
            ) from None
        except net.BodyTooSlow as exc:
            raise ComfyTimeout(
                f"{route} to {url}: the body was still arriving when {self._limit_text(deadline)} passed"
                f" ({exc.received} bytes received){_flag_text(deadline)}",
                route=route,
                url=url,
                status=response.status_code,
            ) from None
        finally:
            response.close()
        return Answer(response.status_code, body, dict(response.headers))

    def _connection_error(
        self,
        exc: BaseException,
        kind: str,
        route: str,
        url: str,
        deadline: Deadline | None,
        timeout: float,
        took: float,
    ) -> ComfyError:
        if kind == net.REFUSED:
            return ServerGone(
                f"{route}: connection refused at {self.base_url}; ComfyUI is not running there (any more)",
                route=route,
                url=url,
            )
        if kind == net.RESET:
            return ServerGone(
                f"{route}: the connection to {self.base_url} was reset or closed without an answer;"
                " the ComfyUI server went away",
                route=route,
                url=url,
            )
        if kind == net.TIMEOUT:
            return ComfyTimeout(
                f"{route} to {url}: no answer {self._timeout_text(deadline, timeout)} (waited {took:.1f} s)",
                route=route,
                url=url,
            )
        return ComfyError(f"{route} to {url} failed ({kind}): {exc}", route=route, url=url, kind="connection")

    # ------------------------------------------------------------------ answers
    def json(self, answer: Answer, route: str, path: str) -> Any:
        try:
            return json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            text = excerpt(answer.body)
            raise ComfyError(
                f"{route} at {self.base_url} answered HTTP {answer.status} that is not JSON: {text!r}",
                route=route,
                url=self.base_url + path,
                status=answer.status,
                body=text,
                kind="bad_response",
            ) from None

    def http_error(self, answer: Answer, route: str, path: str, what: str = "") -> ComfyHTTPError:
        text = excerpt(answer.body)
        detail = f": {text}" if text else " (empty body)"
        return ComfyHTTPError(
            f"{route} at {self.base_url} answered HTTP {answer.status}{what}{detail}",
            route=route,
            url=self.base_url + path,
            status=answer.status,
            body=text,
            kind="http",
        )

    def get_json(self, path: str, deadline: Deadline | None) -> Any:
        answer = self.send("GET", path, deadline=deadline, cut_long_strings=True)
        route = f"GET {path.split('?')[0]}"
        if answer.status != 200:
            raise self.http_error(answer, route, path)
        return self.json(answer, route, path)

    def post_ok(self, path: str, payload: Any, deadline: Deadline | None) -> None:
        kwargs: dict[str, Any] = {} if payload is None else {"json": payload}
        answer = self.send("POST", path, deadline=deadline, retry_reset=True, **kwargs)
        if answer.status != 200:
            raise self.http_error(answer, f"POST {path}", path)


def _flag_text(deadline: Deadline | None) -> str:
    """``; bounded by --scene-max-wait`` for a deadline named after a setting, so the user sees its flag."""
    setting = deadline.setting if deadline is not None else None
    if not setting or not setting.isidentifier():
        return ""
    return f"; bounded by {flag_of(setting)}"


def _bound(deadline: Deadline) -> str:
    return f" ({deadline.setting} = {deadline.seconds:g} s)" if deadline.setting else ""


__all__ = ["Answer", "Transport"]
