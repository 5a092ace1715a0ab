"""Cut very long strings out of a JSON answer while it is read, so they never sit in memory.

A ``/history`` or ``/object_info`` answer padded with tens of MB (a bloated custom node, a broken
proxy) would otherwise be held three times over while it is parsed: the bytes, the decoded text
and the parsed strings. The harness uses none of such strings (file names, node names, statuses
are short), so :class:`LongStringCut` keeps a string literal of up to ``limit`` bytes whole and
cuts a longer one to its first ``keep`` bytes plus a note of how much was left out. It works on
the bytes as they arrive, keeps the JSON valid, and holds at most ``limit`` bytes of a string.
"""

from __future__ import annotations

import re

LONG_STRING_LIMIT = 64 * 1024
"""A JSON string literal up to this many bytes is kept whole."""

LONG_STRING_KEEP = 2000
"""Of a longer one, this many bytes are kept, then a note of what was cut."""

_QUOTE_OR_BACKSLASH = re.compile(rb'["\\]')
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"', re.DOTALL)
"""From an opening quote: its whole string literal when the chunk holds it, else the quote alone."""
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def _safe_prefix(content: bytes, keep: int) -> bytes:
    """At most ``keep`` bytes of a string's raw content, never ending inside an escape sequence,
    a UTF-8 sequence or a surrogate pair (the result must still decode and parse)."""
    cut, index = 0, 0
    while index < min(len(content), keep):
        if content[index] == _BACKSLASH:
            step = 6 if content[index + 1 : index + 2] == b"u" else 2
            if index + step > keep:
                break
            high = step == 6 and content[index + 2 : index + 4].lower() in (b"d8", b"d9", b"da", b"db")
            if high and index + 12 > keep:
                break  # a high surrogate without its low half would not survive writing as UTF-8
            index += step
        else:
            index += 1
        cut = index
    return content[:cut].decode("utf-8", errors="ignore").encode("utf-8")


class LongStringCut:
    """A streaming filter over a JSON body: :meth:`feed` each chunk, :meth:`end` once; the output
    is the same JSON with every string literal over ``limit`` bytes cut (see the module docstring)."""

    def __init__(self, *, limit: int = LONG_STRING_LIMIT, keep: int = LONG_STRING_KEEP) -> None:
        if not 0 <= keep <= limit:
            raise ValueError("keep must be between 0 and limit")
        self.limit = limit
        self.keep = keep
        self.cut_strings = 0  # how many strings were cut
        self.cut_bytes = 0  # how many bytes of string content were left out
        self._in_string = False
        self._escape = False  # the previous byte inside the string was an unescaped backslash
        self._content = bytearray()  # the current string's content while it is kept
        self._skipped: int | None = None  # bytes left out of the current string, once it is cut

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        pos = 0
        while pos < len(chunk):
            if self._in_string:
                pos = self._string_part(chunk, pos, out)
                continue
            pos = self._short_strings(chunk, pos, out)
        return bytes(out)

    def _short_strings(self, chunk: bytes, pos: int, out: bytearray) -> int:
        """Copy from ``pos`` up to the first string literal that is long or not whole in this chunk
        (the byte-wise path takes that one); the regular expression walks the rest in C, so an
        answer of tens of thousands of short strings costs no Python step per byte."""
        for token in _TOKEN.finditer(chunk, pos):
            start, end = token.span()
            if end - start < 2 or end - start - 2 > self.limit:
                out += chunk[pos : start + 1]
                self._in_string = True
                return start + 1
        out += chunk[pos:]
        return len(chunk)

    def end(self) -> bytes:
        """What is still held (a body that ended inside a string: the parser names the error)."""
        held = bytes(self._content)
        self._content.clear()
        return held

    def _string_part(self, chunk: bytes, pos: int, out: bytearray) -> int:
        """Consume string content from ``pos``; up to and including its closing quote when it is in
        this chunk. Returns where to go on."""
        if self._escape:
            self._take(chunk[pos : pos + 1])
            self._escape = False
            return pos + 1
        found = _QUOTE_OR_BACKSLASH.search(chunk, pos)
        if found is None:
            self._take(chunk[pos:])
            return len(chunk)
        at = found.start()
        self._take(chunk[pos:at])
        if chunk[at] == _BACKSLASH:
            self._take(chunk[at : at + 1])
            self._escape = True
            return at + 1
        out += self._close()
        return at + 1

    def _take(self, data: bytes) -> None:
        if self._skipped is not None:
            self._skipped += len(data)
            return
        self._content += data
        if len(self._content) > self.limit:
            prefix = _safe_prefix(bytes(self._content), self.keep)
            self._skipped = len(self._content) - len(prefix)
            self._content = bytearray(prefix)

    def _close(self) -> bytes:
        """The string's (kept or cut) content and its closing quote."""
        content = bytes(self._content)
        if self._skipped is not None:
            content += f" [... {self._skipped} more bytes cut by gemdirect]".encode()
            self.cut_strings += 1
            self.cut_bytes += self._skipped
        self._content.clear()
        self._in_string, self._escape, self._skipped = False, False, None
        return content + b'"'


__all__ = ["LONG_STRING_KEEP", "LONG_STRING_LIMIT", "LongStringCut"]
