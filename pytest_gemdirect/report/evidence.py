"""The job follower's evidence of a failed scene, read into the rows of "seen last".

Evidence is free-form (each failure kind records what it saw), so this is part of the view's
boundary: the keys the report knows are said in plain words, in a fixed order, and every other key
is shown as it came. What a server said stays text here; the templates escape it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pytest_gemdirect.report.coerce import as_list, as_num, as_text
from pytest_gemdirect.report.format import compact, secs

RowKind = Literal["text", "code", "pre", "server_error"]
_EMPTY: tuple[Any, ...] = (None, "", [], {})
_SETTING_KEYS = ("setting", "bounded_by", "limit_setting")
_PROGRESS_KEYS = ("last_progress", "progress_last", "progress")
_TIMES = (
    ("elapsed_s", "elapsed"),
    ("waited_s", "waited"),
    ("deadline_s", "deadline"),
    ("completion_signal_s", "completion signal after"),
    ("completion_seen_s", "completion seen after"),
    ("outputs_announced_s", "outputs announced after"),
)


@dataclass(frozen=True)
class EvidenceRow:
    """One fact seen last: ``pre`` rows keep their line breaks; a server error carries its node."""

    label: str
    text: str
    kind: RowKind = "text"
    css: str = ""
    note: str = ""


@dataclass(frozen=True)
class Evidence:
    rows: tuple[EvidenceRow, ...]
    named_settings: tuple[str, ...]  # the settings the follower said bounded the wait
    said: str  # its own words, on one line, searched for the names of settings
    has_progress: bool


class _Reader:
    """Takes each known key once, so the keys left over can be shown as they came."""

    def __init__(self, evidence: dict[str, Any]) -> None:
        self.evidence = evidence
        self.shown: set[str] = set()
        self.rows: list[EvidenceRow] = []

    def take(self, *keys: str) -> Any:
        for key in keys:
            if key in self.evidence and self.evidence[key] not in _EMPTY:
                self.shown.add(key)
                return self.evidence[key]
        return None

    def add(self, label: str, text: str, kind: RowKind = "text", css: str = "", note: str = "") -> None:
        if text or kind != "text":
            self.rows.append(EvidenceRow(label, text, kind, css, note))


def read_evidence(raw: Any) -> Evidence | None:
    """The rows of a scene's evidence (``None`` when it recorded none)."""
    if not isinstance(raw, dict) or not raw:
        return None
    reader = _Reader(raw)
    _known_facts(reader)
    _server_error(reader)
    _queue_and_messages(reader)
    for key, value in raw.items():
        if key in reader.shown or key in _SETTING_KEYS or value in _EMPTY:
            continue
        label = str(key).replace("_", " ")
        if isinstance(value, str | int | float | bool):
            reader.add(label, str(value))
        else:
            reader.add(label, compact(value, 1500), "pre")
    named = []
    for key in _SETTING_KEYS:
        value = raw.get(key)
        named += [
            name for name in ([value] if isinstance(value, str) else as_list(value)) if isinstance(name, str)
        ]
    said = compact({k: v for k, v in raw.items() if k not in ("policy", "settings")}, 4000)
    return Evidence(tuple(reader.rows), tuple(named), said, any(k in raw for k in _PROGRESS_KEYS))


def _known_facts(reader: _Reader) -> None:
    kind = reader.take("kind", "failure_kind")
    if kind:
        reader.add("failure kind", as_text(kind))
    prompt = reader.take("prompt_id")
    if prompt:
        reader.add("prompt id", as_text(prompt), "code")
    progress = reader.take(*_PROGRESS_KEYS)
    if isinstance(progress, list) and progress and isinstance(progress[-1], list | dict):
        progress = progress[-1]
    if isinstance(progress, dict) and ("value" in progress or "max" in progress):
        reader.add("last progress", f"{progress.get('value', '?')}/{progress.get('max', '?')}")
    elif isinstance(progress, list) and len(progress) >= 2:
        reader.add("last progress", f"{progress[-2]}/{progress[-1]}")
    elif progress is not None:
        reader.add("last progress", compact(progress))
    polls = reader.take("poll_attempts", "history_polls", "polls", "history_attempts")
    counted = reader.take("counted_poll_attempts")
    if polls is not None:
        extra = f" ({counted} counted against history_max_attempts)" if counted is not None else ""
        reader.add("/history polls", compact(polls) + extra)
    last_poll = reader.take("last_poll_answer")
    if last_poll is not None:
        reader.add("last /history answer", compact(last_poll, 1500), "pre")
    for key, label in _TIMES:
        value = reader.take(key)
        if value is not None:
            reader.add(label, secs(as_num(value)) or compact(value))
        elif key in ("completion_signal_s", "outputs_announced_s") and key in reader.evidence:
            reader.shown.add(key)
            reader.add(label.replace(" after", ""), "none seen")
    completion = reader.take("completion", "completion_signal")
    if completion is not None:
        reader.add("completion signal", compact(completion))
    sent = reader.evidence.get("interrupt_sent")
    if isinstance(sent, bool):
        reader.shown.add("interrupt_sent")
        reader.add("interrupt sent", "yes (POST /interrupt for this prompt)" if sent else "no")


def _server_error(reader: _Reader) -> None:
    error = reader.take("error", "execution_error", "server_error", "exception")
    traceback = reader.take("traceback")
    if isinstance(error, dict):
        node_id = error.get("node_id")
        node = " ".join(
            str(v) for v in (error.get("node_type"), f"(node {node_id})" if node_id else None) if v
        )
        message = ": ".join(
            str(v) for v in (error.get("exception_type"), error.get("exception_message")) if v
        )
        reader.add(
            "server error", message or compact(error), "server_error", note=f"in {node}" if node else ""
        )
        traceback = traceback or error.get("traceback")
    elif error is not None:
        reader.add("server error", compact(error, 2000))
    if traceback:
        text = "".join(str(line) for line in traceback) if isinstance(traceback, list) else str(traceback)
        reader.add("traceback", text, "pre", "gd-traceback")


def _queue_and_messages(reader: _Reader) -> None:
    queue = reader.take("queue", "queue_state", "queue_at_end")
    if queue is not None:
        reader.add("queue at the end", compact(queue, 1500), "pre")
    messages = reader.take("last_messages", "messages", "ws_messages", "recent_messages")
    if isinstance(messages, list):
        lines = [message_line(m) for m in messages[-12:]]
        reader.add(f"last WebSocket messages ({len(messages)})", "\n".join(lines), "pre", "gd-messages")
    elif messages is not None:
        reader.add("last WebSocket messages", compact(messages, 3000), "pre", "gd-messages")
    counts = reader.take("message_counts")
    if isinstance(counts, dict):
        reader.add("messages received", ", ".join(f"{k} ×{v}" for k, v in counts.items()))
    policy = reader.take("policy")
    if isinstance(policy, dict):
        reader.add("queue policy", ", ".join(f"{k} = {v}" for k, v in policy.items()))


def message_line(message: Any) -> str:
    """One WebSocket message as a line: ``0.118 s  execution_error  node 5  {rest}``."""
    if not isinstance(message, dict) or "type" not in message:
        return message if isinstance(message, str) else compact(message, 300)
    rest = {k: v for k, v in message.items() if k not in ("t", "type", "node")}
    t = as_num(message.get("t"))
    parts = [f"{t:8.3f} s" if t is not None else "", str(message["type"])]
    if message.get("node") is not None:
        parts.append(f"node {message['node']}")
    if rest:
        parts.append(compact(rest, 240))
    return "  ".join(p for p in parts if p)
