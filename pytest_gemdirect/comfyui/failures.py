"""How a job attempt ends without a result: :class:`JobFailed` and the work done on the way out.

:class:`Ending` builds the failure: the evidence (what was seen last), for a spent deadline
the clean-up of OUR prompt (interrupt + dequeue, see ``polling``), a final ``failed`` event.
The wording itself lives in ``evidence``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_gemdirect.comfyui.client import ComfyClient, ComfyError, PromptRejected
from pytest_gemdirect.comfyui.events import JobEvents
from pytest_gemdirect.comfyui.evidence import (
    evidence,
    server_error_fields,
    server_failure_text,
    server_gone_text,
    too_large_text,
)
from pytest_gemdirect.comfyui.polling import Poller
from pytest_gemdirect.comfyui.state import JobState
from pytest_gemdirect.comfyui.websocket_feed import WebSocketFeed
from pytest_gemdirect.net import one_line
from pytest_gemdirect.policy import QueuePolicy

KINDS = (
    "execution_error",
    "interrupted",
    "scene_max_wait",
    "completion_grace",
    "history_max_attempts",
    "server_gone",
    "rejected",
    "too_large",
)
"""The kinds of :class:`JobFailed`, one a way an attempt can end without a result."""


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


# ---------------------------------------------------------------------------------------- endings
class Ending:
    """Turns what was seen into a :class:`JobFailed`: evidence, clean-up of our prompt, the event."""

    def __init__(
        self,
        client: ComfyClient,
        state: JobState,
        policy: QueuePolicy,
        events: JobEvents,
        feed: WebSocketFeed,
        poller: Poller,
    ) -> None:
        self.client = client
        self.state = state
        self.policy = policy
        self.events = events
        self.feed = feed
        self.poller = poller

    def ws_text(self) -> str:
        return self.feed.describe(self.state.rel(self.feed.last_activity))

    def evidence(self, kind: str, setting: str | None) -> dict[str, Any]:
        return evidence(
            self.state,
            self.policy,
            kind=kind,
            setting=setting,
            server=self.client.base_url,
            ws_text=self.ws_text(),
        )

    def fail(
        self, kind: str, message: str, *, setting: str | None = None, cleanup: bool = False
    ) -> JobFailed:
        """A JobFailed with the evidence; for a spent deadline, interrupt and dequeue our prompt first."""
        if not self.events.clock_started:
            self.events.start_clock()
        facts = self.evidence(kind, setting)
        self.feed.close()
        if cleanup:
            actions = self.poller.stop_own_prompt()
            facts.update(actions)
            message += "; " + actions["cleanup"]
        elif kind not in ("server_gone", "rejected"):
            facts["queue"] = self.poller.queue_snapshot(self.poller.cleanup_budget())
        else:
            facts["queue"] = None
        facts.setdefault("interrupt_sent", False)
        self.events.emit("failed", kind=kind, message=one_line(message, 500))
        return JobFailed(kind, message, {**facts, "prompt_id": self.state.prompt_id})

    def gone(self, why: str) -> JobFailed:
        return self.fail(
            "server_gone", server_gone_text(self.client.base_url, self.state, why, self.ws_text())
        )

    def too_large(self, error: ComfyError) -> JobFailed:
        """/history or /queue answered more than the size cap (``max_response_mb``)."""
        text = too_large_text(self.state, error, self.ws_text())
        return self.fail("too_large", text, setting="max_response_mb", cleanup=True)

    def server_failure(self, kind: str, data: Mapping[str, Any], t: float | None) -> JobFailed:
        """``execution_error`` (kind ``execution_error``) or ``execution_interrupted`` (``interrupted``)."""
        self.state.server_error = server_error_fields(data)
        text = server_failure_text(kind, data, t, self.state)
        return self.fail("execution_error" if kind == "execution_error" else "interrupted", text)

    def rejected(self, exc: PromptRejected) -> JobRejected:
        self.feed.close()
        facts = self.evidence("rejected", None)
        facts.update(
            {
                "interrupt_sent": False,
                "queue": None,
                "error": {"error": exc.error, "node_errors": exc.node_errors, "status": exc.status},
                "node_messages": exc.node_messages,
            }
        )
        self.events.emit("rejected", message=one_line(exc, 500))
        return JobRejected(str(exc), facts, exc)

    def not_taken(self, exc: ComfyError, queue: dict[str, Any] | None) -> JobFailed:
        """POST /prompt failed and the prompt is in neither /queue nor /history."""
        facts = self.evidence("rejected", None)
        facts.update({"interrupt_sent": False, "queue": queue, "error": {"post_prompt": str(exc)}})
        self.feed.close()
        self.events.emit("failed", kind="rejected", message=one_line(exc, 500))
        return JobFailed(
            "rejected",
            f"POST /prompt failed ({exc}) and prompt {self.state.prompt_id} is in neither /queue nor"
            " /history: ComfyUI did not take it",
            facts,
        )


__all__ = ["KINDS", "Ending", "JobFailed", "JobRejected"]
