"""The wording of a job's failures and notes, and the JSON evidence that goes with them.

A failure message says in plain words what was expected, what was seen last (progress,
messages, polls, the socket) and the setting that bounds the wait (``--completion-grace = 30 s``);
the evidence dict holds the same facts for the summary and the report. Everything here reads
a :class:`~pytest_gemdirect.comfyui.state.JobState` and returns text or plain data: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_gemdirect.comfyui.outputs import list_outputs
from pytest_gemdirect.comfyui.state import JobState
from pytest_gemdirect.net import one_line
from pytest_gemdirect.policy import QueuePolicy

HISTORY_LATE_NOTE_S = 0.5  # history this long after executing{node: null} (sent once it is stored)
ERROR_FIELDS = (
    "node_id",
    "node_type",
    "exception_type",
    "exception_message",
    "traceback",
    "executed",
    "current_inputs",
)


def secs(value: float | None) -> str:
    """Seconds for people: two decimals below 10 s, one above."""
    if value is None:
        return "? s"
    return f"{value:.2f} s" if abs(value) < 10 else f"{value:.1f} s"


# ---------------------------------------------------------------------------------------- what was seen
def answer_text(entry: Mapping[str, Any] | None) -> str:
    """A /history answer in a few words (``{}``, an entry with status …)."""
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


def progress_text(state: JobState) -> str:
    if not state.progress:
        return "no sampler progress seen"
    t, value, maximum = state.progress[-1]
    return f"last progress {value}/{maximum} at {secs(t)}"


def messages_text(state: JobState) -> str:
    kinds = [m["type"] for m in state.last_messages]
    return "last messages: " + (", ".join(kinds) if kinds else "none")


def polls_text(state: JobState) -> str:
    if not state.polls:
        return "no /history polls"
    where = f" (in /queue: {state.queue_where})" if state.queue_where else ""
    return f"{state.polls} /history polls, last answer {state.last_answer}{where}"


def seen_last(state: JobState, ws_text: str) -> str:
    return "; ".join([progress_text(state), messages_text(state), polls_text(state), ws_text])


# ---------------------------------------------------------------------------------------- failures
def server_error_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an execution_error / execution_interrupted message kept as evidence."""
    return {key: data.get(key) for key in ERROR_FIELDS if key in data}


def server_failure_text(kind: str, data: Mapping[str, Any], t: float | None, state: JobState) -> str:
    """``execution_error`` or ``execution_interrupted`` of our prompt, in plain words."""
    at = f" at {secs(t)}" if t is not None else ""
    where = f"node {data.get('node_id')} ({data.get('node_type')})"
    if kind == "execution_error":
        exc_type = data.get("exception_type") or "error"
        text = one_line(data.get("exception_message"), 400)
        return (
            f"ComfyUI failed prompt {state.prompt_id} in {where}{at}: {exc_type}: {text};"
            f" {progress_text(state)}; {messages_text(state)} (traceback in the evidence)"
        )
    return (
        f"ComfyUI interrupted prompt {state.prompt_id} in {where}{at} (execution_interrupted: someone sent"
        f" POST /interrupt, or the server was stopping); {progress_text(state)}; {messages_text(state)}"
    )


def deadline_text(state: JobState, policy: QueuePolicy, ws_text: str) -> str:
    wait = policy.scene_max_wait
    expected = "a completion signal (execution_success, executing{node: null}) or a final /history entry"
    if state.completion is not None:
        seen = (
            f"ComfyUI signalled completion at {secs(state.completed_s)} ({state.completion}) but"
            f" /history/{state.prompt_id} had no finished entry"
        )
    else:
        seen = "none came"
    return (
        f"prompt {state.prompt_id} did not finish within {wait:g} s (--scene-max-wait = {wait:g} s):"
        f" expected {expected}, {seen}; {seen_last(state, ws_text)}"
    )


def post_deadline_text(state: JobState, policy: QueuePolicy, error: Exception) -> str:
    wait = policy.scene_max_wait
    return (
        f"POST /prompt for prompt {state.prompt_id} did not answer within {wait:g} s"
        f" (--scene-max-wait = {wait:g} s): {error}"
    )


def grace_text(state: JobState, policy: QueuePolicy, ws_text: str) -> str:
    grace = policy.completion_grace
    return (
        f"ComfyUI signalled completion of prompt {state.prompt_id} at {secs(state.completed_s)}"
        f" ({state.completion}) but /history/{state.prompt_id} had no outputs after {grace:g} s"
        f" (--completion-grace = {grace:g} s);"
        f" {state.polls} polls, last answer {state.last_answer}; {progress_text(state)};"
        f" {messages_text(state)}; {ws_text}"
    )


def attempts_text(state: JobState, policy: QueuePolicy, ws_text: str) -> str:
    pid = state.prompt_id
    if state.completion is not None:
        head = (
            f"ComfyUI signalled completion of prompt {pid} at {secs(state.completed_s)}"
            f" ({state.completion}) but /history/{pid} had no finished entry after"
            f" {state.empty_polls} polls"
        )
    else:
        head = (
            f"/history/{pid} had no finished entry and /queue could not be read for {state.empty_polls} polls"
        )
    interval = policy.history_poll_interval
    return (
        f"{head} {interval:g} s apart"
        f" (--history-max-attempts = {policy.history_max_attempts},"
        f" --history-poll-interval = {interval:g} s); last answer {state.last_answer};"
        f" {progress_text(state)}; {messages_text(state)}; {ws_text}"
    )


def too_large_text(state: JobState, error: Exception, ws_text: str) -> str:
    """An answer about our prompt over the size cap: asking again brings the same answer."""
    return (
        f"the answer about prompt {state.prompt_id} at {secs(state.s())} was too large to read: {error};"
        f" {seen_last(state, ws_text)}"
    )


def server_gone_text(server: str, state: JobState, why: str, ws_text: str) -> str:
    return (
        f"the ComfyUI server at {server} went away while following prompt {state.prompt_id}"
        f" at {secs(state.s())}: {why}; {seen_last(state, ws_text)}"
    )


def unfinished_status_text(state: JobState, status: Mapping[str, Any], ws_text: str) -> str:
    return (
        f"ComfyUI's /history/{state.prompt_id} says the prompt ended with status"
        f" {status.get('status_str')!r} and gives no error message; {seen_last(state, ws_text)}"
    )


def cleanup_text(ours: str | None, done: list[str], errors: list[str], interrupt_sent: bool) -> str:
    """What the clean-up after a spent deadline did, and where our prompt was."""
    if ours is None:
        where = "at the end /queue could not be read"
    elif ours == "absent":
        where = "at the end it was not in /queue"
    else:
        where = f"at the end it was {ours} in /queue"
    text = f"{where}; " + ", ".join(done + errors)
    if interrupt_sent and ours == "running":
        text += " (ComfyUI honours an interrupt at the next node or progress tick)"
    return text


# ---------------------------------------------------------------------------------------- notes, evidence
def _incident_notes(state: JobState, policy: QueuePolicy, final: bool) -> list[str]:
    notes: list[str] = []
    by_polling = " completed by polling /history" if final else " followed by polling /history"
    for incident in state.incidents:
        if incident.kind == "dropped":
            notes.append(f"websocket dropped at {secs(incident.s)} ({incident.detail});{by_polling}")
        elif incident.kind == "no_connect":
            notes.append(f"websocket could not connect ({incident.detail});{by_polling}")
        elif incident.kind == "silent":
            idle = policy.ws_idle_timeout
            text = f"websocket silent for {idle:g} s from {secs(incident.s)} (--ws-idle-timeout = {idle:g} s)"
            if incident.resumed_s is not None:
                if final:
                    continue  # a quiet spell (a model load, a queue ahead): in the events, not a note
                text += f"; polled /history meanwhile, messages resumed at {secs(incident.resumed_s)}"
            else:
                text += f";{by_polling}"
            notes.append(text)
    return notes


def _late_history_note(state: JobState, policy: QueuePolicy) -> str | None:
    if state.history_s is None or state.completed_s is None:
        return None
    if state.stored_signal_s is not None:
        since, signal = state.stored_signal_s, "executing{node: null}"
    else:
        since, signal = state.completed_s, str(state.completion)
    late = state.history_s - since
    if late < HISTORY_LATE_NOTE_S:
        return None
    return (
        f"history came {secs(late)} after completion ({signal}; --completion-grace ="
        f" {policy.completion_grace:g} s)"
    )


def job_notes(state: JobState, policy: QueuePolicy, *, final: bool = False) -> list[str]:
    """The notes of a job: its own notes, socket incidents, and (at the end) a late history."""
    notes = list(state.notes) + _incident_notes(state, policy, final)
    late = _late_history_note(state, policy) if final else None
    if late is not None:
        notes.append(late)
    return notes


def evidence(
    state: JobState, policy: QueuePolicy, *, kind: str, setting: str | None, server: str, ws_text: str
) -> dict[str, Any]:
    """The JSON-serialisable evidence of a failed attempt."""
    last = state.progress[-1] if state.progress else None
    announced = [o.where() for o in list_outputs({"outputs": state.announced}, include_temp=True)]
    facts: dict[str, Any] = {
        "kind": kind,
        "prompt_id": state.prompt_id,
        "number": state.number,
        "client_id": state.client_id,
        "server": server,
        "setting": setting,
        "elapsed_s": state.s(),
        "deadline_s": policy.settings().get(setting) if setting else None,
        "completion": state.completion,
        "completion_signal_s": state.completed_s,
        "outputs_announced_s": state.announced_s,
        "last_progress": (
            {"value": last[1], "max": last[2], "t": last[0], "node": state.progress_node} if last else None
        ),
        "current_node": state.current_node,
        "last_messages": list(state.last_messages),
        "message_counts": dict(state.counts),
        "poll_attempts": state.polls,
        "counted_poll_attempts": state.empty_polls,
        "last_poll_answer": state.last_answer,
        "last_poll_s": state.last_poll_s,
        "websocket": ws_text,
        "announced_outputs": announced[:50],
        "timings": state.timings(),
        "notes": job_notes(state, policy),
        "policy": policy.settings(),
    }
    if state.server_error is not None:
        facts["error"] = state.server_error
    return facts


__all__ = [
    "answer_text",
    "attempts_text",
    "cleanup_text",
    "deadline_text",
    "evidence",
    "grace_text",
    "job_notes",
    "messages_text",
    "polls_text",
    "post_deadline_text",
    "progress_text",
    "secs",
    "seen_last",
    "server_error_fields",
    "server_failure_text",
    "server_gone_text",
    "too_large_text",
    "unfinished_status_text",
]
