"""One time budget carried across every phase of a wait (monotonic clock, never wall time)."""

from __future__ import annotations

import time


class DeadlineExceeded(Exception):
    """A wait ran out of its budget; ``setting`` names what bounds it."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class Deadline:
    """A point in monotonic time; waits ask it how long they may still block.

    Every wait in the harness takes one of these instead of a bare sleep loop, so no
    loop can outlive the budget its setting gives it.
    """

    def __init__(self, seconds: float, *, setting: str | None = None, start: float | None = None) -> None:
        """``start`` (a ``time.monotonic()`` value) counts the budget from an earlier moment than now,
        e.g. from the last sign of life of what is awaited."""
        self.seconds = float(seconds)
        self.setting = setting
        self.started = time.monotonic() if start is None else float(start)
        self.expires = self.started + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def timeout(self, cap: float | None = None) -> float:
        """A blocking-call timeout that never goes past the deadline (and at most ``cap``)."""
        left = self.remaining()
        return left if cap is None else min(left, cap)

    def extended(self, seconds: float) -> Deadline:
        """The same budget moved ``seconds`` later (time that was not this wait's to spend)."""
        return Deadline(self.seconds, setting=self.setting, start=self.started + seconds)

    def sooner(self, other: Deadline | None) -> Deadline:
        """Whichever of two deadlines expires first."""
        if other is None or self.expires <= other.expires:
            return self
        return other

    def check(self, what: str) -> None:
        """Raise DeadlineExceeded naming ``what`` and the setting when the budget is gone."""
        if self.expired():
            bound = f" ({self.setting} = {self.seconds:g} s)" if self.setting else ""
            message = f"{what}: no result within {self.seconds:g} s{bound}"
            raise DeadlineExceeded(message, setting=self.setting)
