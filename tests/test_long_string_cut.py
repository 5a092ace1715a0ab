"""The cut of long strings gives the same bytes whether a body comes whole or a byte at a time.

A whole chunk takes the fast path (the strings it holds walked by a regular expression), a byte at
a time takes the byte-wise one; strings right at the limit and escapes at its edge must agree.
"""

from __future__ import annotations

import json

import pytest

from pytest_gemdirect.comfyui.long_strings import LongStringCut

LIMIT = 40


def fed(raw: bytes, size: int) -> tuple[bytes, int, int]:
    cut = LongStringCut(limit=LIMIT, keep=10)
    out = b"".join(cut.feed(raw[i : i + size]) for i in range(0, len(raw), size)) + cut.end()
    return out, cut.cut_strings, cut.cut_bytes


@pytest.mark.parametrize("length", [0, LIMIT - 2, LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, 3 * LIMIT])
@pytest.mark.parametrize("tail", ["", "\\\\", '\\"', "\\u00e9", "\\ud83d\\ude00", "é"])
def test_whole_and_byte_wise_agree_at_the_limit(length: int, tail: str) -> None:
    text = "x" * length + tail
    raw = json.dumps({"a": text, "b": ["short", text, ""], "c": 1}, ensure_ascii=False).encode()
    whole, one_byte = fed(raw, len(raw)), fed(raw, 1)
    assert whole == one_byte
    kept = json.loads(whole[0])
    assert kept["c"] == 1 and kept["b"][0] == "short"
    raw_bytes = len(json.dumps(text, ensure_ascii=False).encode()) - 2  # the literal's content, in bytes
    assert (kept["a"] == text) == (raw_bytes <= LIMIT)
