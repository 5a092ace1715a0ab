"""The harness's story document: its schema, its hash, its metadata, and the error of the story stage."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from pytest_gemdirect.schemas_io import load_schema

SCENE_ID = re.compile(r"^scene-\d{3}$")
MAX_SCENES = 99


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


def story_schema() -> dict[str, Any]:
    """``schemas/story.schema.json`` (with metadata)."""
    return load_schema("story.schema.json")


def content_schema() -> dict[str, Any]:
    schema = story_schema()
    schema["properties"].pop("metadata", None)
    return schema


KEYFRAME_FIELDS = ("keyframe", "end_keyframe", "keyframe_source", "end_keyframe_source")
"""Scene fields the harness adds once it has the keyframes: not the story's words."""


def story_hash(story: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the story's words: without metadata and keyframe files."""
    content = {k: v for k, v in story.items() if k != "metadata"}
    if isinstance(story.get("scenes"), list):
        content["scenes"] = [
            {k: v for k, v in scene.items() if k not in KEYFRAME_FIELDS} if isinstance(scene, dict) else scene
            for scene in story["scenes"]
        ]
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_count(scene_count: int) -> None:
    if (
        isinstance(scene_count, bool)
        or not isinstance(scene_count, int)
        or not 1 <= scene_count <= MAX_SCENES
    ):
        raise ValueError(f"scene_count must be a whole number from 1 to {MAX_SCENES}, not {scene_count!r}")


def story_metadata(**values: Any) -> dict[str, Any]:
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
