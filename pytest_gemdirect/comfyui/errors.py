"""The errors of the ComfyUI client: each names the route, the URL and what came back.

``kind`` tells them apart without importing every class: ``http``, ``timeout``, ``connection``,
``bad_response``, ``server_gone``, ``rejected``, ``missing`` or ``too_large``.
"""

from __future__ import annotations

from typing import Any


class ComfyError(Exception):
    """A ComfyUI request failed; the message names the route, the URL and what came back.

    ``kind``: ``http`` (unexpected status), ``timeout``, ``connection``, ``bad_response``,
    ``server_gone``, ``rejected`` (HTTP 400 on /prompt) or ``missing`` (/view 404).
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        route: str | None = None,
        url: str | None = None,
        status: int | None = None,
        body: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.route = route
        self.url = url
        self.status = status
        self.body = body
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return self.message


class ServerGone(ComfyError):
    """The server refused or reset the connection: it is not running (any more) at that URL."""

    kind = "server_gone"


class ComfyTimeout(ComfyError):
    """No answer within the request timeout or what was left of the deadline."""

    kind = "timeout"


class PromptRejected(ComfyError):
    """POST /prompt answered HTTP 400: validation failed before anything ran (the WebSocket sees nothing).

    ``error`` and ``node_errors`` are the server's fields; ``node_messages`` one plain line per
    node error, e.g. ``node 5 (KSampler): Value 0 smaller than min of 1: steps``.
    """

    kind = "rejected"

    def __init__(
        self,
        message: str,
        *,
        error: Any = None,
        node_errors: dict[str, Any] | None = None,
        node_messages: list[str] | None = None,
        route: str | None = None,
        url: str | None = None,
        status: int | None = 400,
        body: str | None = None,
    ) -> None:
        super().__init__(message, route=route, url=url, status=status, body=body)
        self.error = error
        self.node_errors = node_errors or {}
        self.node_messages = node_messages or []


class ComfyHTTPError(ComfyError):
    """An unexpected HTTP status; ``status`` and ``body`` (an excerpt) say what came back."""

    kind = "http"


class OutputMissing(ComfyHTTPError):
    """/view answered 404: the file history names is not on the server's disk."""

    kind = "missing"

    def __init__(self, message: str, *, filename: str, subfolder: str, type: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.filename = filename
        self.subfolder = subfolder
        self.type = type


class ResponseTooLarge(ComfyError):
    """An answer larger than the client's size cap (``max_body_bytes``, setting ``max_response_mb``)."""

    kind = "too_large"


__all__ = [
    "ComfyError",
    "ComfyHTTPError",
    "ComfyTimeout",
    "OutputMissing",
    "PromptRejected",
    "ResponseTooLarge",
    "ServerGone",
]
