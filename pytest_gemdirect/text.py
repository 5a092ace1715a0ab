"""Untrusted text (from a server, an LLM or a child process) made safe to show.

A file name such as ``"\\x1b]0;pwned\\x07frame.png"`` printed raw retitles the user's terminal;
``"\\x1b[2J"`` clears it; ``"gemdirect\\u202egnp.exe"`` displays as "…exe.png". Every such
character is written as a visible escape instead, in the terminal and in text files alike.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls; bidirectional embeddings, overrides and isolates.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


_LINE_BREAKS = re.compile("[\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, *, limit: int | None = None, one_line: bool = False) -> str:
    """``text`` with control and bidi characters as escapes (``\\x1b``, ``\\u202e``), cut to ``limit``.

    Tabs and newlines stay, unless ``one_line`` (a file name or a label inside a message).
    """
    shown = _INVISIBLE.sub(_escape, text)
    if one_line:
        shown = _LINE_BREAKS.sub(_escape, shown)
    if limit is not None and len(shown) > limit:
        return shown[:limit] + f"… ({len(shown) - limit} more characters)"
    return shown
