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
- A dropped socket, a socket silent for ``ws_idle_timeout`` (no message about our prompt) or
  a missed message falls back to polling ``/history`` every ``history_poll_interval``. While
  ``/queue`` still lists the prompt, a poll is proof of life, bounded by ``scene_max_wait``; once
  completion is signalled, the entry must appear within ``completion_grace`` and at most
  ``history_max_attempts`` polls that find nothing.
- When a deadline passes, our prompt (only ours) is interrupted and removed from the queue,
  then :class:`JobFailed` is raised with the evidence. A dead server fails at once.
- No socket is ever reopened with the same client id while the old one is open (the server
  orphans the new one); this follower does not reconnect at all: it polls.

This module is the state machine; the socket side is ``websocket_feed`` and ``messages``, the
polls and the clean-up ``polling``, the wording of failures and evidence ``evidence``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import websocket

from pytest_gemdirect.comfyui.client import (
    ComfyClient,
    ComfyError,
    PromptRejected,
    ResponseTooLarge,
    ServerGone,
)
from pytest_gemdirect.comfyui.events import EventSink, JobEvents
from pytest_gemdirect.comfyui.evidence import (
    attempts_text,
    deadline_text,
    grace_text,
    job_notes,
    post_deadline_text,
    unfinished_status_text,
)
from pytest_gemdirect.comfyui.failures import KINDS, Ending, JobFailed, JobRejected
from pytest_gemdirect.comfyui.messages import FAILURES, read_message
from pytest_gemdirect.comfyui.outputs import list_outputs
from pytest_gemdirect.comfyui.polling import Poller
from pytest_gemdirect.comfyui.state import Incident, JobState, is_final, needed_nodes, outputs_to_execute
from pytest_gemdirect.comfyui.websocket_feed import WebSocketFeed
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.net import REFUSED, classify_connection_error, one_line
from pytest_gemdirect.policy import POLICY_NAMES, QueuePolicy, flag_of

ProgressSink = Callable[[int, int], None]

FLAGS = {name: flag_of(name) for name in POLICY_NAMES}
ALIVE_CHECK_S = 0.5  # how often is_server_alive is asked while waiting
FIRST_FRAME_WAIT_S = 2.0  # the real server sends status{sid} at once after the handshake


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


@dataclass(frozen=True)
class JobHooks:
    """What the job follower tells its caller and asks it; each is optional, given at construction."""

    on_event: EventSink | None = None  # every job event, small enough for an events.jsonl line
    on_progress: ProgressSink | None = None  # sampler progress (value, max)
    is_server_alive: Callable[[], bool] | None = None  # false: the server process died
    on_abandon: Callable[[dict[str, Any]], None] | None = None  # the run was cut short: what was done
    behind: Callable[[], bool] | None = None  # true: the harness's own previous job is still ahead


ABANDON_BUDGET_S = 2.0
"""How long stopping our prompt may take when the run is cut short (Ctrl-C, SIGTERM, a timeout)."""


class RunEnding(Exception):
    """The run is being ended (:meth:`ActiveJobs.stop_all` was called): no new prompt is queued."""


class ActiveJobs:
    """The jobs this harness has queued and not yet seen end: what to stop when the run is cut short.

    Thread-safe: pytest-timeout's thread method stops them from its timer thread while the main
    thread is still following one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._ending: str | None = None

    def add(self, job: _Job) -> None:
        """A job about to queue its prompt; refused with RunEnding once the run is being ended."""
        with self._lock:
            if self._ending is not None:
                raise RunEnding(f"no new prompt is queued: {self._ending}")
            self._jobs.append(job)

    def discard(self, job: _Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def stop(self, tag: str, reason: str) -> list[dict[str, Any]]:
        """Interrupt and dequeue the jobs of one scene (its test ran out of time); the others go on."""
        with self._lock:
            jobs = [job for job in self._jobs if job.tag == tag]
        return [done for job in jobs if (done := job.abandon(reason)) is not None]

    def stop_all(self, reason: str) -> list[dict[str, Any]]:
        """Interrupt and dequeue every job still at work (ours only); what was done for each."""
        with self._lock:
            self._ending = reason  # a follower that retries after this must not queue again
            jobs = list(self._jobs)
        return [done for job in jobs if (done := job.abandon(reason)) is not None]


def run_job(  # noqa: PLR0913 - keyword-only options of the public entry, each optional
    client: ComfyClient,
    prompt: dict[str, Any],
    *,
    policy: QueuePolicy,
    on_event: EventSink | None = None,
    on_progress: ProgressSink | None = None,
    is_server_alive: Callable[[], bool] | None = None,
    client_id: str | None = None,
    active: ActiveJobs | None = None,
    on_abandon: Callable[[dict[str, Any]], None] | None = None,
    behind: Callable[[], bool] | None = None,
    tag: str | None = None,
) -> JobResult:
    """Queue ``prompt`` and follow it to its end; raise :class:`JobFailed` otherwise.

    ``on_event(dict)`` gets every job event as it happens (WebSocket message types, polls,
    fallbacks, interrupts), small enough for an events.jsonl line; ``on_progress(value, max)``
    gets sampler progress; ``is_server_alive()`` false means the server process died.

    When the run is cut short while the job is at work (KeyboardInterrupt, a pytest-timeout
    failure, or ``active.stop_all`` from another thread) our prompt is interrupted and removed
    from the queue within :data:`ABANDON_BUDGET_S`, and ``on_abandon`` gets what was done.

    ``behind()`` true means the harness's own previous job on this server is still ahead of this
    one (queued behind it so that the GPU never waits): until our prompt starts, that wait is
    recorded (``behind_own_s``) and counted neither against ``scene_max_wait`` nor as silence.
    ``tag`` (the scene) lets ``active.stop(tag)`` stop this job alone.
    """
    hooks = JobHooks(on_event, on_progress, is_server_alive, on_abandon, behind)
    return _Job(client, prompt, policy, hooks, client_id=client_id, active=active, tag=tag).run()


def _result(
    state: JobState, prompt: Mapping[str, Any], entry: dict[str, Any], policy: QueuePolicy
) -> JobResult:
    """The JobResult of a successful final /history entry (cached or not, with its notes)."""
    messages = _status_messages(entry)
    if state.cached_nodes is None:
        for name, data in messages:
            if name == "execution_cached" and isinstance(data, Mapping):
                state.cached_nodes = {str(n) for n in data.get("nodes") or []}
    needed = needed_nodes(prompt, outputs_to_execute(entry))
    cached = bool(needed) and state.cached_nodes is not None and needed <= state.cached_nodes
    outputs = [o.to_dict() for o in list_outputs(entry)]
    notes = job_notes(state, policy, final=True)
    if cached:
        notes.append(
            "every node came from ComfyUI's cache: it re-sent the file names of an earlier run and"
            " wrote no new files"
        )
    if not outputs and state.announced:
        notes.append(
            f"`executed` announced outputs of nodes {sorted(state.announced)} but /history lists none"
        )
    return JobResult(
        prompt_id=state.prompt_id,
        number=state.number,
        client_id=state.client_id,
        history=entry,
        outputs=outputs,
        cached=cached,
        progress=list(state.progress),
        seconds_per_step=state.seconds_per_step(),
        timings=state.timings(),
        notes=notes,
        poll_attempts=state.polls,
        message_counts=dict(state.counts),
        completion_signal=state.completion,
    )


def _status_messages(entry: Mapping[str, Any]) -> list[Any]:
    status = entry.get("status") or {}
    return [m for m in status.get("messages") or [] if isinstance(m, list | tuple) and len(m) >= 2]


# ---------------------------------------------------------------------------------------- follower
class _Job:
    """The state machine: connect, post, then follow messages and polls until an end."""

    def __init__(
        self,
        client: ComfyClient,
        prompt: dict[str, Any],
        policy: QueuePolicy,
        hooks: JobHooks,
        *,
        client_id: str | None = None,
        active: ActiveJobs | None = None,  # where the job is listed while at work (to stop it)
        tag: str | None = None,  # the scene: ``active.stop(tag)`` stops this job alone
    ) -> None:
        self.client = client
        self.prompt = prompt
        self.policy = policy
        self.hooks = hooks
        self.active = active
        self.tag = tag
        self.state = JobState(prompt_id=str(uuid.uuid4()), client_id=client_id or str(uuid.uuid4()))
        self.events = JobEvents(self.state, hooks.on_event)
        self.feed = WebSocketFeed(client.recorder)
        self.poller = Poller(client, self.state, self.events.emit)
        self.end = Ending(client, self.state, policy, self.events, self.feed, self.poller)
        self.deadline = policy.scene_deadline()
        self.grace: Deadline | None = None
        self.next_poll: float | None = None  # polling schedule (fallback, or after completion)
        self.check_at: float | None = None  # one look at /history + /queue after a lone `executed`
        self._idle = threading.Event()  # never set: a deadline-bounded wait when there is no socket
        self._behind_since: float | None = None
        self._posted = False  # POST /prompt was sent: the server may hold our prompt
        self._over = False  # the job reached an end of its own (result, or a failure with clean-up)
        self._abandon_lock = threading.Lock()
        self._abandoned: dict[str, Any] | None = None

    def run(self) -> JobResult:
        if self.active is not None:
            self.active.add(self)
        try:
            self.check_alive()
            self.connect()
            self.post()
            result = self.follow()
            self._over = True
            return result
        except Exception:
            self._over = True  # a JobFailed did its own clean-up; a bug must not touch the server
            raise
        except BaseException as exc:  # Ctrl-C, SIGTERM, pytest-timeout: the GPU must not run on
            self.abandon(f"the run was cut short ({type(exc).__name__})")
            raise
        finally:
            if self.active is not None:
                self.active.discard(self)
            self.feed.close()

    def abandon(self, reason: str) -> dict[str, Any] | None:
        """Interrupt and dequeue our prompt because the run is ending (at most once, any thread)."""
        with self._abandon_lock:
            if self._abandoned is not None or self._over or not self._posted:
                return self._abandoned
            done = self.poller.stop_own_prompt(Deadline(ABANDON_BUDGET_S))
            self._abandoned = {"prompt_id": self.state.prompt_id, "reason": reason, **done}
            self.events.emit("abandoned", reason=reason, cleanup=done["cleanup"])
        if self.hooks.on_abandon is not None:
            self.hooks.on_abandon(self._abandoned)
        return self._abandoned

    def check_alive(self) -> None:
        if self.hooks.is_server_alive is None:
            return
        try:
            alive = self.hooks.is_server_alive()
        except Exception:  # noqa: BLE001 - a broken probe is not a dead server
            return
        if not alive:
            raise self.end.gone("the harness reports its process has exited")

    def connect(self) -> None:
        s = self.state
        url = self.client.ws_url(s.client_id)
        try:
            self.feed.connect(url, self.deadline.timeout(cap=self.client.request_timeout_s))
        except (OSError, websocket.WebSocketException) as exc:
            if classify_connection_error(exc) == REFUSED:
                raise self.end.fail(
                    "server_gone",
                    f"the ComfyUI server at {self.client.base_url} refused the WebSocket connection"
                    f" ({url}) before prompt {s.prompt_id} was queued; it is not running there",
                ) from None
            self.feed.status = f"could not connect ({type(exc).__name__}: {one_line(exc, 120)})"
            s.incidents.append(Incident("no_connect", s.s(), one_line(exc, 120)))
            self.next_poll = time.monotonic()
            self.events.emit("ws_connect_failed", error=one_line(exc, 200))
            return
        self.events.emit("ws_connected", client_id=s.client_id)
        # The server registers the socket, then sends status{sid}: wait (briefly) for it so no
        # message of our prompt can be sent before the server knows where to send it.
        self.read_ws(min(self.policy.ws_idle_timeout, FIRST_FRAME_WAIT_S, self.deadline.remaining()))

    def post(self) -> None:
        s = self.state
        self._posted = True
        self.events.start_clock()
        self.feed.last_activity = s.t_post  # silence is counted from the moment there is a prompt
        s.last_alive = s.t_post
        self.events.emit("post_prompt", prompt_id=s.prompt_id, client_id=s.client_id)
        try:
            answer = self.client.queue_prompt(
                self.prompt, client_id=s.client_id, prompt_id=s.prompt_id, deadline=self.deadline
            )
        except PromptRejected as exc:
            raise self.end.rejected(exc) from None
        except ServerGone as exc:
            raise self.end.gone(str(exc)) from None
        except ComfyError as exc:
            self.post_failed(exc)
            return
        if answer["prompt_id"] != s.prompt_id:
            s.notes.append(
                f"ComfyUI ignored the prompt id this client chose and answered {answer['prompt_id']}"
            )
            s.prompt_id = answer["prompt_id"]
        s.number = answer.get("number")
        s.queued_s = s.s()
        self.events.emit("queued", prompt_id=s.prompt_id, number=s.number)

    def post_failed(self, exc: ComfyError) -> None:
        """POST /prompt got no usable answer: the prompt id is ours, so ask /queue and /history."""
        s = self.state
        if self.deadline.expired():
            text = post_deadline_text(s, self.policy, exc)
            raise self.end.fail("scene_max_wait", text, setting="scene_max_wait", cleanup=True)
        budget = self.deadline.sooner(self.poller.cleanup_budget())
        try:
            entry = self.client.history(s.prompt_id, deadline=budget)
            queue = self.poller.queue_snapshot(budget) if entry is None else None
        except ServerGone as gone:
            raise self.end.gone(str(gone)) from None
        except ComfyError:
            entry, queue = None, None
        taken = entry is not None or (queue is not None and queue.get("ours") not in (None, "absent"))
        if not taken:
            raise self.end.not_taken(exc, queue)
        s.queued_s = s.s()
        s.notes.append(f"the answer to POST /prompt was lost ({one_line(exc, 160)}); ComfyUI had the prompt")
        self.events.emit("queued", prompt_id=s.prompt_id, number=None, recovered=True)
        if entry is not None and is_final(entry):
            self.next_poll = time.monotonic()

    def follow(self) -> JobResult:
        s, end = self.state, self.end
        while True:
            self.check_alive()
            self.wait_behind_own()
            if self.deadline.expired():
                text = deadline_text(s, self.policy, end.ws_text())
                raise end.fail("scene_max_wait", text, setting="scene_max_wait", cleanup=True)
            if self.grace is not None and self.grace.expired():
                # The deciding look: one more poll exactly when the grace ends, then the verdict.
                result = self.poll(final_look=True)
                if result is not None:
                    return result
                text = grace_text(s, self.policy, end.ws_text())
                raise end.fail("completion_grace", text, setting="completion_grace", cleanup=True)
            now = time.monotonic()
            if self.feed.open and not self.feed.silent and s.completion is None:
                if now - self.feed.last_activity >= self.policy.ws_idle_timeout:
                    self.went_silent()
            due = [t for t in (self.next_poll, self.check_at) if t is not None]
            if due and now >= min(due):
                self.check_at = None
                result = self.poll()
                if result is not None:
                    return result
                continue
            wait = self.wait_budget(now)
            if self.feed.open:
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
        if self.feed.open and not self.feed.silent and self.state.completion is None:
            due.append(self.feed.last_activity + self.policy.ws_idle_timeout - now)
        if self.hooks.is_server_alive is not None or self._behind_since is not None:
            due.append(ALIVE_CHECK_S)
        return max(0.0, min(due))

    def wait_behind_own(self) -> None:
        """While our prompt waits behind the harness's own previous job, its clocks do not run."""
        s = self.state
        behind = self.hooks.behind
        waiting = behind is not None and s.started_s is None and s.completion is None and behind()
        now = time.monotonic()
        if waiting:
            if self._behind_since is None:
                self._behind_since = now
                self.events.emit("behind_own", prompt_id=s.prompt_id)
            self.deadline = self.policy.scene_deadline()
            self.feed.last_activity = now
        elif self._behind_since is not None:
            s.behind_own_s = round(now - self._behind_since, 3)
            self._behind_since = None
            self.events.emit("behind_own_done", seconds=s.behind_own_s)

    def went_silent(self) -> None:
        since = self.state.rel(self.feed.last_activity)
        self.feed.silent = True
        self.state.incidents.append(Incident("silent", since))
        self.next_poll = time.monotonic()
        self.events.emit(
            "fallback",
            reason="websocket silent",
            since_s=since,
            setting="ws_idle_timeout",
            value=self.policy.ws_idle_timeout,
        )

    # ------------------------------------------------------------------ websocket
    def read_ws(self, timeout: float) -> None:
        frame = self.feed.receive(timeout)
        if frame is None:
            return
        if frame.kind == "lost":
            at = self.state.s()
            self.feed.drop(frame.detail, at)
            self.state.incidents.append(Incident("dropped", at, frame.detail))
            self.next_poll = time.monotonic()  # a completion may have been missed: look now
            self.events.emit("fallback", reason="websocket dropped", detail=frame.detail)
        elif frame.kind == "binary":
            self.state.counts["binary"] += 1
            self.activity()  # previews go only to the prompt's client
            self.events.emit("ws", type="binary", length=frame.length, event_type=frame.event_type)
        elif frame.kind == "unparseable":
            self.state.counts["unparseable"] += 1
        elif frame.kind == "text" and frame.message is not None:
            self.on_message(frame.message)

    def on_message(self, message: dict[str, Any]) -> None:
        effect = read_message(self.state, message)
        if effect is None:
            return
        self.events.emit("ws", **effect.event)
        if not effect.ours:
            if effect.look_now:
                self.next_poll = time.monotonic()
            return
        self.activity()
        self.check_at = None  # the job is clearly alive: no need for the look after `executed`
        if effect.progress is not None and self.hooks.on_progress is not None:
            try:
                self.hooks.on_progress(*effect.progress)
            except Exception as exc:  # noqa: BLE001 - a broken sink must not end the job
                self.events.emit("sink_error", sink="on_progress", error=one_line(exc, 200))
        if effect.completion is not None:
            self.completed(effect.completion)
        interval = self.policy.history_poll_interval
        if effect.stored:
            self.next_poll = time.monotonic()  # sent after the history entry is stored
        elif effect.completion is not None and self.next_poll is None:
            self.next_poll = time.monotonic() + interval
        if effect.executed and self.state.completion is None and self.next_poll is None:
            # Not completion. If nothing follows it, look at /history and /queue once.
            self.check_at = time.monotonic() + interval
        if effect.failure is not None:
            raise self.end.server_failure(effect.failure, effect.data, effect.t)

    def activity(self) -> None:
        self.feed.last_activity = self.state.last_alive = time.monotonic()
        if not self.feed.silent:
            return
        self.feed.silent = False
        for incident in reversed(self.state.incidents):
            if incident.kind == "silent" and incident.resumed_s is None:
                incident.resumed_s = self.state.s()
                break
        if self.state.completion is None:
            self.next_poll = None
        self.events.emit("ws_resumed")

    def completed(self, signal: str, *, since: float | None = None) -> None:
        """Completion seen; the grace for the history entry counts from ``since`` (monotonic) or now."""
        s = self.state
        if s.completion is not None:
            return
        s.completion = signal
        s.completed_s = s.s()
        self.grace = Deadline(self.policy.completion_grace, setting="completion_grace", start=since)
        self.events.emit("completion", signal=signal)

    # ------------------------------------------------------------------ polling
    def poll(self, *, final_look: bool = False) -> JobResult | None:
        """One look at /history (and /queue while no completion was seen).

        ``final_look`` is the poll made when the grace has just ended: its budget is a short
        fresh one within the scene deadline, and it decides nothing but success.
        """
        s, p = self.state, self.policy
        budget = self.deadline.sooner(self.poller.cleanup_budget() if final_look else self.grace)
        where = None
        try:
            outcome = self.poller.history(budget)
            if outcome.entry is not None:
                return self.finish(outcome.entry)
            if s.completion is None:
                where = self.poller.where_in_queue(budget)
        except ServerGone as exc:
            raise self.end.gone(str(exc)) from None
        except ResponseTooLarge as exc:
            raise self.end.too_large(exc) from None
        if where is not None:
            s.queue_where = where
            if where == "running" and s.started_s is None:
                s.started_s = s.s()
            elif where == "absent":
                # Gone since the last sign of life: the grace counts from then, not from this poll.
                self.completed("left /queue without a /history entry", since=s.last_alive)
        self.events.emit("poll", attempt=s.polls, history=outcome.answer, queue=where)
        if final_look:
            return None
        if s.completion is not None or where == "unknown":
            s.empty_polls += 1
            if s.empty_polls >= p.history_max_attempts:
                text = attempts_text(s, p, self.end.ws_text())
                raise self.end.fail(
                    "history_max_attempts", text, setting="history_max_attempts", cleanup=True
                )
        keep_polling = (
            not self.feed.open or self.feed.silent or s.completion is not None or where == "unknown"
        )
        self.next_poll = time.monotonic() + p.history_poll_interval if keep_polling else None
        return None

    def finish(self, entry: dict[str, Any]) -> JobResult:
        s = self.state
        s.history_entry = entry
        s.history_s = s.s()
        status = entry.get("status") or {}
        self.events.emit("poll", attempt=s.polls, history="final", status=status.get("status_str"))
        if not (status.get("completed") is True or status.get("status_str") == "success"):
            for name, data in _status_messages(entry):
                if name in FAILURES and isinstance(data, Mapping):
                    raise self.end.server_failure(name, data, None)
            raise self.end.fail("execution_error", unfinished_status_text(s, status, self.end.ws_text()))
        if s.completion is None:
            self.completed("final /history entry")
        result = _result(s, self.prompt, entry, self.policy)
        self.events.emit("finished", outputs=len(result.outputs), cached=result.cached, polls=s.polls)
        self.feed.close()
        return result


__all__ = [
    "ActiveJobs",
    "RunEnding",
    "FLAGS",
    "KINDS",
    "JobFailed",
    "JobHooks",
    "JobRejected",
    "JobResult",
    "run_job",
]
