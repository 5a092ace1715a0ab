"""The stage model (design §2): each stage's work runs once, its outcome is remembered and recorded.

A stage's own test turns a failure into a red row; every stage that needs a failed one is
skipped with "not reached: <stage> failed". Work runs when first needed, so deselecting a
stage's test hides its check, not its work. Nothing here imports pytest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_gemdirect.catalogue import STAGE_NAMES, StageKey
from pytest_gemdirect.summary import WRONG, RunSummary


class StageFailed(Exception):
    """The stage's own check failed; the message says what, where and why in plain words."""


class NotReached(Exception):
    """A prerequisite failed, so this stage never ran; the message is ``not reached: <stage> failed``."""


class StageSkipped(Exception):
    """The stage has nothing to do with this configuration (e.g. no external suites)."""


@dataclass
class Outcome:
    key: StageKey
    status: str  # passed | failed | not_reached | skipped | interrupted
    value: object = None
    message: str | None = None
    duration_s: float = 0.0


Work = Callable[[StageKey], object]


class Pipeline:
    """Runs each stage node (``llm``, ``svd[scene-002]``…) at most once and records its outcome."""

    def __init__(self, summary: RunSummary, works: dict[str, Work]) -> None:
        self.summary = summary
        missing = [name for name in STAGE_NAMES if name not in works]
        if missing:
            raise ValueError(f"no work for the stage(s) {', '.join(missing)} of the catalogue")
        self._works = works  # stage name -> function(key) doing the work
        self.outcomes: dict[StageKey, Outcome] = {}
        self._running: dict[StageKey, float] = {}  # key -> when its work started
        # a stage ends in the main thread while another (pytest-timeout's timer) may be recording it
        # as interrupted: ending a key's run and recording its outcome happen as one step
        self._lock = threading.RLock()

    def run(self, key: StageKey) -> object:
        """The stage's value; raises StageFailed, NotReached or StageSkipped as its own test should show."""
        outcome = self.outcomes.get(key)
        if outcome is None:
            outcome = self._execute(key)
        if outcome.status in WRONG:
            raise StageFailed(outcome.message)
        if outcome.status == "not_reached":
            raise NotReached(outcome.message)
        if outcome.status == "skipped":
            raise StageSkipped(outcome.message)
        return outcome.value

    def require(self, key: StageKey) -> object:
        """For a later stage: the value, or NotReached naming the stage that failed."""
        try:
            return self.run(key)
        except StageFailed:
            raise NotReached(f"not reached: {key} failed") from None

    def attempt_all(self, keys: list[StageKey]) -> None:
        """Run every key, whatever their outcomes (the summary stage wants the whole run)."""
        for key in keys:
            try:
                self.run(key)
            except (StageFailed, NotReached, StageSkipped):
                pass

    def _execute(self, key: StageKey) -> Outcome:
        with self._lock:
            if key in self._running:
                raise RuntimeError(f"stage {key} depends on itself")
            started = self._running[key] = time.monotonic()
        try:
            value = self._works[key.stage](key)
            outcome = Outcome(key, "passed", value=value)
        except StageFailed as exc:
            outcome = Outcome(key, "failed", message=str(exc))
        except NotReached as exc:
            outcome = Outcome(key, "not_reached", message=str(exc))
        except StageSkipped as exc:
            outcome = Outcome(key, "skipped", message=str(exc))
        except (KeyboardInterrupt, SystemExit):
            message = "the run was interrupted while it ran"  # the key stands beside it wherever shown
            self._end(Outcome(key, "interrupted", message=message, duration_s=_since(started)))
            raise  # the session ends; its summary is closed as interrupted
        except BaseException as exc:  # noqa: BLE001 - a bug, or pytest-timeout's outer backstop: a failure, never lost
            outcome = Outcome(key, "failed", message=f"{type(exc).__name__}: {exc}")
        outcome.duration_s = _since(started)
        self._end(outcome)
        return outcome

    def _end(self, outcome: Outcome) -> None:
        """The key's work is over: it leaves the running ones and its outcome is recorded, at once."""
        with self._lock:
            self._running.pop(outcome.key, None)
            self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            earlier = self.outcomes.get(outcome.key)
            if earlier is not None and earlier.status == "interrupted":
                return  # the run was cut short first: what a stopped thread reports after that is not news
            self.outcomes[outcome.key] = outcome
            self.summary.record_item(
                outcome.key, outcome.status, duration_s=outcome.duration_s, message=outcome.message
            )

    def mark_interrupted(self, key: StageKey, message: str) -> None:
        """A stage whose work went on elsewhere (a scene's thread) when the run was cut short."""
        with self._lock:
            if key not in self.outcomes and key not in self._running:
                self._record(Outcome(key, "interrupted", message=message))

    def interrupt_running(self, message: str) -> None:
        """Record every stage still at work as interrupted (the process is about to end)."""
        with self._lock:
            for key, started in sorted(self._running.items(), key=lambda pair: str(pair[0])):
                self._record(Outcome(key, "interrupted", message=message, duration_s=_since(started)))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
