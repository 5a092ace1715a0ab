"""What a failed ComfyUI attempt leads to, decided once for video and keyframe jobs alike."""

from __future__ import annotations

from enum import Enum

from pytest_gemdirect.comfyui.job import JobFailed

RETRYABLE_KINDS = ("execution_error", "interrupted")
"""Failures a re-queue can cure; a spent deadline or a missing history entry cannot."""

FRAMES_KINDS = ("completion_grace", "history_max_attempts")
"""The completion signal came but the outputs never reached /history: the frames stage's failure."""


class Next(Enum):
    RETRY = "retry"  # queue the scene again
    DEFER = "defer"  # generation passed; frame retrieval reports the failure
    SERVER_GONE = "server_gone"  # its server went away: it is brought back, or another takes the scene
    SERVER_BACK = "server_back"  # queue the scene again on the server that is back (or another one)
    FAIL = "fail"


def after_failure(failure: JobFailed, number: int, max_attempts: int, *, can_defer: bool) -> Next:
    """The next step after attempt ``number`` of ``max_attempts`` ended with ``failure``."""
    if can_defer and failure.kind in FRAMES_KINDS:
        return Next.DEFER
    if failure.kind == "server_gone":
        return Next.SERVER_GONE
    if failure.kind in RETRYABLE_KINDS and number < max_attempts:
        return Next.RETRY
    return Next.FAIL
