"""Text that reaches a terminal or a report from file names and scene labels, made safe to print.

File names come from the server and labels from the caller: a control character in them must show
as an escape, not move the cursor or end a line in the middle of a message. The rule is the
harness's one (``pytest_gemdirect.text``), on one line and capped.
"""

from __future__ import annotations

from pytest_gemdirect.text import visible as _visible

MAX_LABEL = 200


def visible(text: object, limit: int = MAX_LABEL) -> str:
    """``text`` on one line with control and bidi characters as escapes, capped at ``limit``."""
    return _visible(str(text), limit=limit, one_line=True)
