"""A user's own check over a stage's result, as a row of the run: its outcome and why.

pytest reports each test up to three times (setup, call, teardown); this turns one report into
``(status, message)`` for the summary, or None when that phase says nothing new. A failure's
message is the assertion's first line as pytest shows it, capped; the terminal, the text summary
and the report make its control characters visible.
"""

from __future__ import annotations

import pytest

MESSAGE_CAP = 500


def _cap(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_CAP else text[: MESSAGE_CAP - 1] + "…"


def _failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if isinstance(message, str) and message.strip():
        return _cap(message.strip().splitlines()[0])  # the assertion's own words, on one line
    lines = [line for line in report.longreprtext.splitlines() if line.strip()]
    return _cap(lines[-1] if lines else "failed (no message)")


def check_outcome(report: pytest.TestReport) -> tuple[str, str | None] | None:
    """``(status, message)`` of one phase's report; None for a passing setup or teardown."""
    if report.failed:
        where = "" if report.when == "call" else f" (in its {report.when})"
        return "failed", _failure_message(report) + where
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return "skipped", _cap(str(reason).removeprefix("Skipped: "))
    if report.when == "call":
        return "passed", None
    return None
