"""The socket side of following a job: connect, read one frame at a time, close.

The WebSocket is only the fast path: a frame that cannot be read, a close frame or a broken
connection is reported as :class:`Frame` ``lost`` and the follower falls back to polling. The
feed never reconnects with the same client id (the server would orphan the new socket).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import websocket

from pytest_gemdirect.comfyui.evidence import secs
from pytest_gemdirect.net import one_line

if TYPE_CHECKING:
    from pytest_gemdirect.replay.recorder import Recorder

WS_CLOSE_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Frame:
    """One thing read from the socket.

    ``kind``: ``text`` (``message`` is the decoded JSON object), ``binary`` (a preview:
    ``length`` and ``event_type``), ``unparseable`` (text that is not a JSON object),
    ``lost`` (the connection ended; ``detail`` says how) or ``other`` (ping, pong, …).
    """

    kind: str
    message: dict[str, Any] | None = None
    length: int = 0
    event_type: int | None = None
    detail: str = ""


class WebSocketFeed:
    """One ``ws://…/ws?clientId=…`` connection and what is known about its health."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder  # the run's trace: every frame read is written there
        self.client_id = ""
        self.ws: websocket.WebSocket | None = None
        self.status = "not connected"
        self.silent = False  # open but quiet for ws_idle_timeout: the follower polls meanwhile
        self.last_activity = time.monotonic()

    @property
    def open(self) -> bool:
        return self.ws is not None

    def connect(self, url: str, timeout: float) -> None:
        """Open the socket; raises ``OSError`` / ``websocket.WebSocketException`` when it cannot."""
        try:
            self.ws = websocket.create_connection(url, timeout=max(timeout, 0.01))
        except (OSError, websocket.WebSocketException):
            self.ws = None
            raise
        self.status = "open"
        self.last_activity = time.monotonic()
        if self.recorder is not None:
            parts = urlsplit(url)
            self.client_id = (parse_qs(parts.query).get("clientId") or [""])[0]
            http = "https" if parts.scheme == "wss" else "http"
            self.recorder.ws_open(f"{http}://{parts.netloc}{parts.path.removesuffix('/ws')}", self.client_id)

    def receive(self, timeout: float) -> Frame | None:
        """The next frame within ``timeout`` seconds, or None when nothing came."""
        frame = self._receive(timeout)
        if frame is not None and self.recorder is not None and frame.kind != "other":
            kept = {"frame": frame.kind, "message": frame.message, "length": frame.length}
            kept.update(event_type=frame.event_type, detail=frame.detail)
            self.recorder.ws_frame(self.client_id, kept)
        return frame

    def _receive(self, timeout: float) -> Frame | None:
        ws = self.ws
        if ws is None or timeout <= 0:
            return None
        try:
            ws.settimeout(max(timeout, 0.001))
            opcode, data = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException) as exc:
            detail = f"{type(exc).__name__}: {one_line(exc, 120)}" if str(exc) else type(exc).__name__
            return Frame("lost", detail=detail)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return Frame("lost", detail="closed by the server")
        if opcode == websocket.ABNF.OPCODE_BINARY:
            event_type = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
            return Frame("binary", length=len(data), event_type=event_type)
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return Frame("other")
        try:
            message = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        except (UnicodeDecodeError, ValueError):
            return Frame("unparseable")
        return Frame("text", message=message) if isinstance(message, dict) else Frame("other")

    def close(self) -> None:
        """Close politely (a short closing handshake); the feed is then closed for good."""
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            ws.close(timeout=WS_CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - closing a broken socket may fail in many ways
            try:
                ws.shutdown()  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001
                pass
        if self.status == "open":
            self.status = "closed by this client"

    def drop(self, reason: str, at_s: float) -> None:
        """The connection is gone: no closing handshake to wait for."""
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.shutdown()  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001
                pass
        self.status = f"dropped at {secs(at_s)} ({reason})"
        self.silent = False

    def describe(self, since_s: float) -> str:
        """The socket in a few words; ``since_s`` is the last activity in job seconds."""
        if self.ws is not None and self.silent:
            return f"websocket open but silent since {secs(since_s)}"
        return f"websocket {self.status}"


__all__ = ["Frame", "WebSocketFeed"]
