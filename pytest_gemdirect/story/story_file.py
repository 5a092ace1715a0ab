"""A story someone else wrote (``--story``): the app's ``story/story.json`` or the harness's own shape.

The app's shape (``schemas/app-story.schema.json``: ``{storyId, logline, scenes: [{id, title,
prompt, keyframePath, negativePrompt, cameraMovement, …}], warnings, …}``) is mapped to the
harness's (``prompt`` -> ``visual_prompt``, ``cameraMovement`` -> ``motion_prompt``,
``negativePrompt`` -> ``negative_prompt``); the harness's own shape is read as it is. Scenes are
numbered ``scene-001`` … in file order (the file's own id is kept as ``source_id`` when it differs).

A scene's keyframe is the file its ``keyframePath`` names when that exists here (an absolute
Windows path from another machine does not, on Linux or macOS), else ``keyframes/<id>.png`` beside
the story file, else none (the stage draws one). In bookend mode the end keyframe is looked up the
same way (``endKeyframePath``, ``keyframes/<id>-end.png``).

A file that is neither shape raises :class:`StoryFileError` naming the file and the first field that
does not fit, so the run stops at start-up. Nothing here imports pytest.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.story.schema import content_schema
from pytest_gemdirect.text import visible

MAX_STORY_BYTES = 16 * 1024 * 1024
"""A story file larger than this is refused (a story of 99 scenes is a few hundred kilobytes)."""

SHAPES: tuple[str, ...] = ("app", "harness")
_APP_KEYS = frozenset({"storyId", "generatedAt", "directorsVision", "generator", "llm", "warnings"})
_APP_SCENE_KEYS = frozenset({"prompt", "keyframePath", "cameraMovement", "negativePrompt", "expectedFrames"})
_HARNESS_SCENE_KEYS = frozenset({"visual_prompt", "motion_prompt"})
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_REQUIRED = re.compile(r"^'(.+)' is a required property$")
DEFAULT_MOTION = "static camera"
"""The motion prompt of a scene whose file names no camera movement."""


class StoryFileError(ValueError):
    """A story file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class SourceKeyframe:
    """A scene's keyframe as the story file gives it: an image here, or why there is none."""

    path: Path | None  # an existing file; None: none given or found (the stage draws one)
    note: str  # where it was found, or why none was


@dataclass(frozen=True)
class StoryFile:
    """A story file read and mapped to the harness's shape (without metadata)."""

    path: Path
    shape: str  # "app" | "harness"
    document: dict[str, Any]
    keyframes: tuple[SourceKeyframe, ...]  # one a scene: the start keyframe
    end_keyframes: tuple[SourceKeyframe, ...]  # one a scene: the end keyframe (bookend mode)
    notes: tuple[str, ...]  # renumbered ids, the app's own warnings
    raw: bytes  # the file as it was read (kept as story/source-story.json)

    @property
    def scene_count(self) -> int:
        return len(self.document["scenes"])


def load_story_file(path: Path) -> StoryFile:
    """The story in ``path``, in whichever of the two shapes it is; StoryFileError when neither."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_STORY_BYTES:
            raise StoryFileError(
                f"story {path}: {size} bytes is more than a story file holds"
                f" (at most {MAX_STORY_BYTES // (1024 * 1024)} MB)"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise StoryFileError(f"story {path}: cannot be read: {exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise StoryFileError(f"story {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise StoryFileError(
            f"story {path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise StoryFileError(f"story {path}: the file holds a JSON {type(data).__name__}, not a story object")
    shape = story_shape(data)
    if shape == "app":
        app_schema = load_schema("app-story.schema.json")
        _check(path, data, app_schema, "the app's story shape (app-story.schema.json)")
        return _from_app(path, data, raw)
    schema = content_schema()
    schema["properties"]["metadata"] = {"type": "object"}  # an earlier run's story.json has its own
    _check(path, data, schema, "the harness's story shape (story.schema.json)")
    return _from_harness(path, data, raw)


def story_shape(data: Mapping[str, Any]) -> str:
    """``app`` or ``harness``: which shape a story object is written in (the app's when unclear)."""
    scenes = data.get("scenes")
    first = scenes[0] if isinstance(scenes, list) and scenes and isinstance(scenes[0], dict) else {}
    if _APP_KEYS & data.keys() or _APP_SCENE_KEYS & first.keys():
        return "app"
    if "title" in data or _HARNESS_SCENE_KEYS & first.keys():
        return "harness"
    return "app"


def _check(path: Path, data: dict[str, Any], schema: dict[str, Any], shape: str) -> None:
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if not errors:
        return
    first = min(errors, key=_document_order)
    where = [str(part) for part in first.absolute_path]
    missing = _REQUIRED.match(first.message) if first.validator == "required" else None
    if missing:
        field, problem = "/".join([*where, missing.group(1)]), "is missing"
    elif first.validator == "additionalProperties":
        field, problem = "/".join(where) or "(top)", visible(first.message, limit=200, one_line=True)
    else:
        field = "/".join(where) or "(top)"
        problem = f"does not fit: {visible(first.message, limit=200, one_line=True)}"
    raise StoryFileError(f"story {path}: read as {shape}, field {field} {problem}")


def _document_order(error: jsonschema.ValidationError) -> list[tuple[int, Any]]:
    """Where an error sits, as a key that sorts in document order (indices and names apart)."""
    return [(0, part) if isinstance(part, int) else (1, str(part)) for part in error.absolute_path]


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None


def _from_app(path: Path, data: dict[str, Any], raw: bytes) -> StoryFile:
    def scene(source: dict[str, Any], scene_id: str) -> dict[str, Any]:
        mapped: dict[str, Any] = {
            "id": scene_id,
            "title": _text(source.get("title")) or _short(_text(source.get("summary"))) or str(source["id"]),
            "visual_prompt": source["prompt"].strip(),
            "motion_prompt": _text(source.get("cameraMovement")) or DEFAULT_MOTION,
        }
        negative = _text(source.get("negativePrompt"))
        return {**mapped, "negative_prompt": negative} if negative else mapped

    title = _text(data.get("storyId")) or f"story from {path.name}"
    document: dict[str, Any] = {"title": _short(title, 200) or title}
    logline = _text(data.get("logline"))
    if logline:
        document["logline"] = logline[:1000]
    notes = [f"the story file says: {visible(w, limit=300)}" for w in data.get("warnings") or []]
    return _mapped(path, "app", data, raw, document, scene, ("keyframePath", "endKeyframePath"), notes)


def _from_harness(path: Path, data: dict[str, Any], raw: bytes) -> StoryFile:
    def scene(source: dict[str, Any], scene_id: str) -> dict[str, Any]:
        keep = ("title", "visual_prompt", "motion_prompt", "negative_prompt")
        return {"id": scene_id, **{key: source[key] for key in keep if key in source}}

    document: dict[str, Any] = {key: data[key] for key in ("title", "logline") if key in data}
    return _mapped(path, "harness", data, raw, document, scene, ("keyframe", "end_keyframe"), [])


def _mapped(
    path: Path,
    shape: str,
    data: dict[str, Any],
    raw: bytes,
    document: dict[str, Any],
    scene: Callable[[dict[str, Any], str], dict[str, Any]],
    keyframe_fields: tuple[str, str],
    notes: list[str],
) -> StoryFile:
    """Every scene mapped and numbered in file order, with its start and end keyframes looked up."""
    scenes: list[dict[str, Any]] = []
    starts: list[SourceKeyframe] = []
    ends: list[SourceKeyframe] = []
    start_field, end_field = keyframe_fields
    for index, source in enumerate(data["scenes"], start=1):
        scene_id, source_id = f"scene-{index:03d}", str(source["id"])
        mapped = scene(source, scene_id)
        if source_id != scene_id:
            mapped["source_id"] = source_id
        scenes.append(mapped)
        ids = (source_id, scene_id)
        starts.append(_keyframe(path, source.get(start_field), start_field, ids, ""))
        ends.append(_keyframe(path, source.get(end_field), end_field, ids, "-end"))
    renumbered = [s for s in scenes if "source_id" in s]
    if renumbered:
        shown = ", ".join(
            f"{visible(s['source_id'], limit=40, one_line=True)} -> {s['id']}" for s in renumbered[:5]
        )
        more = f" and {len(renumbered) - 5} more" if len(renumbered) > 5 else ""
        notes.append(f"scene ids renumbered in file order: {shown}{more}")
    document["scenes"] = scenes
    return StoryFile(path, shape, document, tuple(starts), tuple(ends), tuple(notes), raw)


def _short(text: str | None, limit: int = 80) -> str | None:
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def foreign_path(value: str, *, platform: str = sys.platform) -> bool:
    """An absolute Windows path (``C:\\…``, ``\\\\server\\…``) seen on another platform: never a file here."""
    return platform != "win32" and bool(_WINDOWS_ABSOLUTE.match(value))


def _keyframe(story_path: Path, named: Any, field: str, ids: tuple[str, str], suffix: str) -> SourceKeyframe:
    """The scene's keyframe: the path the file names, else ``keyframes/<id><suffix>.png`` beside it."""
    base = story_path.parent
    source_id, scene_id = ids
    why = ""
    if isinstance(named, str) and named.strip():
        shown = visible(named, limit=200, one_line=True)
        if foreign_path(named):
            why = f"{field} {shown} is a Windows path from another machine"
        else:
            candidate = Path(named)
            candidate = candidate if candidate.is_absolute() else base / candidate
            if _is_file(candidate):
                found = f"{field} {shown}"
                return SourceKeyframe(_image(story_path, candidate, scene_id, found), found)
            why = f"{field} {shown} does not exist"
    names = [source_id] if _SAFE_ID.match(source_id) and ".." not in source_id else []
    for name in dict.fromkeys([*names, scene_id]):
        beside = base / "keyframes" / f"{name}{suffix}.png"
        if _is_file(beside):
            found = f"keyframes/{name}{suffix}.png beside the story file"
            image = _image(story_path, beside, scene_id, found)
            return SourceKeyframe(image, f"{found} ({why})" if why else found)
    return SourceKeyframe(None, why or f"the story file names no {field}")


def _image(story_path: Path, path: Path, scene_id: str, named: str) -> Path:
    """``path`` when it is an image Pillow can read, else StoryFileError naming the scene and the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise StoryFileError(
            f"story {story_path}: {scene_id}'s keyframe {named} ({path}) is not an image: {exc}"
        ) from None
    return path


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name the platform cannot have (NUL, too long)
        return False


__all__ = [
    "DEFAULT_MOTION",
    "SHAPES",
    "SourceKeyframe",
    "StoryFile",
    "StoryFileError",
    "foreign_path",
    "load_story_file",
    "story_shape",
]
