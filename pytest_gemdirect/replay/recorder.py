"""The run's recording: every exchange with ComfyUI and the LLM, written as it happens.

One :class:`Recorder` a run (scenes run in threads: every write holds one lock). Records are JSON
Lines in ``trace/exchanges.jsonl``: a header (harness version, run id, the settings that shaped
the run), then ``http`` (method, path, query, request, status, the headers that matter, response
body), ``ws_open`` / ``ws`` (every WebSocket frame the harness read, with its time since the
prompt's POST) and ``backend`` records. Bodies over :data:`INLINE_BYTES` or not text are stored
once by sha256 under ``trace/blobs/``. No absolute path, no request header, no API key is ever
written: the key is replaced by ``***`` wherever it would appear.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_gemdirect import __version__
from pytest_gemdirect.replay import BLOBS, EXCHANGES, FORMAT
from pytest_gemdirect.rundir import atomic_write_bytes

INLINE_BYTES = 64 * 1024
"""A text body up to this size is written into its record; a larger one goes to ``blobs/``."""

REQUEST_CAP_BYTES = 4 * 1024 * 1024
"""A request body over this size is recorded by its hash and size only (it is compared by hash)."""

KEPT_HEADERS = ("Content-Type", "Content-Disposition", "Location")
"""Response headers a replay gives back; request headers are never recorded (Authorization)."""


def canonical(value: Any) -> str:
    """JSON text with sorted keys: two equal values give the same text (and hash)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def portable_settings(public: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """The run's settings as a trace keeps them: a path setting by its file name only."""
    kept: dict[str, Any] = {}
    for name, value in public.items():
        if name in paths and isinstance(value, str) and value:
            value = Path(value).name
        elif name in paths and isinstance(value, list):
            value = [Path(str(v)).name for v in value]
        kept[name] = value
    return kept


class Recorder:
    """Writes one run's trace folder; every method is safe to call from any thread."""

    def __init__(self, folder: Path, *, header: Mapping[str, Any], secrets: Sequence[str] = ()) -> None:
        self.folder = folder
        self.blobs = folder / BLOBS
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._secrets = tuple(s for s in secrets if s)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stored: set[str] = set()
        self._servers: dict[str, str] = {}  # base URL -> "comfyui-1", "llm-1"
        self._posted: dict[str, float] = {}  # client id -> when its prompt was posted (trace seconds)
        self.bytes_written = 0
        self._file = (folder / EXCHANGES).open("a", encoding="utf-8", newline="\n")
        self._write(
            {
                "kind": "header",
                "format": FORMAT,
                "harness_version": __version__,
                "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **header,
            }
        )

    # --- what the clients call ------------------------------------------------------------

    def server(self, service: str, base_url: str) -> str:
        """The server's name in the trace (``comfyui-1`` …): a URL is not portable, its order is."""
        with self._lock:
            if base_url not in self._servers:
                count = sum(1 for name in self._servers.values() if name.startswith(service + "-"))
                self._servers[base_url] = f"{service}-{count + 1}"
            return self._servers[base_url]

    def backend(self, info: Mapping[str, Any]) -> None:
        """What the run used for a service (target, simulated, version), for the replay's label."""
        self._write(
            {"kind": "backend", **{k: info.get(k) for k in ("name", "target", "simulated", "version")}}
        )

    def http(  # noqa: PLR0913 - one exchange, keyword-only after the service: what a transport has at hand
        self,
        service: str,
        base_url: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        request: Mapping[str, Any] | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        error: str | None = None,
        took_s: float = 0.0,
    ) -> None:
        """One HTTP exchange (``error`` instead of a status when no answer came: ``timeout``, …)."""
        record: dict[str, Any] = {
            "kind": "http",
            "service": service,
            "server": self.server(service, base_url),
            "at": self._now(),
            "method": method,
            "path": path,
            "query": {str(k): str(v) for k, v in (query or {}).items()},
            "request": self._request(request),
            "took_s": round(took_s, 4),
        }
        if error is not None:
            record["error"] = error
        else:
            record["status"] = status
            record["headers"] = {k: v for k, v in (headers or {}).items() if k in KEPT_HEADERS}
            record["body"] = self._body(body or b"", binary=path == "/view")
        payload = (request or {}).get("json")
        if method == "POST" and path == "/prompt" and isinstance(payload, dict):
            with self._lock:
                self._posted[str(payload.get("client_id"))] = record["at"]
        self._write(record)

    def ws_open(self, base_url: str, client_id: str) -> None:
        self._write(
            {
                "kind": "ws_open",
                "server": self.server("comfyui", base_url),
                "client_id": client_id,
                "at": self._now(),
            }
        )

    def ws_frame(self, client_id: str, frame: Mapping[str, Any]) -> None:
        """One frame the feed read: ``text`` (its message), ``binary`` (length, type) or ``lost``."""
        at = self._now()
        with self._lock:
            posted = self._posted.get(client_id)
        since = None if posted is None else round(at - posted, 4)
        self._write({"kind": "ws", "client_id": client_id, "at": at, "since_prompt": since, **frame})

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    # --- internals ------------------------------------------------------------------------

    def _now(self) -> float:
        return round(time.monotonic() - self._started, 4)

    def _request(self, request: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not request:
            return None
        kept: dict[str, Any] = {}
        if "json" in request:
            text = self._redact(canonical(request["json"]))
            kept["sha256"] = sha256(text.encode("utf-8"))
            if len(text) <= REQUEST_CAP_BYTES:
                kept["json"] = json.loads(text)
            else:
                kept["size"] = len(text)
        if "file" in request:  # an upload: the file by hash, its name and form fields as given
            kept["file"] = self._blob(request["file"])
            kept["name"] = self._redact(str(request.get("name") or ""))
            kept["fields"] = {str(k): str(v) for k, v in (request.get("fields") or {}).items()}
        return kept

    def _body(self, body: bytes, *, binary: bool) -> dict[str, Any]:
        if not binary and len(body) <= INLINE_BYTES:
            try:
                return {"text": self._redact(body.decode("utf-8"))}
            except UnicodeDecodeError:
                pass
        if self._secrets and not binary:
            body = self._redact(body.decode("utf-8", errors="surrogateescape")).encode(
                "utf-8", errors="surrogateescape"
            )
        return {"blob": self._blob(body), "size": len(body)}

    def _blob(self, data: bytes) -> str:
        digest = sha256(data)
        with self._lock:
            if digest in self._stored:
                return digest
            self._stored.add(digest)
        target = self.blobs / digest
        if not target.exists():
            atomic_write_bytes(target, data)
            with self._lock:
                self.bytes_written += len(data)
        return digest

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _write(self, record: dict[str, Any]) -> None:
        line = self._redact(json.dumps(record, ensure_ascii=False, default=str)) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line)
            self._file.flush()
            self.bytes_written += len(line.encode("utf-8"))


__all__ = ["Recorder", "canonical", "portable_settings", "sha256"]
