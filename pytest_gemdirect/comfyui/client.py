"""HTTP client for ComfyUI (0.3.64 protocol, see shared/reference/comfyui); imports nothing from pytest.

Every call takes an optional ``deadline`` (:class:`~pytest_gemdirect.deadline.Deadline`): the
request timeout is ``deadline.timeout(cap=request_timeout_s)``, never more than what is left,
and a response body ends when the deadline does, however slowly it comes (without a deadline,
the request timeout bounds the whole exchange). An answer over ``max_body_bytes`` (setting
``max_response_mb``) raises :class:`ResponseTooLarge`. A refused or reset connection raises
:class:`ServerGone`, so a caller following a job fails at once when the server died instead of
waiting for its deadline. The exchange itself is in ``transport.py``, the errors in ``errors.py``.
"""

from __future__ import annotations

import json
import mimetypes
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pytest_gemdirect import net
from pytest_gemdirect.comfyui.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyTimeout,
    OutputMissing,
    PromptRejected,
    ResponseTooLarge,
    ServerGone,
)
from pytest_gemdirect.comfyui.transport import Transport
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.net import excerpt
from pytest_gemdirect.text import visible

if TYPE_CHECKING:
    from pytest_gemdirect.replay.recorder import Recorder

DEFAULT_REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------- helpers
def node_sort_key(node_id: Any) -> tuple[int, int, str]:
    """Natural order of node ids ("2" before "10"; non-numeric ids after)."""
    text = str(node_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def describe_rejection(body: Any) -> tuple[str, list[str]]:
    """(headline, one line per node error) of a POST /prompt 400 body, in plain words."""
    error = body.get("error") if isinstance(body, dict) else body
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    if isinstance(error, dict):
        head = str(error.get("message") or error.get("type") or "validation failed")
        details = error.get("details")
        if details and str(details) not in head:
            head += f" ({details})"
    else:
        head = str(error) if error else "validation failed"
    lines: list[str] = []
    if isinstance(node_errors, dict):
        for node_id in sorted(node_errors, key=node_sort_key):
            info = node_errors[node_id] if isinstance(node_errors[node_id], dict) else {}
            where = f"node {node_id}" + (f" ({info['class_type']})" if info.get("class_type") else "")
            errors = info.get("errors") or []
            if not errors:
                lines.append(f"{where}: invalid")
            for err in errors:
                if not isinstance(err, dict):
                    lines.append(f"{where}: {err}")
                    continue
                message = str(err.get("message") or err.get("type") or "invalid")
                details = err.get("details")
                lines.append(f"{where}: {message}: {details}" if details else f"{where}: {message}")
    return head, lines


def queue_item(item: Any) -> dict[str, Any]:
    """A /queue item ``[number, prompt_id, prompt, extra_data, outputs]`` without the (large) prompt."""
    if not isinstance(item, list | tuple) or len(item) < 2:
        return {"number": None, "prompt_id": None, "raw": str(item)[:200]}
    extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
    return {
        "number": item[0],
        "prompt_id": item[1],
        "client_id": extra.get("client_id"),
        "outputs_to_execute": list(item[4]) if len(item) > 4 and isinstance(item[4], list) else [],
    }


def _number_key(item: dict[str, Any]) -> tuple[int, float]:
    number = item.get("number")
    return (0, float(number)) if isinstance(number, int | float) else (1, 0.0)


# ---------------------------------------------------------------------------------------- client
class ComfyClient:
    """Blocking ComfyUI HTTP client; one pooled ``requests`` session, closed by :meth:`close` or GC."""

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_body_bytes: int = net.DEFAULT_MAX_BODY_BYTES,
        recorder: Recorder | None = None,
    ) -> None:
        try:
            self.base_url = net.server_url(base_url)
        except ValueError as exc:
            raise ValueError(f"ComfyUI URL {base_url!r}: {exc}") from None
        self._http = Transport(
            self.base_url,
            request_timeout_s=request_timeout_s,
            max_body_bytes=max_body_bytes,
            recorder=recorder,
        )
        self.recorder = recorder  # the run's trace; the job's WebSocket feed writes there too
        self.request_timeout_s = self._http.request_timeout_s
        self.max_body_bytes = self._http.max_body_bytes
        self._finalizer = weakref.finalize(self, self._http.session.close)

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ws_url(self, client_id: str) -> str:
        """``ws://host:port[/prefix]/ws?clientId=<id>`` for this server."""
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        rest = self.base_url.split("://", 1)[1]
        return f"{scheme}://{rest}/ws?clientId={quote(client_id, safe='')}"

    # ------------------------------------------------------------------ routes
    def system_stats(self, *, deadline: Deadline | None = None) -> dict[str, Any]:
        """GET /system_stats: ``{system: {comfyui_version, python_version, ...}, devices: [...]}``."""
        data = self._http.get_json("/system_stats", deadline)
        if not isinstance(data, dict):
            raise ComfyError(
                f"GET /system_stats at {self.base_url} answered {type(data).__name__}, not an object"
            )
        return data

    def object_info(
        self, class_name: str | None = None, *, deadline: Deadline | None = None
    ) -> dict[str, Any]:
        """GET /object_info (every node class) or /object_info/<class> (``{}`` for an unknown class)."""
        path = "/object_info" if class_name is None else f"/object_info/{quote(class_name, safe='')}"
        data = self._http.get_json(path, deadline)
        if not isinstance(data, dict):
            raise ComfyError(f"GET {path} at {self.base_url} answered {type(data).__name__}, not an object")
        return data

    def models(self, folder: str, *, deadline: Deadline | None = None) -> list[str]:
        """GET /models/<folder> (e.g. ``checkpoints``): the model file names the server sees."""
        path = f"/models/{quote(folder, safe='')}"
        answer = self._http.send("GET", path, deadline=deadline)
        if answer.status == 404:
            raise ComfyHTTPError(
                f"GET {path} at {self.base_url} answered 404: ComfyUI has no model folder {folder!r}",
                route=f"GET {path}",
                url=self.base_url + path,
                status=404,
                kind="http",
            )
        if answer.status != 200:
            raise self._http.http_error(answer, f"GET {path}", path)
        data = self._http.json(answer, f"GET {path}", path)
        if not isinstance(data, list):
            raise ComfyError(f"GET {path} at {self.base_url} answered {type(data).__name__}, not a list")
        return [str(x) for x in data]

    def upload_image(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = True,
        deadline: Deadline | None = None,
    ) -> dict[str, str]:
        """POST /upload/image (multipart): ``{name, subfolder, type}`` as ComfyUI stored it.

        Without ``overwrite`` the server keeps an identical file's name and renames a different
        one to ``name (1).png``: always use the returned name in the workflow.
        """
        source = Path(path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ComfyError(f"cannot read the image to upload: {source}: {exc}", kind="connection") from None
        upload_name = name or source.name
        content_type = mimetypes.guess_type(upload_name)[0] or "application/octet-stream"
        fields = {"type": "input", "subfolder": subfolder}
        if overwrite:
            fields["overwrite"] = "true"
        reply = self._http.send(
            "POST",
            "/upload/image",
            deadline=deadline,
            retry_reset=True,  # idempotent with overwrite / hash de-duplication
            files={"image": (upload_name, data, content_type)},
            data=fields,
        )
        if reply.status != 200:
            why = (
                " (ComfyUI answers 400 for a subfolder outside its input folder or a missing image)"
                if reply.status == 400
                else ""
            )
            raise self._http.http_error(reply, "POST /upload/image", "/upload/image", f" for {source}{why}")
        answer = self._http.json(reply, "POST /upload/image", "/upload/image")
        if not isinstance(answer, dict) or not answer.get("name"):
            raise ComfyError(
                f"POST /upload/image at {self.base_url} answered {answer!r},"
                " expected {name, subfolder, type}",
                kind="bad_response",
            )
        return {
            "name": str(answer["name"]),
            "subfolder": str(answer.get("subfolder") or ""),
            "type": str(answer.get("type") or "input"),
        }

    def queue_prompt(
        self,
        prompt: dict[str, Any],
        *,
        client_id: str,
        prompt_id: str | None = None,
        deadline: Deadline | None = None,
    ) -> dict[str, Any]:
        """POST /prompt: ``{prompt_id, number, node_errors}``; HTTP 400 raises :class:`PromptRejected`.

        Passing ``prompt_id`` (ComfyUI keeps a client-chosen id) lets the caller find, interrupt
        and remove its prompt even when the answer to this request is lost.
        """
        payload: dict[str, Any] = {"prompt": prompt, "client_id": client_id}
        if prompt_id is not None:
            payload["prompt_id"] = prompt_id
        route = "POST /prompt"
        # Never re-sent on a reset: a second POST could queue the prompt twice.
        sent = self._http.send("POST", "/prompt", deadline=deadline, retry_reset=False, json=payload)
        status, body = sent.status, sent.body
        if status == 400:
            try:
                data = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                data = {"error": excerpt(body)}
            head, lines = describe_rejection(data)
            message = f"ComfyUI rejected the prompt (HTTP 400): {head}"
            if lines:
                message += "; " + "; ".join(lines)
            raise PromptRejected(
                message,
                error=data.get("error") if isinstance(data, dict) else data,
                node_errors=data.get("node_errors") if isinstance(data, dict) else None,
                node_messages=lines,
                route=route,
                url=self.base_url + "/prompt",
                body=excerpt(body, 2000),
            )
        if status != 200:
            raise self._http.http_error(sent, route, "/prompt")
        answer = self._http.json(sent, route, "/prompt")
        if not isinstance(answer, dict) or not answer.get("prompt_id"):
            raise ComfyError(
                f"POST /prompt at {self.base_url} answered {excerpt(body)!r}, expected {{prompt_id, number}}",
                kind="bad_response",
            )
        return {
            "prompt_id": str(answer["prompt_id"]),
            "number": answer.get("number"),
            "node_errors": answer.get("node_errors") or {},
        }

    def history(self, prompt_id: str, *, deadline: Deadline | None = None) -> dict[str, Any] | None:
        """GET /history/<id>: the entry ``{prompt, outputs, status, meta}``, or None while there is none."""
        path = f"/history/{quote(prompt_id, safe='')}"
        data = self._http.get_json(path, deadline)
        if not isinstance(data, dict):
            raise ComfyError(f"GET {path} at {self.base_url} answered {type(data).__name__}, not an object")
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def queue(self, *, deadline: Deadline | None = None) -> dict[str, list[dict[str, Any]]]:
        """GET /queue as ``{running: [...], pending: [...]}``; pending sorted by number (run order).

        Items are ``{number, prompt_id, client_id, outputs_to_execute}`` (the prompt is left out).
        """
        data = self._http.get_json("/queue", deadline)
        if not isinstance(data, dict):
            raise ComfyError(f"GET /queue at {self.base_url} answered {type(data).__name__}, not an object")
        running = [queue_item(i) for i in data.get("queue_running") or []]
        pending = sorted((queue_item(i) for i in data.get("queue_pending") or []), key=_number_key)
        return {"running": running, "pending": pending}

    def interrupt(self, prompt_id: str | None = None, *, deadline: Deadline | None = None) -> None:
        """POST /interrupt; with ``prompt_id`` it stops only that prompt, and only if it is running.

        ComfyUI honours it at the next node start or progress tick, not at once.
        """
        self._http.post_ok("/interrupt", {"prompt_id": prompt_id} if prompt_id else None, deadline)

    def delete_from_queue(self, prompt_ids: list[str], *, deadline: Deadline | None = None) -> None:
        """POST /queue {"delete": ids}: removes pending prompts (a running one is not affected)."""
        self._http.post_ok("/queue", {"delete": list(prompt_ids)}, deadline)

    def free(
        self, *, unload_models: bool = False, free_memory: bool = True, deadline: Deadline | None = None
    ) -> None:
        """POST /free: unload models and/or free memory (takes effect before the next prompt)."""
        self._http.post_ok("/free", {"unload_models": unload_models, "free_memory": free_memory}, deadline)

    def view(
        self, filename: str, subfolder: str = "", type: str = "output", *, deadline: Deadline | None = None
    ) -> bytes:
        """GET /view: the file's bytes; 404 raises :class:`OutputMissing` naming the file."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        path = "/view"
        # the names come from the server: shown with their control characters visible
        where = visible(f"{subfolder}/{filename}" if subfolder else filename)
        answer = self._http.send("GET", path, deadline=deadline, params=params)
        status, body = answer.status, answer.body
        if status == 404:
            raise OutputMissing(
                f"GET /view at {self.base_url}: ComfyUI has no file {where} (type {visible(type)}): HTTP 404",
                filename=filename,
                subfolder=subfolder,
                type=type,
                route="GET /view",
                url=self.base_url + path,
                status=404,
            )
        if status != 200:
            why = {
                400: " (a name with '..' or a leading '/', or a bad type)",
                403: " (a subfolder outside ComfyUI's folder)",
            }.get(status, "")
            what = f" for {where} (type {visible(type)}){why}"
            raise self._http.http_error(answer, "GET /view", path, what)
        return body


__all__ = [
    "ComfyClient",
    "ResponseTooLarge",
    "ComfyError",
    "ComfyHTTPError",
    "ComfyTimeout",
    "OutputMissing",
    "PromptRejected",
    "ServerGone",
    "describe_rejection",
    "node_sort_key",
    "queue_item",
]
