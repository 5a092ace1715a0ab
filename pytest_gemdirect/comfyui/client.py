"""ComfyUI's HTTP API (0.3.x) as plain calls, each bounded by a deadline; imports nothing from pytest."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from pytest_gemdirect.deadline import Deadline

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class ComfyError(Exception):
    """A ComfyUI call failed; the message names the route and what came back."""


class ServerGone(ComfyError):
    """Nothing answers at the server's address any more (refused or reset): fail fast."""


class ComfyTimeout(ComfyError):
    """A single call did not answer within its time (or the deadline had no time left)."""


class ComfyHTTPError(ComfyError):
    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class PromptRejected(ComfyError):
    """``POST /prompt`` answered 400: the graph failed validation; ``node_errors`` per node."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        self.error = error
        self.node_errors = node_errors
        super().__init__(describe_rejection(error, node_errors))


def describe_rejection(error: dict[str, Any], node_errors: dict[str, Any]) -> str:
    """``POST /prompt``'s 400 body in plain words, one clause per node error."""
    parts = []
    for node_id, info in sorted(node_errors.items()):
        for err in info.get("errors", []):
            detail = err.get("details") or ""
            parts.append(
                f"node {node_id} ({info.get('class_type', '?')}): {err.get('message', '?')}"
                + (f": {detail}" if detail else "")
            )
    head = error.get("message") or error.get("type") or "invalid prompt"
    details = error.get("details")
    if not parts and details:
        head = f"{head}: {details}"
    return head + ("; " + "; ".join(parts) if parts else "")


class ComfyClient:
    """One ComfyUI server. Every call takes an optional deadline that caps its timeout."""

    def __init__(self, base_url: str, *, request_timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self._session = requests.Session()
        # A local server must never be reached through a proxy from the environment.
        self._session.trust_env = urlsplit(self.base_url).hostname not in _LOOPBACK

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={client_id}"

    # --- transport -----------------------------------------------------------------------

    def _timeout(self, deadline: Deadline | None) -> float:
        if deadline is None:
            return self.request_timeout_s
        left = deadline.timeout(cap=self.request_timeout_s)
        if left <= 0:
            raise ComfyTimeout(f"no time left ({deadline.setting or 'deadline'} = {deadline.seconds:g} s)")
        return left

    def _request(self, method: str, route: str, *, deadline: Deadline | None = None, **kwargs: Any) -> Any:
        url = self.base_url + route
        timeout = self._timeout(deadline)
        try:
            response = self._session.request(method, url, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise ServerGone(
                f"{method} {route}: ComfyUI at {self.base_url} does not answer ({_reason(exc)})"
            ) from None
        except requests.Timeout:
            raise ComfyTimeout(f"{method} {route}: no answer within {timeout:.1f} s") from None
        return response

    def _json(self, method: str, route: str, *, deadline: Deadline | None = None, **kwargs: Any) -> Any:
        response = self._request(method, route, deadline=deadline, **kwargs)
        if response.status_code != 200:
            raise ComfyHTTPError(
                f"{method} {route}: HTTP {response.status_code} {response.text[:300]!r}",
                status=response.status_code,
                body=response.text[:2000],
            )
        try:
            return response.json()
        except ValueError:
            raise ComfyError(f"{method} {route}: the answer is not JSON: {response.text[:200]!r}") from None

    # --- routes --------------------------------------------------------------------------

    def system_stats(self, *, deadline: Deadline | None = None) -> dict[str, Any]:
        return self._json("GET", "/system_stats", deadline=deadline)

    def object_info(
        self, class_name: str | None = None, *, deadline: Deadline | None = None
    ) -> dict[str, Any]:
        return self._json("GET", "/object_info" + (f"/{class_name}" if class_name else ""), deadline=deadline)

    def models(self, folder: str, *, deadline: Deadline | None = None) -> list[str]:
        return self._json("GET", f"/models/{folder}", deadline=deadline)

    def upload_image(
        self,
        path: Path,
        *,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = True,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """Upload a keyframe to ComfyUI's input folder; returns ``{name, subfolder, type}``."""
        path = Path(path)
        filename = name or path.name
        mime = mimetypes.guess_type(filename)[0] or "image/png"
        data = {"overwrite": "true" if overwrite else "false", "type": "input"}
        if subfolder:
            data["subfolder"] = subfolder
        with open(path, "rb") as handle:
            return self._json(
                "POST",
                "/upload/image",
                deadline=deadline,
                files={"image": (filename, handle, mime)},
                data=data,
            )

    def queue_prompt(
        self,
        prompt: dict[str, Any],
        *,
        client_id: str,
        prompt_id: str | None = None,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """``POST /prompt``; a 400 raises PromptRejected with the server's node_errors."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        response = self._request("POST", "/prompt", deadline=deadline, json=body)
        if response.status_code == 400:
            try:
                answer = response.json()
            except ValueError:
                answer = {"error": {"message": response.text[:300]}}
            raise PromptRejected(answer.get("error") or {}, answer.get("node_errors") or {})
        if response.status_code != 200:
            raise ComfyHTTPError(
                f"POST /prompt: HTTP {response.status_code} {response.text[:300]!r}",
                status=response.status_code,
                body=response.text[:2000],
            )
        return response.json()

    def history(self, prompt_id: str, *, deadline: Deadline | None = None) -> dict[str, Any] | None:
        """The prompt's history entry, or None while ComfyUI has none (it answers ``{}``)."""
        answer = self._json("GET", f"/history/{prompt_id}", deadline=deadline)
        return answer.get(prompt_id) if isinstance(answer, dict) else None

    def queue(self, *, deadline: Deadline | None = None) -> dict[str, list[Any]]:
        """Running and pending items; pending sorted by number (the server sends heap order)."""
        answer = self._json("GET", "/queue", deadline=deadline)
        return {
            "running": list(answer.get("queue_running", [])),
            "pending": sorted(answer.get("queue_pending", []), key=lambda item: item[0]),
        }

    def interrupt(self, prompt_id: str | None = None, *, deadline: Deadline | None = None) -> None:
        """Interrupt ``prompt_id`` only (the server ignores it unless that prompt is running)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._request("POST", "/interrupt", deadline=deadline, json=body)

    def delete_from_queue(self, prompt_ids: list[str], *, deadline: Deadline | None = None) -> None:
        self._request("POST", "/queue", deadline=deadline, json={"delete": prompt_ids})

    def free(
        self, *, unload_models: bool = False, free_memory: bool = True, deadline: Deadline | None = None
    ):
        self._request(
            "POST",
            "/free",
            deadline=deadline,
            json={"unload_models": unload_models, "free_memory": free_memory},
        )

    def view(
        self, filename: str, subfolder: str = "", type: str = "output", *, deadline: Deadline | None = None
    ):
        """The bytes of an output file through ``/view``; 404 raises ComfyHTTPError naming the file."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        response = self._request("GET", "/view", deadline=deadline, params=params)
        if response.status_code != 200:
            where = f"{subfolder}/{filename}" if subfolder else filename
            raise ComfyHTTPError(
                f"GET /view {where} ({type}): HTTP {response.status_code}",
                status=response.status_code,
                body="",
            )
        return response.content


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "RemoteDisconnected"):
        if marker in text:
            return marker.lower()
    return text[:160]
