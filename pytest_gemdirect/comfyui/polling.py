"""The truth behind the WebSocket: ``/history`` and ``/queue`` polls, and the clean-up of OUR prompt.

:meth:`Poller.poll` asks ``/history/<id>`` (and ``/queue`` while no completion was seen) and
records what it found; it never decides about deadlines, the follower does. After a deadline,
:meth:`Poller.stop_own_prompt` interrupts and dequeues our prompt only — never another
client's. A refused or reset connection propagates as
:class:`~pytest_gemdirect.comfyui.client.ServerGone`, so the follower fails at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, ResponseTooLarge, ServerGone
from pytest_gemdirect.comfyui.evidence import answer_text, cleanup_text
from pytest_gemdirect.comfyui.state import JobState, is_final
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.net import one_line

CLEANUP_BUDGET_S = 5.0  # interrupt + dequeue + queue snapshot after a deadline, at most

Emit = Callable[..., None]


@dataclass(frozen=True)
class PollOutcome:
    """What one poll found.

    ``entry`` is a final /history entry (the job has ended) or None; ``answer`` is
    ``final``, ``entry`` (not final yet), ``{}`` or ``error: …``; ``where`` is our prompt's
    place in /queue (``running``, ``pending``, ``absent``, ``unknown``) when it was asked.
    """

    entry: dict[str, Any] | None
    answer: str
    where: str | None = None


class Poller:
    """Polls for one prompt and cleans up after it; writes what it sees into the state."""

    def __init__(self, client: ComfyClient, state: JobState, emit: Emit) -> None:
        self.client = client
        self.state = state
        self.emit = emit

    def history(self, budget: Deadline) -> PollOutcome:
        """One ``GET /history/<id>``; a garbled or failed answer is a transient error, not an end."""
        s = self.state
        s.polls += 1
        s.last_poll_s = s.s()
        try:
            entry = self.client.history(s.prompt_id, deadline=budget)
        except ServerGone:
            s.last_answer = "none (the server went away)"
            raise
        except ResponseTooLarge:
            s.last_answer = "too large (over the size cap)"
            raise
        except ComfyError as exc:
            s.last_answer = f"error: {one_line(exc, 160)}"
            return PollOutcome(None, s.last_answer)
        s.last_answer = answer_text(entry)
        if entry is not None and is_final(entry):
            return PollOutcome(entry, "final")
        return PollOutcome(None, "{}" if entry is None else "entry")

    def where_in_queue(self, budget: Deadline) -> str:
        """``running``, ``pending``, ``absent`` or ``unknown`` (/queue could not be read)."""
        try:
            queue = self.client.queue(deadline=budget)
        except (ServerGone, ResponseTooLarge):
            raise
        except ComfyError:
            return "unknown"
        pid = self.state.prompt_id
        for where in ("running", "pending"):
            if any(i.get("prompt_id") == pid for i in queue[where]):
                self.state.last_alive = time.monotonic()  # still there: the grace counts from here on
                return where
        return "absent"

    def cleanup_budget(self) -> Deadline:
        """A fresh, short budget for the calls made after a deadline has passed."""
        return Deadline(min(CLEANUP_BUDGET_S, self.client.request_timeout_s))

    def queue_snapshot(self, budget: Deadline) -> dict[str, Any] | None:
        """/queue as evidence: where ours is (``running``, ``pending (n ahead)``, ``absent``) and the rest."""
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

    def stop_own_prompt(self, budget: Deadline | None = None) -> dict[str, Any]:
        """POST /interrupt {prompt_id: ours} and remove ours from the queue; never anyone else's.

        The interrupt is left out only when /queue shows another prompt running and not ours
        (a server that ignores ``prompt_id`` would stop that one).
        """
        pid = self.state.prompt_id
        budget = budget or self.cleanup_budget()
        queue = self.queue_snapshot(budget)
        ours = (queue or {}).get("ours")
        others_running = bool(queue and queue.get("running") and ours != "running")
        done: list[str] = []
        errors: list[str] = []
        interrupt_sent = False
        if others_running:
            done.append("no interrupt sent: another prompt is running, ours is not")
        else:
            try:
                self.client.interrupt(pid, deadline=budget)
                interrupt_sent = True
                done.append(f"sent POST /interrupt {{prompt_id: {pid}}}")
                self.emit("interrupt", prompt_id=pid, queue=ours)
            except ComfyError as exc:
                errors.append(f"POST /interrupt failed: {exc}")
        removed = self._dequeue(budget, ours, done, errors)
        return {
            "queue": queue,
            "interrupt_sent": interrupt_sent,
            "removed_from_queue": removed,
            "cleanup": cleanup_text(ours, done, errors, interrupt_sent),
            "cleanup_errors": errors,
        }

    def _dequeue(self, budget: Deadline, ours: str | None, done: list[str], errors: list[str]) -> bool:
        pid = self.state.prompt_id
        try:
            self.client.delete_from_queue([pid], deadline=budget)
        except ComfyError as exc:
            errors.append(f"POST /queue delete failed: {exc}")
            return False
        removed = ours is not None and ours.startswith("pending")
        done.append("removed it from the queue" if removed else "asked /queue to delete it")
        self.emit("dequeue", prompt_id=pid, queue=ours)
        return removed


__all__ = ["CLEANUP_BUDGET_S", "PollOutcome", "Poller"]
