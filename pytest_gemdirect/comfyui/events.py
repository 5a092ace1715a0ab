"""The job's event stream: small dicts for an events.jsonl line, timed from ``POST /prompt``.

Events before the POST (the socket connect, its first frame) are held back until the clock's
origin is known, then delivered with negative times. A sink that raises never ends the job:
the first failure becomes a note and later events are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pytest_gemdirect.comfyui.state import JobState

EventSink = Callable[[dict[str, Any]], None]


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class JobEvents:
    """Hands job events to ``on_event``; owns the moment seconds count from (``state.t_post``)."""

    def __init__(self, state: JobState, on_event: EventSink | None) -> None:
        self.state = state
        self.on_event = on_event
        self._early: list[tuple[float, dict[str, Any]]] | None = []
        self._sink_failed = False

    @property
    def clock_started(self) -> bool:
        return self._early is None

    def emit(self, event: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        if self._early is not None:  # before POST /prompt: held until the clock's origin is known
            self._early.append((time.monotonic(), {"t": now_iso(), "event": event, **fields}))
            return
        self._deliver({"t": now_iso(), "s": self.state.s(), "event": event, **fields})

    def start_clock(self) -> None:
        """Seconds count from now (POST /prompt); events held until now go out with negative times."""
        state = self.state
        old, state.t_post = state.t_post, time.monotonic()
        for message in state.last_messages:  # the status{sid} frame read before the POST
            message["t"] = round(message["t"] + old - state.t_post, 3) + 0.0
        early, self._early = self._early or [], None
        for at, event in early:
            event["s"] = round(at - state.t_post, 3) + 0.0
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


__all__ = ["EventSink", "JobEvents", "now_iso"]
