"""The story from the LLM (structured output, stepping down form by form), or the fallback by mode.

:func:`llm_story` asks for structured output (``response_format`` ``json_schema``: the story
schema with the scene count pinned), stepping down to ``json_object`` and then a plain prompt
when the server rejects a form, parses leniently where that is safe, validates against
``schemas/story.schema.json``, renumbers scene ids, and retries a bounded number of times.
:func:`make_story` picks between it and :func:`fallback_story` by mode and records why in ``metadata``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pytest_gemdirect import net
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.llm import LLMClient, LLMError, pick_chat_model
from pytest_gemdirect.story.fallback import fallback_story
from pytest_gemdirect.story.parsing import normalize_story, parse_story_text
from pytest_gemdirect.story.schema import StoryError, check_count, content_schema, story_hash, story_metadata

FORMS: tuple[str, ...] = ("json_schema", "json_object", "plain")
MODES: tuple[str, ...] = ("auto", "llm", "fallback")
MAX_TOKENS_CAP = 32768
# Not worth a retry: nothing listens, no such host, a bad URL or model, or an answer over the size cap.
_FATAL_KINDS = (net.REFUSED, net.DNS, "invalid_url", "model_not_found", "no_models", "too_large")
_FORM_WORDS = re.compile(r"response_format|json_schema|json_object|\bschema\b|grammar", re.IGNORECASE)

SYSTEM_PROMPT = (
    "You write short visual stories for an image-to-video pipeline. Every scene becomes one still "
    "keyframe image and a few seconds of video. You answer with a single JSON object and nothing else."
)


def request_schema(scene_count: int) -> dict[str, Any]:
    """The schema sent as ``response_format.json_schema.schema``: the story without metadata,
    exactly ``scene_count`` scenes, every property required (strict mode), no length limits
    (large ``maxLength`` values blow up llama.cpp grammars; the answer is validated here anyway).
    A scene offers only what the LLM writes: the optional fields a story file or the harness
    fills in (negative prompt, keyframe files) are left out."""
    check_count(scene_count)
    schema = content_schema()
    for key in ("$schema", "$id", "title", "description"):
        schema.pop(key, None)
    schema["required"] = ["title", "logline", "scenes"]
    scenes = schema["properties"]["scenes"]
    scenes["minItems"] = scenes["maxItems"] = scene_count
    scene = scenes["items"]
    scene["properties"] = {name: scene["properties"][name] for name in scene["required"]}

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
    check_count(scene_count)
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
        story["metadata"] = story_metadata(
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
    check_count(scene_count)

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
        story["metadata"] = story_metadata(story_hash=story_hash(story), **values)
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
