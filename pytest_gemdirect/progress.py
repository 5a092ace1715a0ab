"""The sampler's progress in the terminal: in place on a terminal, occasional plain lines on CI."""

from __future__ import annotations

import time
from collections.abc import Callable

PLAIN_LINE_EVERY_S = 10.0


class ProgressDisplay:
    """Turns ``(scene, value, max)`` samples into terminal output without flooding a CI log."""

    def __init__(self, write: Callable[[str], None], *, in_place: bool) -> None:
        self._write = write
        self._in_place = in_place
        self._last_plain = 0.0
        self._scene: str | None = None
        self._scene_started = 0.0
        self._first_value = 0

    def __call__(self, scene_id: str, value: int, maximum: int) -> None:
        now = time.monotonic()
        if scene_id != self._scene:
            self._scene, self._scene_started, self._first_value = scene_id, now, value
            self._last_plain = 0.0
            if self._in_place:
                self._write("\n")  # a line of its own, below pytest's progress line
        steps_done = max(value - self._first_value, 0)
        per_step = (now - self._scene_started) / steps_done if steps_done else None
        rate = f"{per_step:.2f} s/step" if per_step is not None else "-- s/step"
        text = f"{scene_id}: step {value}/{maximum}, {rate}"
        finished = value >= maximum
        if self._in_place:
            self._write("\r" + text.ljust(60) + ("\n" if finished else ""))
        elif finished or now - self._last_plain >= PLAIN_LINE_EVERY_S:
            self._last_plain = now
            self._write(text + "\n")
