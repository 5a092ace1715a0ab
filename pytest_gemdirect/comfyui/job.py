"""Following one ComfyUI job to its end under the queue policy's deadlines (design §4).

The WebSocket is the fast path; ``/history`` and ``/queue`` are the truth. Completion is
``execution_success``, ``executing`` with ``node: null`` for our prompt, or a history entry with a
final status — never ``executed``, which is a per-node output event (taking it for the end is how
the old script hung). Once the outputs are announced (every output node executed, the completion
signal, or the prompt gone from the queue) the history entry must appear within the completion
grace, polled at most ``history_max_attempts`` times. Nothing here waits without a deadline.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websocket

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, ServerGone
from pytest_gemdirect.comfyui.outputs import OutputFile, list_outputs
from pytest_gemdirect.comfyui.workflow import SAVE_CLASSES
from pytest_gemdirect.deadline import Deadline

EventSink = Callable[[dict[str, Any]], None]
ProgressSink = Callable[[int, int], None]
WS_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobPolicy:
    """The queue policy; each field is named after its setting."""

    scene_max_wait_s: float = 180.0  # --scene-max-wait
    history_poll_interval_s: float = 2.0  # --history-poll-interval
    history_max_attempts: int = 30  # --history-max-attempts
    completion_grace_s: float = 30.0  # --completion-grace
    ws_idle_timeout_s: float = 15.0  # --ws-idle-timeout


class JobFailed(Exception):
    """The attempt ended without a result. ``kind`` says how; ``evidence`` is JSON-serialisable."""

    KINDS = (
        "execution_error",
        "interrupted",
        "scene_max_wait",
        "completion_grace",
        "history_max_attempts",
        "server_gone",
    )

    def __init__(self, kind: str, message: str, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.kind = kind
        self.evidence = evidence


@dataclass
class JobResult:
    prompt_id: str
    number: int | None
    client_id: str
    history: dict[str, Any]
    outputs: list[OutputFile]
    cached: bool
    progress: list[tuple[float, int, int]]
    seconds_per_step: float | None
    timings: dict[str, float | None]
    notes: list[str]
    poll_attempts: int
    message_counts: dict[str, int]


@dataclass
class _State:
    prompt_id: str = ""
    number: int | None = None
    queued_s: float | None = None
    started_s: float | None = None
    signal_s: float | None = None  # completion signal (success / executing null)
    signal_source: str | None = None
    announced_s: float | None = None  # outputs announced: grace starts here
    history_s: float | None = None
    executed_nodes: set[str] = field(default_factory=set)
    cached_nodes: set[str] = field(default_factory=set)
    progress: list[tuple[float, int, int]] = field(default_factory=list)
    last_messages: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    counts: Counter[str] = field(default_factory=Counter)
    polls: int = 0  # every /history poll
    counted_polls: int = 0  # polls that count against history_max_attempts
    last_poll_answer: str | None = None
    last_message_s: float = 0.0
    polling: bool = False
    notes: list[str] = field(default_factory=list)
    interrupt_sent: bool = False
    server_error: dict[str, Any] | None = None


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
    """Queue ``prompt`` and follow it to its end; raise JobFailed with evidence otherwise."""
    return _Follower(client, prompt, policy, on_event, on_progress, is_server_alive, client_id).run()


class _Follower:
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
        self.is_server_alive = is_server_alive or (lambda: True)
        self.client_id = client_id or str(uuid.uuid4())
        self.output_nodes = {nid for nid, node in prompt.items() if node.get("class_type") in SAVE_CLASSES}
        self.state = _State()
        self.t0 = time.monotonic()
        self.deadline = Deadline(policy.scene_max_wait_s, setting="scene_max_wait")
        self.ws: websocket.WebSocket | None = None
        self.next_poll = 0.0
        self._pause = threading.Event()

    # --- small helpers -----------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"t": self.now(), "event": event, **fields})

    def note(self, text: str) -> None:
        self.state.notes.append(text)
        self.emit("note", text=text)

    def evidence(self) -> dict[str, Any]:
        s = self.state
        last = s.progress[-1] if s.progress else None
        return {
            "prompt_id": s.prompt_id or None,
            "client_id": self.client_id,
            "elapsed_s": self.now(),
            "last_progress": {"value": last[1], "max": last[2]} if last else None,
            "last_messages": list(s.last_messages),
            "message_counts": dict(s.counts),
            "poll_attempts": s.polls,
            "counted_poll_attempts": s.counted_polls,
            "last_poll_answer": s.last_poll_answer,
            "completion_signal_s": s.signal_s,
            "outputs_announced_s": s.announced_s,
            "interrupt_sent": s.interrupt_sent,
            "server_error": s.server_error,
            "notes": list(s.notes),
            "policy": {
                "scene_max_wait": self.policy.scene_max_wait_s,
                "history_poll_interval": self.policy.history_poll_interval_s,
                "history_max_attempts": self.policy.history_max_attempts,
                "completion_grace": self.policy.completion_grace_s,
                "ws_idle_timeout": self.policy.ws_idle_timeout_s,
            },
        }

    def seen_last(self) -> str:
        s = self.state
        parts = []
        if s.progress:
            parts.append(f"last progress {s.progress[-1][1]}/{s.progress[-1][2]}")
        kinds = [m["type"] for m in s.last_messages]
        parts.append(f"last messages: {', '.join(kinds[-6:]) if kinds else 'none'}")
        parts.append(f"{s.polls} /history polls, last answer {s.last_poll_answer or 'none'}")
        return "; ".join(parts)

    def fail(self, kind: str, message: str, *, interrupt: bool) -> JobFailed:
        if interrupt:
            self.interrupt_own_prompt()
        evidence = self.evidence()
        evidence["queue_at_end"] = self.queue_snapshot()
        self.emit("failed", kind=kind, message=message)
        return JobFailed(kind, message, evidence)

    def interrupt_own_prompt(self) -> None:
        """Interrupt and dequeue our prompt only; never touch anyone else's."""
        if not self.state.prompt_id:
            return
        budget = Deadline(5.0)
        try:
            self.client.interrupt(self.state.prompt_id, deadline=budget)
            self.client.delete_from_queue([self.state.prompt_id], deadline=budget)
            self.state.interrupt_sent = True
            self.emit("interrupt", prompt_id=self.state.prompt_id)
        except ComfyError as exc:
            self.emit("interrupt_failed", error=str(exc))

    def queue_snapshot(self) -> dict[str, Any] | None:
        try:
            queue = self.client.queue(deadline=Deadline(3.0))
        except ComfyError:
            return None
        return {
            "running": [item[1] for item in queue["running"]],
            "pending": [item[1] for item in queue["pending"]],
        }

    # --- the follow loop -------------------------------------------------------------------

    def run(self) -> JobResult:
        try:
            self.connect()
            self.queue()
            while True:
                result = self.step()
                if result is not None:
                    return result
        finally:
            self.close_ws()

    def connect(self) -> None:
        try:
            self.ws = websocket.create_connection(
                self.client.ws_url(self.client_id), timeout=self.deadline.timeout(cap=WS_CONNECT_TIMEOUT_S)
            )
            self.state.last_message_s = self.now()
            self.emit("ws_connected")
        except (OSError, websocket.WebSocketException) as exc:
            self.ws = None
            self.state.polling = True
            self.note(f"websocket could not connect ({exc}); following by polling /history")

    def queue(self) -> None:
        answer = self.client.queue_prompt(self.prompt, client_id=self.client_id, deadline=self.deadline)
        self.state.prompt_id = answer["prompt_id"]
        self.state.number = answer.get("number")
        self.state.queued_s = self.now()
        self.emit("queued", prompt_id=self.state.prompt_id, number=self.state.number)

    def step(self) -> JobResult | None:
        s, p = self.state, self.policy
        if not self.is_server_alive():
            raise self.fail("server_gone", f"the ComfyUI process died ({self.seen_last()})", interrupt=False)
        if self.deadline.expired():
            raise self.fail(
                "scene_max_wait",
                f"prompt {s.prompt_id} did not finish within {p.scene_max_wait_s:g} s"
                f" (--scene-max-wait = {p.scene_max_wait_s:g} s); {self.seen_last()}",
                interrupt=True,
            )
        if s.announced_s is not None and self.now() - s.announced_s > p.completion_grace_s:
            raise self.fail(
                "completion_grace",
                f"ComfyUI signalled the outputs of prompt {s.prompt_id} at {s.announced_s:.1f} s"
                f" ({s.signal_source}), but /history/{s.prompt_id} had no finished entry"
                f" {p.completion_grace_s:g} s later (--completion-grace = {p.completion_grace_s:g} s);"
                f" {self.seen_last()}",
                interrupt=True,
            )
        if self.ws is not None and not s.polling and self.now() - s.last_message_s > p.ws_idle_timeout_s:
            s.polling = True
            self.note(
                f"websocket silent for {p.ws_idle_timeout_s:g} s (--ws-idle-timeout); polling /history from"
                f" {self.now():.1f} s"
            )
        if (s.polling or s.announced_s is not None) and self.now() >= self.next_poll:
            result = self.poll()
            if result is not None:
                return result
            self.next_poll = self.now() + p.history_poll_interval_s
        self.wait_for_something()
        return None

    def wait_for_something(self) -> None:
        """Block until a message arrives or the next thing to check is due (never past a deadline)."""
        s, p = self.state, self.policy
        due = [self.deadline.remaining()]
        if s.polling or s.announced_s is not None:
            due.append(max(0.0, self.next_poll - self.now()))
        if s.announced_s is not None:
            due.append(max(0.0, s.announced_s + p.completion_grace_s - self.now()) + 0.001)
        if self.ws is not None and not s.polling:
            due.append(max(0.0, s.last_message_s + p.ws_idle_timeout_s - self.now()) + 0.001)
        timeout = max(0.005, min(min(due), 1.0))  # at most 1 s, so a dead process is seen promptly
        if self.ws is None:
            self._pause.wait(timeout)
            return
        self.ws.settimeout(timeout)
        try:
            frame = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        except (OSError, websocket.WebSocketException) as exc:
            self.close_ws()
            s.polling = True
            self.next_poll = self.now()
            self.note(f"websocket dropped at {self.now():.1f} s ({type(exc).__name__}); polling /history")
            return
        s.last_message_s = self.now()
        if isinstance(frame, bytes):
            s.counts["binary_preview"] += 1
            return
        try:
            message = json.loads(frame)
        except ValueError:
            s.counts["unparseable"] += 1
            return
        self.handle(message)

    def close_ws(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
            self.ws = None

    # --- messages --------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        s = self.state
        kind = message.get("type", "?")
        data = message.get("data") or {}
        ours = data.get("prompt_id") == s.prompt_id
        s.counts[kind] += 1
        if kind in ("status", "progress_state", "feature_flags") or not ours:
            return  # broadcast, per-node state, or another client's prompt
        brief: dict[str, Any] = {"t": self.now(), "type": kind}
        if "node" in data:
            brief["node"] = data["node"]
        s.last_messages.append(brief)
        if kind == "progress":
            value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
            s.progress.append((self.now(), value, maximum))
            self.emit("ws", type=kind, value=value, max=maximum)
            if self.on_progress is not None:
                self.on_progress(value, maximum)
            return
        self.emit("ws", **{k: v for k, v in brief.items() if k != "t"})
        if kind == "execution_start":
            s.started_s = self.now()
        elif kind == "execution_cached":
            s.cached_nodes = {str(n) for n in data.get("nodes", [])}
        elif kind == "executed":
            s.executed_nodes.add(str(data.get("node")))
            if self.output_nodes and self.output_nodes <= s.executed_nodes:
                self.announce("every output node executed")
        elif kind == "execution_success":
            self.signal("execution_success")
        elif kind == "executing" and data.get("node") is None:
            self.signal("executing node=null")
        elif kind in ("execution_error", "execution_interrupted"):
            self.server_failure(kind, data)

    def announce(self, source: str, *, poll_now: bool = False) -> None:
        """The outputs exist: from now on the history entry must come within the grace."""
        s = self.state
        if s.announced_s is None:
            s.announced_s = self.now()
            s.signal_source = s.signal_source or source
            self.next_poll = self.now() + self.policy.history_poll_interval_s
            self.emit("outputs_announced", source=source)
        if poll_now:
            self.next_poll = self.now()

    def signal(self, source: str) -> None:
        s = self.state
        if s.signal_s is None:
            s.signal_s = self.now()
            s.signal_source = source
            self.emit("completion_signal", source=source)
        # The server stores the history entry just before it sends executing{node: null}.
        self.announce(source, poll_now=source == "executing node=null" or self.ws is None)

    def server_failure(self, kind: str, data: dict[str, Any]) -> None:
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
            )
        }
        where = f"node {data.get('node_id')} ({data.get('node_type')})"
        if kind == "execution_error":
            raise self.fail(
                "execution_error",
                f"ComfyUI failed prompt {s.prompt_id} at {where}: {data.get('exception_type', '')}"
                f" {data.get('exception_message', '').strip()}",
                interrupt=False,
            )
        raise self.fail("interrupted", f"prompt {s.prompt_id} was interrupted at {where}", interrupt=False)

    # --- polling -----------------------------------------------------------------------------

    def poll(self) -> JobResult | None:
        s, p = self.state, self.policy
        s.polls += 1
        try:
            entry = self.client.history(s.prompt_id, deadline=self.deadline)
        except ServerGone as exc:
            raise self.fail("server_gone", f"{exc} ({self.seen_last()})", interrupt=False) from None
        except ComfyError as exc:
            s.last_poll_answer = f"error: {exc}"
            self.emit("poll", route="/history", answer=s.last_poll_answer)
            return None
        status = (entry or {}).get("status") or {}
        s.last_poll_answer = "{}" if entry is None else f"entry, status {status.get('status_str') or 'none'}"
        self.emit("poll", route="/history", answer=s.last_poll_answer, attempt=s.polls)
        if entry is not None and status.get("status_str") == "error":
            self.history_failure(status)
        if entry is not None and (status.get("completed") or status.get("status_str") == "success"):
            return self.finish(entry)
        if s.announced_s is None and entry is None:
            self.check_queue()
        if s.announced_s is not None:
            s.counted_polls += 1
            if s.counted_polls >= p.history_max_attempts:
                raise self.fail(
                    "history_max_attempts",
                    f"/history/{s.prompt_id} had no finished entry after {s.counted_polls} polls"
                    f" (--history-max-attempts = {p.history_max_attempts}); {self.seen_last()}",
                    interrupt=True,
                )
        return None

    def check_queue(self) -> None:
        """A prompt that left the queue without a history entry has ended: the grace starts."""
        try:
            queue = self.client.queue(deadline=self.deadline)
        except ServerGone as exc:
            raise self.fail("server_gone", f"{exc} ({self.seen_last()})", interrupt=False) from None
        except ComfyError:
            return
        ids = {item[1] for item in queue["running"] + queue["pending"]}
        if self.state.prompt_id not in ids:
            self.announce("prompt no longer in /queue", poll_now=True)

    def history_failure(self, status: dict[str, Any]) -> None:
        for name, data in status.get("messages", []):
            if name in ("execution_error", "execution_interrupted"):
                self.server_failure(name, data)
        raise self.fail(
            "execution_error", f"ComfyUI's history says prompt {self.state.prompt_id} failed", interrupt=False
        )

    def finish(self, entry: dict[str, Any]) -> JobResult:
        s = self.state
        s.history_s = self.now()
        if s.signal_s is None:
            s.signal_s = s.history_s
            s.signal_source = s.signal_source or "history entry"
        late = s.history_s - (s.announced_s if s.announced_s is not None else s.history_s)
        if late >= max(self.policy.history_poll_interval_s, 1.0):
            self.note(f"history came {late:.1f} s after the completion signal ({s.signal_source})")
        outputs = list_outputs(entry)
        prompt_nodes = set(self.prompt)
        cached = bool(prompt_nodes) and prompt_nodes <= s.cached_nodes
        if cached:
            self.note("every node was cached: ComfyUI re-sent old outputs and wrote no new files")
        steps = [(t, v) for t, v, _ in s.progress]
        per_step = None
        if len(steps) >= 2 and steps[-1][1] > steps[0][1]:
            per_step = round((steps[-1][0] - steps[0][0]) / (steps[-1][1] - steps[0][1]), 4)
        self.emit("finished", outputs=len(outputs), cached=cached)
        return JobResult(
            prompt_id=s.prompt_id,
            number=s.number,
            client_id=self.client_id,
            history=entry,
            outputs=outputs,
            cached=cached,
            progress=list(s.progress),
            seconds_per_step=per_step,
            timings={
                "queued_s": s.queued_s,
                "started_s": s.started_s,
                "completed_s": s.signal_s,
                "history_s": s.history_s,
            },
            notes=list(s.notes),
            poll_attempts=s.polls,
            message_counts=dict(s.counts),
        )
