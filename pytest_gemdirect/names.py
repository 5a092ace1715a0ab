"""Two ways to turn untrusted text into one file-name part, named for how they differ.

- :func:`safe_file_name` keeps a server-given file name recognisable (``frame_00001_.png``
  stays as it is, Unicode too) and only replaces what is unsafe on Windows or POSIX.
- :func:`slug` makes a short ASCII name from free text (an LLM's story title): letters,
  digits, ``.``, ``_`` and ``-`` only.

Both refuse separators, ``..``, drive letters, NUL and reserved Windows device names
(``CON``, ``aux.png``). Nothing here imports pytest.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_FILE_NAME = 180
_RESERVED = re.compile(
    r"^(con|prn|aux|nul|clock\$|conin\$|conout\$|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE
)
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"|?*\\/]')
# Bidirectional marks, embeddings, overrides and isolates: "gemdirect\u202egnp.exe" shows as "…exe.png".
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def is_reserved_device_name(name: str) -> bool:
    """``CON``, ``aux.png``, ``LPT1.txt`` …: names Windows treats as devices, whatever the suffix."""
    return bool(_RESERVED.match(name))


def safe_file_name(name: str) -> str:
    """One path component from an untrusted file name, as close to it as is safe.

    Unsafe characters become ``_``, bidirectional overrides are dropped (they make a name display
    as another: ``x\u202egnp.exe`` as "xexe.png"), leading/trailing dots and spaces go, a device name gets a
    leading ``_``, and a name over 180 characters is cut keeping its suffix; ``unnamed`` when
    nothing is left.
    """
    cleaned = _UNSAFE_CHARS.sub("_", _BIDI.sub("", str(name))).strip(" .")
    if not cleaned or cleaned in (".", ".."):
        cleaned = "unnamed"
    if is_reserved_device_name(cleaned):
        cleaned = "_" + cleaned
    if len(cleaned) > MAX_FILE_NAME:
        stem, dot, suffix = cleaned.rpartition(".")
        if dot and 0 < len(suffix) <= 10:
            cleaned = stem[: MAX_FILE_NAME - len(suffix) - 1] + "." + suffix
        else:
            cleaned = cleaned[:MAX_FILE_NAME]
    return cleaned


def slug(text: str, *, max_length: int = 64, default: str = "untitled") -> str:
    """A short ASCII file-name part from free text: ASCII letters, digits, ``.``, ``_`` and ``-``
    only, no ``..``, no leading/trailing dots, no reserved Windows device names, at most
    ``max_length`` characters; ``default`` (plus a short hash of the text) when nothing is left."""
    if max_length < 12:
        raise ValueError("max_length must be at least 12")
    raw = str(text)
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name).strip(".-_ ")
    name = name[:max_length].rstrip(".-_ ")
    if is_reserved_device_name(name):
        name = ("_" + name)[:max_length].rstrip(".-_ ")
    if not name:
        if raw.strip():
            return f"{default}-{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:8]}"
        return default
    return name


__all__ = ["MAX_FILE_NAME", "is_reserved_device_name", "safe_file_name", "slug"]
