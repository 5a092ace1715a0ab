"""The story stage's work: the run's story of N scenes, and a keyframe (or two) for each.

- :mod:`.from_llm`: the LLM's story (structured output, stepping down form by form), or the
  deterministic :mod:`.fallback` story; :func:`make_story` picks between them by mode.
- :mod:`.story_file`: a story written by someone else (``--story``: the app's own shape or the
  harness's), and :mod:`.command` runs the app's generator (``--story-command``) to write one.
- :mod:`.keyframes`: the built-in renderer, one deterministic PNG per scene (a start and an end
  in bookend mode).
- :mod:`.schema`: the harness's story document (``schemas/story.schema.json``).

File-name parts from untrusted text (LLM titles) come from :func:`pytest_gemdirect.names.slug`.
Nothing here imports pytest.
"""

from __future__ import annotations

from pytest_gemdirect.story.fallback import fallback_story
from pytest_gemdirect.story.from_llm import (
    FORMS,
    MODES,
    llm_story,
    make_story,
    request_schema,
    response_format_for,
    story_prompt,
)
from pytest_gemdirect.story.keyframes import png_bytes, render_keyframe, render_keyframes
from pytest_gemdirect.story.parsing import escape_control_chars, normalize_story, parse_story_text
from pytest_gemdirect.story.schema import MAX_SCENES, SCENE_ID, StoryError, story_hash, story_schema

__all__ = [
    "FORMS",
    "MAX_SCENES",
    "MODES",
    "SCENE_ID",
    "StoryError",
    "escape_control_chars",
    "fallback_story",
    "llm_story",
    "make_story",
    "normalize_story",
    "parse_story_text",
    "png_bytes",
    "render_keyframe",
    "render_keyframes",
    "request_schema",
    "response_format_for",
    "story_hash",
    "story_prompt",
    "story_schema",
]
