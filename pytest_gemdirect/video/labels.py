"""Text that reaches a terminal or a report from file names and scene labels, made safe to print.

File names come from the server and labels from the caller: a control character in them must show
as an escape, not move the cursor or end a line in the middle of a message.
"""

from __future__ import annotations

import unicodedata

MAX_LABEL = 200


def visible(text: object, limit: int = MAX_LABEL) -> str:
    """``text`` with control characters written as ``\\xNN``/``\\uNNNN`` escapes, capped at ``limit``."""
    raw = str(text)
    if len(raw) > limit:
        raw = raw[: limit - 1] + "…"
    out = []
    for char in raw:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
