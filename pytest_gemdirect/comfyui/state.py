"""What the job follower knows about one prompt, and the pure facts derived from it.

The follower (job.py), the socket side (websocket_feed.py, messages.py), the poller
(polling.py) and the evidence wording (evidence.py) all read and write one :class:`JobState`,
so that a failure can say at any moment what was seen last. Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LAST_MESSAGES = 10


@dataclass
class Incident:
    """A moment the WebSocket stopped being the fast path."""

    kind: str  # "dropped", "silent", "no_connect"
    s: float
    detail: str = ""
    resumed_s: float | None = None


@dataclass
class JobState:
    """Everything seen of one prompt; times (``*_s``) are seconds after ``POST /prompt``."""

    prompt_id: str = ""
    client_id: str = ""
    t_post: float = field(default_factory=time.monotonic)  # reset when POST /prompt is sent
    number: int | float | None = None
    queued_s: float | None = None
    started_s: float | None = None
    behind_own_s: float | None = None  # waited in the queue behind the harness's own previous job
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
    last_alive: float | None = None  # monotonic: the last sign the prompt was queued or running
    incidents: list[Incident] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    server_error: dict[str, Any] | None = None

    def s(self) -> float:
        """Seconds since POST /prompt was sent (slightly negative before)."""
        return self.rel(time.monotonic())

    def rel(self, monotonic: float) -> float:
        return round(monotonic - self.t_post, 3)

    def timings(self) -> dict[str, float | None]:
        return {
            "queued_s": self.queued_s,
            "started_s": self.started_s,
            "completed_s": self.completed_s,
            "history_s": self.history_s,
            "behind_own_s": self.behind_own_s,
        }

    def seconds_per_step(self) -> float | None:
        """Seconds a sampler step took, over the last run of progress with one ``max``."""
        if len(self.progress) < 2:
            return None
        maximum = self.progress[-1][2]
        run = [p for p in self.progress if p[2] == maximum]
        first, last = run[0], run[-1]
        if last[1] <= first[1]:
            return None
        return round((last[0] - first[0]) / (last[1] - first[1]), 4)


def is_final(entry: Mapping[str, Any] | None) -> bool:
    """A /history entry whose status says the prompt has ended (success or error)."""
    status = entry.get("status") if entry else None
    return isinstance(status, Mapping) and (
        status.get("completed") is True or status.get("status_str") in ("success", "error")
    )


def needed_nodes(prompt: Mapping[str, Any], outputs: list[str] | None) -> set[str]:
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


def outputs_to_execute(entry: Mapping[str, Any]) -> list[str] | None:
    """The output node ids a /history entry's ``prompt`` item names (index 4), if it names any."""
    queued = entry.get("prompt")
    if isinstance(queued, list) and len(queued) > 4 and isinstance(queued[4], list):
        return [str(o) for o in queued[4]]
    return None


__all__ = ["Incident", "JobState", "is_final", "needed_nodes", "outputs_to_execute"]
