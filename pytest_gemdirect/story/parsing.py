"""An LLM's answer as a story: lenient JSON parsing, then normalised and validated against the schema."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from pytest_gemdirect.story.schema import content_schema

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def escape_control_chars(text: str) -> tuple[str, int]:
    """Escape raw control characters that sit inside JSON strings; returns (text, how many)."""
    out: list[str] = []
    in_string = escaped = False
    count = 0
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ord(ch) < 0x20:
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\u{ord(ch):04x}"))
                count += 1
                continue
        elif ch == '"':
            in_string = True
        out.append(ch)
    return "".join(out), count


def parse_story_text(text: str) -> tuple[Any, list[str]]:
    """JSON from an LLM answer, leniently: strips ``<think>`` blocks, code fences and prose around
    the object, escapes raw control characters inside strings. Returns (data, repairs made).

    Raises ValueError saying what is wrong (and whether the JSON looks cut off).
    """
    repairs: list[str] = []
    body = text.lstrip("\ufeff").strip()
    if not body:
        raise ValueError("the answer is empty")
    if _THINK.search(body):
        body = _THINK.sub("", body).strip()
        repairs.append("removed <think> blocks")
    fence = _FENCE.search(body)
    if fence and not body.startswith("{"):
        body = fence.group(1).strip()
        repairs.append("removed the code fence")
    if not body.startswith(("{", "[")):
        start = body.find("{")
        if start < 0:
            raise ValueError(f"the answer is not JSON (no object in it): starts with {body[:60]!r}")
        end = body.rfind("}")
        body = body[start : end + 1] if end > start else body[start:]
        repairs.append("cut the JSON object out of surrounding text")
    try:
        return json.loads(body), repairs
    except json.JSONDecodeError as exc:
        first = exc
    fixed, count = escape_control_chars(body)
    if count:
        try:
            data = json.loads(fixed)
        except json.JSONDecodeError as exc:
            first = exc
        else:
            repairs.append(f"escaped {count} raw control character(s) inside strings")
            return data, repairs
    if first.msg.startswith("Unterminated string"):
        raise ValueError("the JSON is cut off (it ends inside a string)")
    if first.pos >= len(fixed if count else body) - 1:
        raise ValueError(f"the JSON is cut off (it ends before the document closes: {first.msg})")
    raise ValueError(f"the answer is not valid JSON: {first.msg} at line {first.lineno} column {first.colno}")


def _clean(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text or None


def normalize_story(data: Any, scene_count: int) -> tuple[dict[str, Any], list[str]]:
    """Keep the schema's keys, collapse whitespace, renumber ids scene-001.., validate.

    Returns (story without metadata, notes); raises ValueError naming the first problem.
    """
    notes: list[str] = []
    if not isinstance(data, dict):
        raise ValueError(f"the answer is a JSON {type(data).__name__}, not an object")
    if "scenes" not in data and len(data) == 1:
        ((key, inner),) = data.items()
        if isinstance(inner, dict) and "scenes" in inner:
            data = inner
            notes.append(f"unwrapped the story from {key!r}")
    scenes = data.get("scenes")
    if not isinstance(scenes, list):
        raise ValueError("the answer has no 'scenes' list")
    if len(scenes) != scene_count:
        raise ValueError(f"asked for {scene_count} scenes, got {len(scenes)}")
    title = _clean(data.get("title"))
    if title is None:
        raise ValueError("the story has no title")
    story: dict[str, Any] = {"title": title}
    logline = _clean(data.get("logline"))
    if logline is not None:
        story["logline"] = logline
    extra = sorted(set(data) - {"title", "logline", "scenes"})
    if extra:
        notes.append(f"dropped extra keys {', '.join(extra)}")
    out_scenes = []
    old_ids = []
    for index, scene in enumerate(scenes, start=1):
        if not isinstance(scene, dict):
            raise ValueError(f"scene {index} is not an object")
        item: dict[str, Any] = {"id": f"scene-{index:03d}"}
        for key in ("title", "visual_prompt", "motion_prompt"):
            value = _clean(scene.get(key))
            if value is None:
                raise ValueError(f"scene {index} has no {key}")
            item[key] = value
        old_ids.append(scene.get("id"))
        out_scenes.append(item)
    if old_ids != [s["id"] for s in out_scenes]:
        notes.append("renumbered scene ids scene-001..")
    story["scenes"] = out_scenes
    errors = sorted(
        jsonschema.Draft202012Validator(content_schema()).iter_errors(story), key=lambda e: list(e.path)
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise ValueError(f"the story does not match story.schema.json at {where}: {errors[0].message}")
    return story, notes
