"""Following one ComfyUI job to its end under the queue policy's deadlines (design §4).

The WebSocket is the fast path; ``/history`` and ``/queue`` are the truth.

- The socket ``ws://…/ws?clientId=<uuid4>`` is opened, and its first frame (``status`` with
  ``sid``) awaited, **before** ``POST /prompt``; the prompt id is chosen here, so the prompt can
  be found, interrupted and removed even when the answer to the POST is lost.
- Completion is ``execution_success``, ``executing`` with ``node: null`` for our prompt, a
  ``/history/<id>`` entry with a final ``status``, or (seen by polling) the prompt gone from
  ``/queue``. ``executed`` is a per-node output event, **never** completion: taking it for the end
  is how the old script hung. It only schedules one check of ``/history`` + ``/queue`` when
  nothing follows it.
- ``execution_error`` / ``execution_interrupted`` for our prompt end the attempt at once.
  Messages of other prompts are ignored (a prompt queued without a client id has its
  ``progress`` and ``execution_interrupted`` broadcast to every socket).
- A dropped socket, a socket silent for ``ws_idle_timeout_s`` (no message about our prompt) or
  a missed message falls back to polling ``/history`` every ``history_poll_interval_s``. While
  ``/queue`` still lists the prompt, a poll is proof of life, bounded by ``scene_max_wait_s``; once
  completion is signalled, the entry must appear within ``completion_grace_s`` and at most
  ``history_max_attempts`` polls that find nothing.
- When a deadline passes, our prompt (only ours) is interrupted and removed from the queue,
  then :class:`JobFailed` is raised with the evidence. A dead server fails at once.
- No socket is ever reopened with the same client id while the old one is open (the server
  orphans the new one); this follower does not reconnect at all: it polls.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import websocket

from pytest_gemdirect.comfyui.client import (
    ComfyClient,
    ComfyError,
    PromptRejected,
    ServerGone,
    classify_connection_error,
)
from pytest_gemdirect.comfyui.outputs import list_outputs
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.policy import POLICY_NAMES, QueuePolicy, flag_of

EventSink = Callable[[dict[str, Any]], None]
ProgressSink = Callable[[int, int], None]

KINDS = (
    "execution_error",
    "interrupted",
    "scene_max_wait",
    "completion_grace",
    "history_max_attempts",
    "server_gone",
    "rejected",
)
FLAGS = {name: flag_of(name) for name in POLICY_NAMES}
ALIVE_CHECK_S = 0.5  # how often is_server_alive is asked while waiting
CLEANUP_BUDGET_S = 5.0  # interrupt + dequeue + queue snapshot after a deadline, at most
WS_CLOSE_TIMEOUT_S = 0.5
FIRST_FRAME_WAIT_S = 2.0  # the real server sends status{sid} at once after the handshake
LAST_MESSAGES = 10
HISTORY_LATE_NOTE_S = 0.5  # history this long after executing{node: null} (sent once it is stored)


JobPolicy = QueuePolicy  # the queue policy is defined once, in policy.py


class JobFailed(Exception):
    """The attempt ended without a result.

    ``kind`` is one of :data:`KINDS`; ``message`` says in plain words what was expected, what was
    seen last and the setting that bounds it; ``evidence`` is a JSON-serialisable dict.
    """

    KINDS = KINDS

    def __init__(self, kind: str, message: str, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.evidence = evidence

    def __str__(self) -> str:
        return self.message


class JobRejected(JobFailed, PromptRejected):
    """POST /prompt answered 400 (kind ``rejected``): both a JobFailed and the client's PromptRejected."""

    def __init__(self, message: str, evidence: dict[str, Any], rejection: PromptRejected) -> None:
        Exception.__init__(self, message)
        self.kind = "rejected"
        self.message = message
        self.evidence = evidence
        self.route = rejection.route
        self.url = rejection.url
        self.status = rejection.status
        self.body = rejection.body
        self.error = rejection.error
        self.node_errors = rejection.node_errors
        self.node_messages = rejection.node_messages


@dataclass
class JobResult:
    """A finished job. Times are seconds after ``POST /prompt`` was sent."""

    prompt_id: str
    number: int | float | None
    client_id: str
    history: dict[str, Any]  # the /history/<id> entry
    outputs: list[dict[str, Any]]  # {node_id, filename, subfolder, type, animated}
    cached: bool  # every node came from ComfyUI's cache: no new files were written
    progress: list[tuple[float, int, int]]  # (t, value, max) of sampler progress
    seconds_per_step: float | None
    timings: dict[str, float | None]  # queued_s, started_s, completed_s, history_s
    notes: list[str]
    poll_attempts: int
    message_counts: dict[str, int]
    completion_signal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["progress"] = [list(p) for p in self.progress]
        return data


def run_job(
    client: ComfyClient,
    prompt: dict[str, Any],
    *,
    policy: JobPolicy,
    on_event: EventSink | None = None,
    on_progress: ProgressSink | None = None,
    is_server_alive: Callable[[], bool] | None = None,
    client_id: str | None = None,
) -> JobResult:
    """Queue ``prompt`` and follow it to its end; raise :class:`JobFailed` otherwise.

    ``on_event(dict)`` gets every job event as it happens (WebSocket message types, polls,
    fallbacks, interrupts), small enough for an events.jsonl line; ``on_progress(value, max)``
    gets sampler progress; ``is_server_alive()`` false means the server process died.
    """
    return _Job(client, prompt, policy, on_event, on_progress, is_server_alive, client_id).run()


# ---------------------------------------------------------------------------------------- helpers
def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _secs(value: float | None) -> str:
    """Seconds for people: two decimals below 10 s, one above."""
    if value is None:
        return "? s"
    return f"{value:.2f} s" if abs(value) < 10 else f"{value:.1f} s"


def _one_line(text: Any, limit: int = 240) -> str:
    flat = re.sub(r"\s+", " ", str(text or "")).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _needed_nodes(prompt: Mapping[str, Any], outputs: list[str] | None) -> set[str]:
    """The nodes ComfyUI runs for ``outputs`` (the output nodes and everything linked upstream)."""
    if not outputs:
        return {str(k) for k in prompt}
    needed: set[str] = set()
    todo = [str(o) for o in outputs]
    while todo:
        node_id = todo.pop()
        if node_id in needed or node_id not in prompt:
            continue
        needed.add(node_id)
        node = prompt[node_id] if isinstance(prompt[node_id], Mapping) else {}
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                todo.append(value[0])
    return needed


def _answer_text(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "{}"
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else None
    files = len(list_outputs(entry))
    if status is None:
        return f"an entry without status ({files} output files)"
    return (
        f"an entry with status {status.get('status_str')!r}, completed {status.get('completed')}"
        f" ({files} output files)"
    )


def _final(entry: Mapping[str, Any] | None) -> bool:
    status = entry.get("status") if entry else None
    return isinstance(status, Mapping) and (
        status.get("completed") is True or status.get("status_str") in ("success", "error")
    )


# ---------------------------------------------------------------------------------------- follower
@dataclass
class _Incident:
    kind: str  # "dropped", "silent", "no_connect"
    s: float
    detail: str = ""
    resumed_s: float | None = None


@dataclass
class _State:
    prompt_id: str = ""
    number: int | float | None = None
    queued_s: float | None = None
    started_s: float | None = None
    completion: str | None = None
    completed_s: float | None = None
    stored_signal_s: float | None = None  # executing{node: null}: the server has stored the entry
    history_s: float | None = None
    history_entry: dict[str, Any] | None = None
    cached_nodes: set[str] | None = None
    executing_nodes: list[str] = field(default_factory=list)
    announced: dict[str, Any] = field(default_factory=dict)  # node -> output from `executed`
    announced_s: float | None = None  # the first `executed` with output files
    progress: list[tuple[float, int, int]] = field(default_factory=list)
    progress_node: str | None = None
    current_node: str | None = None
    last_messages: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LAST_MESSAGES))
    counts: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    empty_polls: int = 0  # polls that found no entry after completion (history_max_attempts)
    last_answer: str | None = None
    last_poll_s: float | None = None
    queue_where: str | None = None
    incidents: list[_Incident] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_error: dict[str, Any] | None = None


class _Job:
    def __init__(
        self,
        client: ComfyClient,
        prompt: dict[str, Any],
        policy: JobPolicy,
        on_event: EventSink | None,
        on_progress: ProgressSink | None,
        is_server_alive: Callable[[], bool] | None,
        client_id: str | None,
    ) -> None:
        self.client = client
        self.prompt = prompt
        self.policy = policy
        self.on_event = on_event
        self.on_progress = on_progress
        self.is_server_alive = is_server_alive
        self.client_id = client_id or str(uuid.uuid4())
        self.deadline = Deadline(policy.scene_max_wait_s, setting="scene_max_wait")
        self.grace: Deadline | None = None
        self.t_post = time.monotonic()  # reset when POST /prompt is sent
        self.state = _State(prompt_id=str(uuid.uuid4()))
        self.ws: websocket.WebSocket | None = None
        self.ws_state = "not connected"
        self.silent = False  # socket open but quiet for ws_idle_timeout_s: polling meanwhile
        self.last_activity = time.monotonic()
        self.next_poll: float | None = None  # polling schedule (fallback, or after completion)
        self.check_at: float | None = None  # one look at /history + /queue after a lone `executed`
        self._idle = threading.Event()  # never set: a deadline-bounded wait when there is no socket
        self._sink_failed = False
        self._early: list[tuple[float, dict[str, Any]]] | None = []

    # ------------------------------------------------------------------ small helpers
    def s(self) -> float:
        """Seconds since POST /prompt was sent (slightly negative before)."""
        return round(time.monotonic() - self.t_post, 3)

    def emit(self, event: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        if self._early is not None:  # before POST /prompt: held until the clock's origin is known
            self._early.append((time.monotonic(), {"t": _now_iso(), "event": event, **fields}))
            return
        self._deliver({"t": _now_iso(), "s": self.s(), "event": event, **fields})

    def start_clock(self) -> None:
        """Seconds count from now (POST /prompt); events held until now go out with negative times."""
        old, self.t_post = self.t_post, time.monotonic()
        for message in self.state.last_messages:  # the status{sid} frame read before the POST
            message["t"] = round(message["t"] + old - self.t_post, 3) + 0.0
        early, self._early = self._early or [], None
        for at, event in early:
            event["s"] = round(at - self.t_post, 3) + 0.0
            self._deliver({k: event[k] for k in ("t", "s", "event")} | event)

    def _deliver(self, event: dict[str, Any]) -> None:
        assert self.on_event is not None
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a broken sink must not end the job
            if not self._sink_failed:
                self._sink_failed = True
                self.state.notes.append(
                    f"on_event failed ({type(exc).__name__}: {exc}); events after it were lost"
                )

    def progress_text(self) -> str:
        p = self.state.progress
        if not p:
            return "no sampler progress seen"
        t, value, maximum = p[-1]
        return f"last progress {value}/{maximum} at {_secs(t)}"

    def messages_text(self) -> str:
        kinds = [m["type"] for m in self.state.last_messages]
        return "last messages: " + (", ".join(kinds) if kinds else "none")

    def polls_text(self) -> str:
        s = self.state
        if not s.polls:
            return "no /history polls"
        where = f" (in /queue: {s.queue_where})" if s.queue_where else ""
        return f"{s.polls} /history polls, last answer {s.last_answer}{where}"

    def ws_text(self) -> str:
        if self.ws is not None and self.silent:
            return f"websocket open but silent since {_secs(self._rel(self.last_activity))}"
        return f"websocket {self.ws_state}"

    def seen_last(self) -> str:
        return "; ".join([self.progress_text(), self.messages_text(), self.polls_text(), self.ws_text()])

    def _rel(self, monotonic: float) -> float:
        return round(monotonic - self.t_post, 3)

    # ------------------------------------------------------------------ evidence and failure
    def evidence(self, kind: str, setting: str | None) -> dict[str, Any]:
        s = self.state
        last = s.progress[-1] if s.progress else None
        announced = [o.where() for o in list_outputs({"outputs": s.announced}, include_temp=True)]
        evidence: dict[str, Any] = {
            "kind": kind,
            "prompt_id": s.prompt_id,
            "number": s.number,
            "client_id": self.client_id,
            "server": self.client.base_url,
            "setting": setting,
            "elapsed_s": self.s(),
            "deadline_s": self.policy.settings().get(setting) if setting else None,
            "completion": s.completion,
            "completion_signal_s": s.completed_s,
            "outputs_announced_s": s.announced_s,
            "last_progress": (
                {"value": last[1], "max": last[2], "t": last[0], "node": s.progress_node} if last else None
            ),
            "current_node": s.current_node,
            "last_messages": list(s.last_messages),
            "message_counts": dict(s.counts),
            "poll_attempts": s.polls,
            "counted_poll_attempts": s.empty_polls,
            "last_poll_answer": s.last_answer,
            "last_poll_s": s.last_poll_s,
            "websocket": self.ws_text(),
            "announced_outputs": announced[:50],
            "timings": self.timings(),
            "notes": self.notes(),
            "policy": self.policy.settings(),
        }
        if s.server_error is not None:
            evidence["error"] = s.server_error
        return evidence

    def fail(
        self, kind: str, message: str, *, setting: str | None = None, cleanup: bool = False
    ) -> JobFailed:
        """A JobFailed with the evidence; for a spent deadline, interrupt and dequeue our prompt first."""
        s = self.state
        if self._early is not None:
            self.start_clock()
        evidence = self.evidence(kind, setting)
        self.close_ws()
        if cleanup:
            actions = self.stop_own_prompt()
            evidence.update(actions)
            message += "; " + actions["cleanup"]
        elif kind not in ("server_gone", "rejected"):
            evidence["queue"] = self.queue_snapshot(self.cleanup_budget())
        else:
            evidence["queue"] = None
        evidence.setdefault("interrupt_sent", False)
        self.emit("failed", kind=kind, message=_one_line(message, 500))
        return JobFailed(kind, message, {**evidence, "prompt_id": s.prompt_id})

    def cleanup_budget(self) -> Deadline:
        """A fresh, short budget for the calls made after a deadline has passed."""
        return Deadline(min(CLEANUP_BUDGET_S, self.client.request_timeout_s))

    def queue_snapshot(self, budget: Deadline) -> dict[str, Any] | None:
        try:
            queue = self.client.queue(deadline=budget)
        except ComfyError as exc:
            return {"error": str(exc)}
        pid = self.state.prompt_id
        running = [i.get("prompt_id") for i in queue["running"]]
        pending = [[i.get("number"), i.get("prompt_id")] for i in queue["pending"]]
        if pid in running:
            ours = "running"
        elif any(p[1] == pid for p in pending):
            ahead = next(n for n, p in enumerate(pending) if p[1] == pid)
            ours = f"pending ({ahead} ahead)"
        else:
            ours = "absent"
        return {"ours": ours, "running": running, "pending": pending[:20], "pending_count": len(pending)}

    def stop_own_prompt(self) -> dict[str, Any]:
        """POST /interrupt {prompt_id: ours} and remove ours from the queue; never anyone else's.

        The interrupt is left out only when /queue shows another prompt running and not ours
        (a server that ignores ``prompt_id`` would stop that one).
        """
        pid = self.state.prompt_id
        budget = self.cleanup_budget()
        queue = self.queue_snapshot(budget)
        ours = (queue or {}).get("ours")
        others_running = bool(queue and queue.get("running") and ours != "running")
        done: list[str] = []
        errors: list[str] = []
        interrupt_sent = False
        removed = False
        if not others_running:
            try:
                self.client.interrupt(pid, deadline=budget)
                interrupt_sent = True
                done.append(f"sent POST /interrupt {{prompt_id: {pid}}}")
                self.emit("interrupt", prompt_id=pid, queue=ours)
            except ComfyError as exc:
                errors.append(f"POST /interrupt failed: {exc}")
        else:
            done.append("no interrupt sent: another prompt is running, ours is not")
        try:
            self.client.delete_from_queue([pid], deadline=budget)
            removed = ours is not None and ours.startswith("pending")
            done.append("removed it from the queue" if removed else "asked /queue to delete it")
            self.emit("dequeue", prompt_id=pid, queue=ours)
        except ComfyError as exc:
            errors.append(f"POST /queue delete failed: {exc}")
        if ours is None:
            where = "at the end /queue could not be read"
        elif ours == "absent":
            where = "at the end it was not in /queue"
        else:
            where = f"at the end it was {ours} in /queue"
        text = f"{where}; " + ", ".join(done + errors)
        if interrupt_sent and ours == "running":
            text += " (ComfyUI honours an interrupt at the next node or progress tick)"
        return {
            "queue": queue,
            "interrupt_sent": interrupt_sent,
            "removed_from_queue": removed,
            "cleanup": text,
            "cleanup_errors": errors,
        }

    # ------------------------------------------------------------------ main
    def run(self) -> JobResult:
        try:
            self.check_alive()
            self.connect()
            self.queue()
            return self.follow()
        finally:
            self.close_ws()

    def check_alive(self) -> None:
        if self.is_server_alive is None:
            return
        try:
            alive = self.is_server_alive()
        except Exception:  # noqa: BLE001 - a broken probe is not a dead server
            return
        if not alive:
            raise self.fail(
                "server_gone",
                f"the ComfyUI server at {self.client.base_url} went away while following prompt"
                f" {self.state.prompt_id} at {_secs(self.s())}: the harness reports its process has"
                f" exited; {self.seen_last()}",
            )

    def server_gone(self, exc: ServerGone) -> JobFailed:
        return self.fail(
            "server_gone",
            f"the ComfyUI server at {self.client.base_url} went away while following prompt"
            f" {self.state.prompt_id} at {_secs(self.s())}: {exc}; {self.seen_last()}",
        )

    def connect(self) -> None:
        url = self.client.ws_url(self.client_id)
        timeout = self.deadline.timeout(cap=self.client.request_timeout_s)
        try:
            self.ws = websocket.create_connection(url, timeout=max(timeout, 0.01))
        except (OSError, websocket.WebSocketException) as exc:
            if classify_connection_error(exc) == "refused":
                raise self.fail(
                    "server_gone",
                    f"the ComfyUI server at {self.client.base_url} refused the WebSocket connection"
                    f" ({url}) before prompt {self.state.prompt_id} was queued; it is not running there",
                ) from None
            self.ws = None
            self.ws_state = f"could not connect ({type(exc).__name__}: {_one_line(exc, 120)})"
            self.state.incidents.append(_Incident("no_connect", self.s(), _one_line(exc, 120)))
            self.next_poll = time.monotonic()
            self.emit("ws_connect_failed", error=_one_line(exc, 200))
            return
        self.ws_state = "open"
        self.last_activity = time.monotonic()
        self.emit("ws_connected", client_id=self.client_id)
        # The server registers the socket, then sends status{sid}: wait (briefly) for it so no
        # message of our prompt can be sent before the server knows where to send it.
        self.read_ws(min(self.policy.ws_idle_timeout_s, FIRST_FRAME_WAIT_S, self.deadline.remaining()))

    def queue(self) -> None:
        s = self.state
        self.start_clock()
        self.last_activity = self.t_post  # silence is counted from the moment there is a prompt
        self.emit("post_prompt", prompt_id=s.prompt_id, client_id=self.client_id)
        try:
            answer = self.client.queue_prompt(
                self.prompt, client_id=self.client_id, prompt_id=s.prompt_id, deadline=self.deadline
            )
        except PromptRejected as exc:
            self.close_ws()
            evidence = self.evidence("rejected", None)
            evidence.update(
                {
                    "interrupt_sent": False,
                    "queue": None,
                    "error": {"error": exc.error, "node_errors": exc.node_errors, "status": exc.status},
                    "node_messages": exc.node_messages,
                }
            )
            self.emit("rejected", message=_one_line(exc, 500))
            raise JobRejected(str(exc), evidence, exc) from None
        except ServerGone as exc:
            raise self.server_gone(exc) from None
        except ComfyError as exc:
            self.post_failed(exc)
            return
        if answer["prompt_id"] != s.prompt_id:
            s.notes.append(
                f"ComfyUI ignored the prompt id this client chose and answered {answer['prompt_id']}"
            )
            s.prompt_id = answer["prompt_id"]
        s.number = answer.get("number")
        s.queued_s = self.s()
        self.emit("queued", prompt_id=s.prompt_id, number=s.number)

    def post_failed(self, exc: ComfyError) -> None:
        """POST /prompt got no usable answer: the prompt id is ours, so ask /queue and /history."""
        s = self.state
        if self.deadline.expired():
            raise self.fail(
                "scene_max_wait",
                f"POST /prompt for prompt {s.prompt_id} did not answer within"
                f" {self.policy.scene_max_wait_s:g} s"
                f" (--scene-max-wait = {self.policy.scene_max_wait_s:g} s): {exc}",
                setting="scene_max_wait",
                cleanup=True,
            )
        budget = self.deadline.sooner(self.cleanup_budget())
        try:
            entry = self.client.history(s.prompt_id, deadline=budget)
            queue = self.queue_snapshot(budget) if entry is None else None
        except ServerGone as gone:
            raise self.server_gone(gone) from None
        except ComfyError:
            entry, queue = None, None
        taken = entry is not None or (queue is not None and queue.get("ours") not in (None, "absent"))
        if not taken:
            evidence = self.evidence("rejected", None)
            evidence.update({"interrupt_sent": False, "queue": queue, "error": {"post_prompt": str(exc)}})
            self.close_ws()
            self.emit("failed", kind="rejected", message=_one_line(exc, 500))
            raise JobFailed(
                "rejected",
                f"POST /prompt failed ({exc}) and prompt {s.prompt_id} is in neither /queue nor /history:"
                " ComfyUI did not take it",
                evidence,
            )
        s.queued_s = self.s()
        s.notes.append(f"the answer to POST /prompt was lost ({_one_line(exc, 160)}); ComfyUI had the prompt")
        self.emit("queued", prompt_id=s.prompt_id, number=None, recovered=True)
        if entry is not None and _final(entry):
            self.next_poll = time.monotonic()

    def follow(self) -> JobResult:
        while True:
            self.check_alive()
            if self.deadline.expired():
                raise self.deadline_failure()
            if self.grace is not None and self.grace.expired():
                raise self.grace_failure()
            now = time.monotonic()
            if self.ws is not None and not self.silent and self.state.completion is None:
                if now - self.last_activity >= self.policy.ws_idle_timeout_s:
                    self.went_silent()
            due = [t for t in (self.next_poll, self.check_at) if t is not None]
            if due and now >= min(due):
                self.check_at = None
                result = self.poll()
                if result is not None:
                    return result
                continue
            wait = self.wait_budget(now)
            if self.ws is not None:
                self.read_ws(wait)
            elif wait > 0:
                self._idle.wait(wait)

    def wait_budget(self, now: float) -> float:
        due = [self.deadline.remaining()]
        if self.grace is not None:
            due.append(self.grace.remaining())
        if self.next_poll is not None:
            due.append(self.next_poll - now)
        if self.check_at is not None:
            due.append(self.check_at - now)
        if self.ws is not None and not self.silent and self.state.completion is None:
            due.append(self.last_activity + self.policy.ws_idle_timeout_s - now)
        if self.is_server_alive is not None:
            due.append(ALIVE_CHECK_S)
        return max(0.0, min(due))

    def went_silent(self) -> None:
        idle = self.policy.ws_idle_timeout_s
        self.silent = True
        self.state.incidents.append(_Incident("silent", self._rel(self.last_activity)))
        self.next_poll = time.monotonic()
        self.emit(
            "fallback",
            reason="websocket silent",
            since_s=self._rel(self.last_activity),
            setting="ws_idle_timeout",
            value=idle,
        )

    # ------------------------------------------------------------------ websocket
    def close_ws(self) -> None:
        ws, self.ws = self.ws, None
        if ws is None:
            return
        try:
            ws.close(timeout=WS_CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - closing a broken socket may fail in many ways
            try:
                ws.shutdown()
            except Exception:  # noqa: BLE001
                pass
        if self.ws_state == "open":
            self.ws_state = "closed by this client"

    def ws_lost(self, reason: str) -> None:
        at = self.s()
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.shutdown()  # the connection is gone: no closing handshake to wait for
            except Exception:  # noqa: BLE001
                pass
        self.ws_state = f"dropped at {_secs(at)} ({reason})"
        self.silent = False
        self.state.incidents.append(_Incident("dropped", at, reason))
        self.next_poll = time.monotonic()  # a completion may have been missed: look now
        self.emit("fallback", reason="websocket dropped", detail=reason)

    def read_ws(self, timeout: float) -> None:
        ws = self.ws
        if ws is None or timeout <= 0:
            return
        try:
            ws.settimeout(max(timeout, 0.001))
            opcode, data = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return
        except (OSError, websocket.WebSocketException) as exc:
            self.ws_lost(f"{type(exc).__name__}: {_one_line(exc, 120)}" if str(exc) else type(exc).__name__)
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.ws_lost("closed by the server")
            return
        if opcode == websocket.ABNF.OPCODE_BINARY:
            self.state.counts["binary"] += 1
            self.activity()  # previews go only to the prompt's client
            event_type = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
            self.emit("ws", type="binary", length=len(data), event_type=event_type)
            return
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return
        try:
            message = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        except (UnicodeDecodeError, ValueError):
            self.state.counts["unparseable"] += 1
            return
        if isinstance(message, dict):
            self.handle(message)

    def activity(self) -> None:
        self.last_activity = time.monotonic()
        if self.silent:
            self.silent = False
            for incident in reversed(self.state.incidents):
                if incident.kind == "silent" and incident.resumed_s is None:
                    incident.resumed_s = self.s()
                    break
            if self.state.completion is None:
                self.next_poll = None
            self.emit("ws_resumed")

    def handle(self, message: dict[str, Any]) -> None:
        s = self.state
        kind = str(message.get("type", "?"))
        raw = message.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        pid = data.get("prompt_id")
        if pid is not None and pid != s.prompt_id:
            s.counts["other_prompt"] += 1
            return
        s.counts[kind] += 1
        t = self.s()
        brief: dict[str, Any] = {"t": t, "type": kind}
        if "node" in data:
            brief["node"] = data.get("node")
        if kind == "status":
            remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
            brief["queue_remaining"] = remaining
        elif kind == "progress":
            brief.update(value=data.get("value"), max=data.get("max"))
        elif kind in ("execution_error", "execution_interrupted"):
            brief.update(node=data.get("node_id"), node_type=data.get("node_type"))
        if kind != "progress_state":
            s.last_messages.append(brief)
        # keep events small: progress_state carries every node of the graph
        if kind == "progress_state":
            nodes = data.get("nodes")
            nodes = nodes if isinstance(nodes, dict) else {}
            running = [k for k, v in nodes.items() if isinstance(v, dict) and v.get("state") == "running"]
            self.emit("ws", type=kind, running=running)
        elif kind == "execution_error":
            self.emit(
                "ws",
                type=kind,
                node=data.get("node_id"),
                node_type=data.get("node_type"),
                exception_type=data.get("exception_type"),
                exception_message=_one_line(data.get("exception_message"), 300),
            )
        else:
            self.emit("ws", **{k: v for k, v in brief.items() if k != "t"})
        if pid is None:
            if kind == "executing" and data.get("node") is None:
                self.next_poll = time.monotonic()  # a legacy end-of-prompt without id: look now
            elif kind == "executing":
                s.current_node = str(data.get("node"))  # after a reconnect: the node running now
            return
        # from here on: a message about our prompt
        self.activity()
        self.check_at = None  # the job is clearly alive: no need for the look after `executed`
        if kind == "execution_start":
            s.started_s = s.started_s if s.started_s is not None else t
        elif kind == "execution_cached":
            s.cached_nodes = {str(n) for n in data.get("nodes") or []}
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                self.completed("executing{node: null}")
                s.stored_signal_s = s.stored_signal_s if s.stored_signal_s is not None else t
                self.next_poll = time.monotonic()  # sent after the history entry is stored
            else:
                s.current_node = str(node)
                s.executing_nodes.append(str(node))
                if s.started_s is None:
                    s.started_s = t
        elif kind == "progress":
            self.progress(data, t)
        elif kind == "executed":
            s.announced[str(data.get("node"))] = data.get("output")
            if s.announced_s is None and list_outputs(
                {"outputs": {"n": data.get("output")}}, include_temp=True
            ):
                s.announced_s = t
            if s.completion is None and self.next_poll is None:
                # Not completion. If nothing follows it, look at /history and /queue once.
                self.check_at = time.monotonic() + self.policy.history_poll_interval_s
        elif kind == "execution_success":
            self.completed("execution_success")
            if self.next_poll is None:
                self.next_poll = time.monotonic() + self.policy.history_poll_interval_s
        elif kind == "execution_error":
            raise self.server_failure("execution_error", data, t)
        elif kind == "execution_interrupted":
            raise self.server_failure("execution_interrupted", data, t)

    def progress(self, data: dict[str, Any], t: float) -> None:
        s = self.state
        try:
            value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
        except (TypeError, ValueError):
            return
        s.progress.append((t, value, maximum))
        s.progress_node = str(data.get("node")) if data.get("node") is not None else s.progress_node
        if s.started_s is None:
            s.started_s = t
        if self.on_progress is not None:
            try:
                self.on_progress(value, maximum)
            except Exception as exc:  # noqa: BLE001 - a broken sink must not end the job
                self.emit("sink_error", sink="on_progress", error=_one_line(exc, 200))

    def completed(self, signal: str) -> None:
        s = self.state
        if s.completion is not None:
            return
        s.completion = signal
        s.completed_s = self.s()
        self.grace = Deadline(self.policy.completion_grace_s, setting="completion_grace")
        self.emit("completion", signal=signal)

    # ------------------------------------------------------------------ polling
    def poll(self) -> JobResult | None:
        s, p = self.state, self.policy
        s.polls += 1
        s.last_poll_s = self.s()
        budget = self.deadline.sooner(self.grace)
        answer = "none"
        try:
            entry = self.client.history(s.prompt_id, deadline=budget)
        except ServerGone as exc:
            s.last_answer = "none (the server went away)"
            raise self.server_gone(exc) from None
        except ComfyError as exc:
            entry = None
            answer = f"error: {_one_line(exc, 160)}"
            s.last_answer = answer
        else:
            s.last_answer = _answer_text(entry)
            answer = "{}" if entry is None else "entry"
        if entry is not None and _final(entry):
            s.history_entry = entry
            s.history_s = self.s()
            status = (entry.get("status") or {}).get("status_str")
            self.emit("poll", attempt=s.polls, history="final", status=status)
            return self.finish(entry)
        where = None
        if s.completion is None:
            where = self.where_in_queue(budget)
            s.queue_where = where
            if where == "running" and s.started_s is None:
                s.started_s = self.s()
            elif where == "absent":
                self.completed("left /queue without a /history entry")
        self.emit("poll", attempt=s.polls, history=answer, queue=where)
        if s.completion is not None or where == "unknown":
            s.empty_polls += 1
            if s.empty_polls >= p.history_max_attempts:
                raise self.attempts_failure()
        keep_polling = self.ws is None or self.silent or s.completion is not None or where == "unknown"
        self.next_poll = time.monotonic() + p.history_poll_interval_s if keep_polling else None
        return None

    def where_in_queue(self, budget: Deadline) -> str:
        try:
            queue = self.client.queue(deadline=budget)
        except ServerGone as exc:
            raise self.server_gone(exc) from None
        except ComfyError:
            return "unknown"
        pid = self.state.prompt_id
        if any(i.get("prompt_id") == pid for i in queue["running"]):
            return "running"
        if any(i.get("prompt_id") == pid for i in queue["pending"]):
            return "pending"
        return "absent"

    # ------------------------------------------------------------------ endings
    def server_failure(self, kind: str, data: Mapping[str, Any], t: float | None) -> JobFailed:
        s = self.state
        s.server_error = {
            key: data.get(key)
            for key in (
                "node_id",
                "node_type",
                "exception_type",
                "exception_message",
                "traceback",
                "executed",
                "current_inputs",
            )
            if key in data
        }
        at = f" at {_secs(t)}" if t is not None else ""
        where = f"node {data.get('node_id')} ({data.get('node_type')})"
        if kind == "execution_error":
            exc_type = data.get("exception_type") or "error"
            text = _one_line(data.get("exception_message"), 400)
            return self.fail(
                "execution_error",
                f"ComfyUI failed prompt {s.prompt_id} in {where}{at}: {exc_type}: {text};"
                f" {self.progress_text()}; {self.messages_text()} (traceback in the evidence)",
            )
        return self.fail(
            "interrupted",
            f"ComfyUI interrupted prompt {s.prompt_id} in {where}{at} (execution_interrupted: someone sent"
            f" POST /interrupt, or the server was stopping); {self.progress_text()}; {self.messages_text()}",
        )

    def deadline_failure(self) -> JobFailed:
        s, p = self.state, self.policy
        wait = p.scene_max_wait_s
        expected = "a completion signal (execution_success, executing{node: null}) or a final /history entry"
        if s.completion is not None:
            state = (
                f"ComfyUI signalled completion at {_secs(s.completed_s)} ({s.completion}) but"
                f" /history/{s.prompt_id} had no finished entry"
            )
        else:
            state = "none came"
        return self.fail(
            "scene_max_wait",
            f"prompt {s.prompt_id} did not finish within {wait:g} s (--scene-max-wait = {wait:g} s):"
            f" expected {expected}, {state}; {self.seen_last()}",
            setting="scene_max_wait",
            cleanup=True,
        )

    def grace_failure(self) -> JobFailed:
        s, p = self.state, self.policy
        grace = p.completion_grace_s
        return self.fail(
            "completion_grace",
            f"ComfyUI signalled completion of prompt {s.prompt_id} at {_secs(s.completed_s)}"
            f" ({s.completion}) but /history/{s.prompt_id} had no outputs after {grace:g} s"
            f" (--completion-grace = {grace:g} s);"
            f" {s.polls} polls, last answer {s.last_answer}; {self.progress_text()}; {self.messages_text()};"
            f" {self.ws_text()}",
            setting="completion_grace",
            cleanup=True,
        )

    def attempts_failure(self) -> JobFailed:
        s, p = self.state, self.policy
        if s.completion is not None:
            head = (
                f"ComfyUI signalled completion of prompt {s.prompt_id} at {_secs(s.completed_s)}"
                f" ({s.completion}) but /history/{s.prompt_id} had no finished entry after"
                f" {s.empty_polls} polls"
            )
        else:
            head = (
                f"/history/{s.prompt_id} had no finished entry and /queue could not be read for"
                f" {s.empty_polls} polls"
            )
        return self.fail(
            "history_max_attempts",
            f"{head} {p.history_poll_interval_s:g} s apart"
            f" (--history-max-attempts = {p.history_max_attempts},"
            f" --history-poll-interval = {p.history_poll_interval_s:g} s); last answer {s.last_answer};"
            f" {self.progress_text()}; {self.messages_text()}; {self.ws_text()}",
            setting="history_max_attempts",
            cleanup=True,
        )

    def finish(self, entry: dict[str, Any]) -> JobResult:
        s = self.state
        status = entry.get("status") or {}
        messages = [m for m in status.get("messages") or [] if isinstance(m, list | tuple) and len(m) >= 2]
        if not (status.get("completed") is True or status.get("status_str") == "success"):
            for name, data in messages:
                if name in ("execution_error", "execution_interrupted") and isinstance(data, Mapping):
                    raise self.server_failure(name, data, None)
            raise self.fail(
                "execution_error",
                f"ComfyUI's /history/{s.prompt_id} says the prompt ended with status"
                f" {status.get('status_str')!r} and gives no error message; {self.seen_last()}",
            )
        if s.completion is None:
            self.completed("final /history entry")
        if s.cached_nodes is None:
            for name, data in messages:
                if name == "execution_cached" and isinstance(data, Mapping):
                    s.cached_nodes = {str(n) for n in data.get("nodes") or []}
        queued = entry.get("prompt")
        outputs_to_execute = (
            [str(o) for o in queued[4]]
            if isinstance(queued, list) and len(queued) > 4 and isinstance(queued[4], list)
            else None
        )
        needed = _needed_nodes(self.prompt, outputs_to_execute)
        cached = bool(needed) and s.cached_nodes is not None and needed <= s.cached_nodes
        outputs = [o.to_dict() for o in list_outputs(entry)]
        notes = self.notes(final=True)
        if cached:
            notes.append(
                "every node came from ComfyUI's cache: it re-sent the file names of an earlier run and"
                " wrote no new files"
            )
        if not outputs and s.announced:
            notes.append(
                f"`executed` announced outputs of nodes {sorted(s.announced)} but /history lists none"
            )
        self.emit("finished", outputs=len(outputs), cached=cached, polls=s.polls)
        self.close_ws()
        return JobResult(
            prompt_id=s.prompt_id,
            number=s.number,
            client_id=self.client_id,
            history=entry,
            outputs=outputs,
            cached=cached,
            progress=list(s.progress),
            seconds_per_step=self.seconds_per_step(),
            timings=self.timings(),
            notes=notes,
            poll_attempts=s.polls,
            message_counts=dict(s.counts),
            completion_signal=s.completion,
        )

    def timings(self) -> dict[str, float | None]:
        s = self.state
        return {
            "queued_s": s.queued_s,
            "started_s": s.started_s,
            "completed_s": s.completed_s,
            "history_s": s.history_s,
        }

    def seconds_per_step(self) -> float | None:
        s = self.state
        if len(s.progress) < 2:
            return None
        maximum = s.progress[-1][2]
        run = [p for p in s.progress if p[2] == maximum]
        first, last = run[0], run[-1]
        if last[1] <= first[1]:
            return None
        return round((last[0] - first[0]) / (last[1] - first[1]), 4)

    def notes(self, *, final: bool = False) -> list[str]:
        s, p = self.state, self.policy
        notes = list(s.notes)
        by_polling = " completed by polling /history" if final else " followed by polling /history"
        for incident in s.incidents:
            if incident.kind == "dropped":
                notes.append(f"websocket dropped at {_secs(incident.s)} ({incident.detail});{by_polling}")
            elif incident.kind == "no_connect":
                notes.append(f"websocket could not connect ({incident.detail});{by_polling}")
            elif incident.kind == "silent":
                text = (
                    f"websocket silent for {p.ws_idle_timeout_s:g} s from {_secs(incident.s)}"
                    f" (--ws-idle-timeout = {p.ws_idle_timeout_s:g} s)"
                )
                if incident.resumed_s is not None:
                    if final:
                        continue  # a quiet spell (a model load, a queue ahead): in the events, not a note
                    text += f"; polled /history meanwhile, messages resumed at {_secs(incident.resumed_s)}"
                else:
                    text += f";{by_polling}"
                notes.append(text)
        if final and s.history_s is not None and s.completed_s is not None:
            if s.stored_signal_s is not None:
                since, signal = s.stored_signal_s, "executing{node: null}"
            else:
                since, signal = s.completed_s, str(s.completion)
            late = s.history_s - since
            if late >= HISTORY_LATE_NOTE_S:
                notes.append(
                    f"history came {_secs(late)} after completion ({signal}; --completion-grace ="
                    f" {p.completion_grace_s:g} s)"
                )
        return notes


__all__ = ["FLAGS", "KINDS", "JobFailed", "JobPolicy", "JobRejected", "JobResult", "run_job"]
