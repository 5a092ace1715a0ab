"""The story stage's work: a story of N scenes from the LLM (or a deterministic fallback), and keyframes.

- :func:`llm_story` asks for structured output — ``response_format`` ``json_schema`` (the story
  schema with the scene count pinned), stepping down to ``json_object`` and then a plain prompt
  when the server rejects a form — parses leniently where that is safe, validates against
  ``schemas/story.schema.json``, renumbers scene ids, and retries a bounded number of times.
- :func:`fallback_story` needs no LLM; :func:`make_story` picks between them by mode and records
  why in ``metadata``.
- :func:`render_keyframes` draws one deterministic PNG per scene from its prompt text.
- File-name parts from untrusted text (LLM titles) come from :func:`pytest_gemdirect.names.slug`.

Nothing here imports pytest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pytest_gemdirect import net
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.llm import LLMClient, LLMError, pick_chat_model
from pytest_gemdirect.rundir import atomic_write_bytes
from pytest_gemdirect.schemas_io import load_schema

SCENE_ID = re.compile(r"^scene-\d{3}$")
FORMS: tuple[str, ...] = ("json_schema", "json_object", "plain")
MODES: tuple[str, ...] = ("auto", "llm", "fallback")
MAX_SCENES = 99
MAX_TOKENS_CAP = 32768
# Not worth a retry: nothing listens, no such host, a bad URL or model, or an answer over the size cap.
_FATAL_KINDS = (net.REFUSED, net.DNS, "invalid_url", "model_not_found", "no_models", "too_large")
_FORM_WORDS = re.compile(r"response_format|json_schema|json_object|\bschema\b|grammar", re.IGNORECASE)

SYSTEM_PROMPT = (
    "You write short visual stories for an image-to-video pipeline. Every scene becomes one still "
    "keyframe image and a few seconds of video. You answer with a single JSON object and nothing else."
)


class StoryError(Exception):
    """No usable story: ``reason`` says why, ``attempts`` how many requests were made."""

    def __init__(self, reason: str, attempts: int, *, attempt_log: Sequence[str] = ()) -> None:
        super().__init__(reason, attempts)
        self.reason = reason
        self.attempts = attempts
        self.attempt_log = list(attempt_log)

    def __str__(self) -> str:
        plural = "" if self.attempts == 1 else "s"
        return f"{self.reason} (after {self.attempts} attempt{plural})"

    def __reduce__(self) -> Any:
        return (_rebuild_story_error, (self.reason, self.attempts, self.attempt_log))


def _rebuild_story_error(reason: str, attempts: int, attempt_log: list[str]) -> StoryError:
    return StoryError(reason, attempts, attempt_log=attempt_log)


# ---------------------------------------------------------------------------------------- schemas
def story_schema() -> dict[str, Any]:
    """``schemas/story.schema.json`` (with metadata)."""
    return load_schema("story.schema.json")


def _content_schema() -> dict[str, Any]:
    schema = story_schema()
    schema["properties"].pop("metadata", None)
    return schema


def request_schema(scene_count: int) -> dict[str, Any]:
    """The schema sent as ``response_format.json_schema.schema``: the story without metadata,
    exactly ``scene_count`` scenes, every property required (strict mode), no length limits
    (large ``maxLength`` values blow up llama.cpp grammars; the answer is validated here anyway)."""
    _check_count(scene_count)
    schema = _content_schema()
    for key in ("$schema", "$id", "title", "description"):
        schema.pop(key, None)
    schema["required"] = ["title", "logline", "scenes"]
    scenes = schema["properties"]["scenes"]
    scenes["minItems"] = scenes["maxItems"] = scene_count

    def strip_lengths(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("maxLength", None)
            for value in node.values():
                strip_lengths(value)
        elif isinstance(node, list):
            for value in node:
                strip_lengths(value)

    strip_lengths(schema)
    return schema


def response_format_for(form: str, scene_count: int) -> dict[str, Any] | None:
    """The ``response_format`` of a request form (None for ``plain``)."""
    if form == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "story", "strict": True, "schema": request_schema(scene_count)},
        }
    if form == "json_object":
        return {"type": "json_object"}
    if form == "plain":
        return None
    raise ValueError(f"unknown request form {form!r}; expected one of {', '.join(FORMS)}")


def story_prompt(scene_count: int) -> str:
    return (
        f"Write a short, visual story in {scene_count} scenes for a video.\n"
        "Answer with one JSON object with the keys:\n"
        '  "title": the story title,\n'
        '  "logline": one sentence,\n'
        f'  "scenes": exactly {scene_count} objects, in order, each with\n'
        '    "id" ("scene-001", "scene-002", ...),\n'
        '    "title" (a few words),\n'
        '    "visual_prompt" (a detailed description of one still keyframe image),\n'
        '    "motion_prompt" (the camera and subject motion for a few seconds of video).\n'
        "No markdown, no comments, nothing before or after the JSON."
    )


def story_hash(story: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the story without its metadata."""
    content = {k: v for k, v in story.items() if k != "metadata"}
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_count(scene_count: int) -> None:
    if (
        isinstance(scene_count, bool)
        or not isinstance(scene_count, int)
        or not 1 <= scene_count <= MAX_SCENES
    ):
        raise ValueError(f"scene_count must be a whole number from 1 to {MAX_SCENES}, not {scene_count!r}")


# ---------------------------------------------------------------------------------------- fallback
_F_SUBJECTS = (
    "a lone paper boat",
    "a clockmaker's apprentice",
    "a white heron",
    "a small orange robot",
    "a night-shift tram driver",
    "an old lighthouse keeper",
    "a kite with a long red tail",
)
_F_PLACES = (
    "a flooded cathedral",
    "a terraced tea garden in mist",
    "a salt flat under a huge sky",
    "a canal city at blue hour",
    "a greenhouse full of ferns",
    "a mountain pass in falling snow",
    "a quiet harbour at sunrise",
    "a library lit by lanterns",
)
_F_LIGHT = ("soft morning light", "golden hour sun", "moonlight", "overcast diffuse light", "warm lamplight")
_F_ACTIONS = (
    "sets out at first light",
    "finds a hidden stair",
    "follows a drifting light",
    "crosses the water",
    "waits as the weather turns",
    "reaches the top",
    "looks back one last time",
)
_F_MOTION = (
    "slow push-in towards the subject",
    "gentle pan from left to right",
    "camera rises slowly, slight parallax",
    "static shot, mist drifting through",
    "slow dolly out revealing the scene",
)
_F_TITLES = (
    "The Long Way Round",
    "Small Lights",
    "Weather Report",
    "Quiet Harbour",
    "The Last Tram",
    "Paper Tides",
)


def _pick(options: Sequence[str], seed: int, *parts: object) -> str:
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def fallback_story(scene_count: int, seed: int) -> dict[str, Any]:
    """A deterministic story of ``scene_count`` scenes (no metadata), the same for the same seed."""
    _check_count(scene_count)
    subject = _pick(_F_SUBJECTS, seed, "subject")
    home = _pick(_F_PLACES, seed, "home")
    scenes = []
    for index in range(1, scene_count + 1):
        place = home if index == 1 else _pick(_F_PLACES, seed, "place", index)
        action = _pick(_F_ACTIONS, seed, "action", index)
        light = _pick(_F_LIGHT, seed, "light", index)
        scenes.append(
            {
                "id": f"scene-{index:03d}",
                "title": f"{action[0].upper()}{action[1:]}",
                "visual_prompt": f"{subject} {action} in {place}, {light}, wide shot, cinematic, detailed",
                "motion_prompt": _pick(_F_MOTION, seed, "motion", index),
            }
        )
    return {
        "title": _pick(_F_TITLES, seed, "title"),
        "logline": f"{subject[0].upper()}{subject[1:]} travels from {home} in {scene_count} scenes.",
        "scenes": scenes,
    }


# ---------------------------------------------------------------------------------------- parsing
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
        jsonschema.Draft202012Validator(_content_schema()).iter_errors(story), key=lambda e: list(e.path)
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise ValueError(f"the story does not match story.schema.json at {where}: {errors[0].message}")
    return story, notes


# ---------------------------------------------------------------------------------------- LLM story
def _form_rejected(exc: LLMError) -> bool:
    """The server refused the request form itself (an HTTP error that names it)."""
    if exc.kind != "http" or exc.status is None or exc.status < 400:
        return False
    return bool(_FORM_WORDS.search(f"{exc.message} {exc.body or ''}"))


def _retryable(exc: LLMError) -> bool:
    if exc.kind in _FATAL_KINDS:
        return False
    if exc.kind == "http":
        return exc.status is not None and (exc.status >= 500 or exc.status in (408, 409, 429))
    return True  # timeout, non-JSON, unexpected shape, dropped connection


def _metadata(**values: Any) -> dict[str, Any]:
    keys = (
        "mode",
        "requested_mode",
        "fallback_reason",
        "model",
        "seed",
        "temperature",
        "request_form",
        "attempts",
        "latency_s",
        "story_hash",
        "attempt_log",
    )
    return {key: values.get(key) for key in keys}


def llm_story(
    client: LLMClient,
    *,
    scene_count: int,
    model: str,
    seed: int,
    temperature: float | None,
    deadline: Deadline | None = None,
    max_attempts: int = 3,
) -> dict[str, Any]:
    """A story of ``scene_count`` scenes from the LLM, with ``metadata`` (mode "llm").

    ``max_attempts`` bounds the answers tried; a form the server rejects (HTTP error naming
    response_format / json_schema / json_object) is stepped down at once (json_schema ->
    json_object -> plain) without using up an attempt, so at most ``max_attempts + 2`` requests
    go out. Raises StoryError(reason, attempts) when no answer is usable or the deadline is spent.
    """
    _check_count(scene_count)
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if deadline is None:
        deadline = Deadline(client.timeout_s * max_attempts, setting="llm_timeout")
    started = time.monotonic()
    form_index = 0
    tries = requests_sent = 0
    log: list[str] = []
    correction = ""
    max_tokens = min(MAX_TOKENS_CAP, 600 + 400 * scene_count)
    last_reason = "no attempt was made"
    while tries < max_attempts:
        form = FORMS[form_index]
        if deadline.expired():
            bound = f" ({deadline.setting})" if deadline.setting else ""
            last_reason = (
                f"the story deadline of {deadline.seconds:g} s{bound} ran out; last problem: {last_reason}"
            )
            break
        requests_sent += 1
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": story_prompt(scene_count) + correction},
        ]
        try:
            answer = client.chat(
                messages,
                model=model,
                seed=seed,
                temperature=temperature,
                response_format=response_format_for(form, scene_count),
                max_tokens=max_tokens,
                deadline=deadline,
            )
        except LLMError as exc:
            if form != "plain" and _form_rejected(exc):
                form_index += 1
                log.append(
                    f"{requests_sent} {form}: rejected ({exc.message}); stepping down to {FORMS[form_index]}"
                )
                last_reason = f"the server rejected response_format {form}: {exc.message}"
                continue
            tries += 1
            log.append(f"{requests_sent} {form}: {exc}")
            last_reason = str(exc)
            if not _retryable(exc):
                raise StoryError(last_reason, requests_sent, attempt_log=log) from None
            continue
        tries += 1
        try:
            data, repairs = parse_story_text(answer.content)
            story, notes = normalize_story(data, scene_count)
        except ValueError as exc:
            problem = str(exc)
            if answer.finish_reason == "length":
                problem = (
                    f"the answer was cut off at the token limit (finish_reason 'length' after"
                    f" {len(answer.content)} characters, max_tokens {max_tokens})"
                )
                max_tokens = min(MAX_TOKENS_CAP, max_tokens * 2)
            log.append(f"{requests_sent} {form}: {problem}")
            last_reason = problem
            correction = (
                f"\n\nA previous answer could not be used ({problem[:200]})."
                f" Answer again with only the JSON object, exactly {scene_count} scenes."
            )
            continue
        repaired = repairs + notes
        log.append(f"{requests_sent} {form}: ok" + (f" ({'; '.join(repaired)})" if repaired else ""))
        story["metadata"] = _metadata(
            mode="llm",
            requested_mode="llm",
            fallback_reason=None,
            model=model,
            seed=seed,
            temperature=temperature,
            request_form=form,
            attempts=requests_sent,
            latency_s=round(time.monotonic() - started, 3),
            story_hash=story_hash(story),
            attempt_log=log,
        )
        return story
    raise StoryError(last_reason, requests_sent, attempt_log=log)


def _resolve_model(client: LLMClient, model: str | None, health: Any, deadline: Deadline | None) -> str:
    if model:
        return model
    used = getattr(health, "model", None)
    if isinstance(used, str) and used:
        return used
    models = client.list_models(deadline=deadline)
    if not models:
        raise StoryError("the LLM lists no models (set --llm-model)", 0)
    return pick_chat_model(models, None)


def make_story(  # noqa: PLR0913 - keyword-only options, each with a default
    mode: str,
    *,
    client: LLMClient | None = None,
    health: Any = None,
    unhealthy_reason: str | None = None,
    scene_count: int,
    model: str | None = None,
    seed: int = 42,
    temperature: float | None = 0.35,
    deadline: Deadline | None = None,
    max_attempts: int = 3,
) -> dict[str, Any]:
    """The run's story with ``metadata`` valid against story.schema.json.

    ``mode``: ``fallback`` — the deterministic story; ``llm`` — the LLM's story or StoryError;
    ``auto`` — the LLM's story when a healthy client is given, else (or when it fails) the
    deterministic story with ``fallback_reason`` saying why. ``health`` (a HealthResult) supplies
    the model when ``model`` is not set; ``unhealthy_reason`` is why the health check failed.
    """
    if mode not in MODES:
        raise ValueError(f"story mode must be one of {', '.join(MODES)}, not {mode!r}")
    _check_count(scene_count)

    def fallback(reason: str | None, **extra: Any) -> dict[str, Any]:
        story = fallback_story(scene_count, seed)
        values: dict[str, Any] = {
            "mode": "fallback",
            "requested_mode": mode,
            "fallback_reason": reason,
            "model": None,
            "seed": seed,
            "temperature": None,
            "request_form": None,
            "attempts": 0,
            "latency_s": None,
            "attempt_log": [],
        }
        values.update(extra)
        story["metadata"] = _metadata(story_hash=story_hash(story), **values)
        return story

    if mode == "fallback":
        return fallback(None)
    if client is None or unhealthy_reason:
        why = unhealthy_reason or "no LLM client was given"
        if mode == "llm":
            raise StoryError(f"story mode is llm but the LLM is not usable: {why}", 0)
        return fallback(f"LLM not healthy: {why}")
    started = time.monotonic()
    try:
        used = _resolve_model(client, model, health, deadline)
        story = llm_story(
            client,
            scene_count=scene_count,
            model=used,
            seed=seed,
            temperature=temperature,
            deadline=deadline,
            max_attempts=max_attempts,
        )
    except (StoryError, LLMError) as exc:
        if mode == "llm":
            if isinstance(exc, LLMError):
                raise StoryError(str(exc), 0) from None
            raise
        attempts = exc.attempts if isinstance(exc, StoryError) else 0
        return fallback(
            f"LLM story failed: {exc}",
            attempts=attempts,
            latency_s=round(time.monotonic() - started, 3),
            attempt_log=exc.attempt_log if isinstance(exc, StoryError) else [],
        )
    story["metadata"]["requested_mode"] = mode
    return story


# ---------------------------------------------------------------------------------------- keyframes
_PALETTE: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("night", "moon", "midnight", "dark"), (18, 24, 64)),
    (("dawn", "sunrise", "morning"), (250, 178, 130)),
    (("sunset", "golden", "dusk", "amber"), (245, 146, 60)),
    (("fog", "mist", "overcast", "haze"), (168, 178, 190)),
    (("snow", "ice", "glacier", "frost", "winter"), (205, 228, 246)),
    (("forest", "garden", "fern", "tree", "leaf"), (42, 112, 64)),
    (("sea", "harbour", "harbor", "ocean", "bay", "water", "canal", "river"), (32, 92, 140)),
    (("neon", "city", "tram", "street"), (196, 44, 162)),
    (("desert", "sand", "salt"), (214, 176, 106)),
    (("fire", "candle", "lantern", "ember", "lamp"), (238, 118, 40)),
    (("rain", "storm", "thunder"), (70, 80, 102)),
    (("sky", "blue"), (96, 150, 220)),
)


def _colour(digest: bytes, offset: int) -> tuple[int, int, int]:
    return (digest[offset % 32], digest[(offset + 1) % 32], digest[(offset + 2) % 32])


def _palette(prompt: str, digest: bytes) -> list[tuple[int, int, int]]:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    found = [colour for keys, colour in _PALETTE if words & set(keys)]
    while len(found) < 2:
        found.append(_colour(digest, 3 * len(found)))
    return found


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: Any) -> None:
    try:
        draw.text(xy, text, font=font, fill=fill)
    except (UnicodeEncodeError, UnicodeError, ValueError):  # a bitmap font without these glyphs
        draw.text(xy, text.encode("ascii", "replace").decode("ascii"), font=font, fill=fill)


def render_keyframe(scene: dict[str, Any], story_title: str, size: tuple[int, int]) -> Image.Image:
    """The keyframe image of one scene, a pure function of its text and ``size``."""
    width, height = size
    key = json.dumps(
        [scene["id"], scene["title"], scene["visual_prompt"], scene["motion_prompt"], story_title],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    top, bottom, *accents = _palette(scene["visual_prompt"], digest)
    gradient = Image.linear_gradient("L")
    gradient = gradient.rotate((digest[0] % 8) * 45, resample=Image.Resampling.BICUBIC, expand=False)
    gradient = gradient.resize((width, height), Image.Resampling.BICUBIC)
    image = ImageOps.colorize(gradient, black=top, white=bottom).convert("RGBA")

    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    shapes = 5 + digest[1] % 6
    for index in range(shapes):
        d = hashlib.sha256(digest + bytes([index])).digest()
        colour = accents[index % len(accents)] if accents and index % 3 == 0 else _colour(d, 4)
        fill = (*colour, 60 + d[7] % 120)
        x0 = d[8] * width // 256
        y0 = d[9] * height // 256
        extent = max(8, (min(width, height) * (20 + d[10] % 60)) // 200)
        kind = d[11] % 3
        if kind == 0:
            draw.ellipse((x0 - extent, y0 - extent, x0 + extent, y0 + extent), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + extent * 2, y0 + extent), fill=fill)
        else:
            draw.polygon(
                [(x0, y0 - extent), (x0 - extent, y0 + extent), (x0 + extent, y0 + extent)], fill=fill
            )
    # A horizon silhouette drawn from the prompt's words.
    ridge = [(0, height)]
    words = scene["visual_prompt"].split() or ["-"]
    steps = max(2, min(24, len(words)))
    for step in range(steps + 1):
        word = words[step % len(words)]
        rise = (sum(word.encode("utf-8")) % 97) / 97
        ridge.append((step * width // steps, int(height * (0.62 + 0.18 * rise))))
    ridge.append((width, height))
    draw.polygon(ridge, fill=(*_colour(digest, 20), 150))
    image = Image.alpha_composite(image, overlay)

    band = Image.new("RGBA", size, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    band_height = max(24, height // 5)
    band_draw.rectangle((0, height - band_height, width, height), fill=(0, 0, 0, 150))
    image = Image.alpha_composite(image, band)
    draw = ImageDraw.Draw(image)
    big = _font(max(10, band_height // 3))
    small = _font(max(8, band_height // 6))
    margin = max(4, width // 64)
    _draw_text(
        draw, (margin, height - band_height + margin // 2), f"{scene['id']}  {scene['title']}", big, "white"
    )
    line = textwrap.shorten(scene["visual_prompt"], width=max(20, width // 9), placeholder="...")
    _draw_text(draw, (margin, height - band_height // 3), line, small, (230, 230, 230))
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_keyframes(story: dict[str, Any], out_dir: Path, size: tuple[int, int] = (1024, 576)) -> list[Path]:
    """One PNG per scene, ``out_dir/scene-001.png`` …; the same story gives the same bytes."""
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f"keyframe size must be at least 16x16, not {width}x{height}")
    scenes = story.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise ValueError("the story has no scenes to draw")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        scene_id = scene.get("id") if isinstance(scene, dict) else None
        if not isinstance(scene_id, str) or not SCENE_ID.match(scene_id):
            raise ValueError(f"scene id {scene_id!r} is not of the form scene-001")
    title = str(story.get("title", ""))

    def draw(scene: dict[str, Any]) -> Path:
        path = out_dir / f"{scene['id']}.png"
        atomic_write_bytes(path, png_bytes(render_keyframe(scene, title, (width, height))))
        return path

    if len(scenes) == 1:
        return [draw(scenes[0])]
    # Pillow draws and encodes without the GIL: the scenes are drawn side by side, each the same
    # pure function of its text as one at a time (the same bytes).
    with ThreadPoolExecutor(max_workers=min(len(scenes), os.cpu_count() or 1)) as pool:
        return list(pool.map(draw, scenes))


__all__ = [
    "FORMS",
    "StoryError",
    "fallback_story",
    "llm_story",
    "make_story",
    "normalize_story",
    "parse_story_text",
    "render_keyframes",
    "request_schema",
    "response_format_for",
    "story_hash",
    "story_schema",
]
