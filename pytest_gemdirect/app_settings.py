"""The app's own settings file (``localGenSettings.json``, ``--app-settings``): its workflow profiles.

gemDirect1 keeps its ComfyUI graphs as profiles ``{ID: {id, label, workflowJson, mapping, metadata}}``,
``workflowJson`` an API-format graph serialised as a JSON string, ``mapping`` ``{"NODE:INPUT": role}``.
This module reads and checks that file and says which graphs a run queues (``run_graphs``): the
video graph and, when ComfyUI draws them, the keyframe graph, each with where its roles go. What
can be known from the files is checked at start-up; errors name the file, the profile, the node
and the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gemdirect.comfyui.roles import Place, RoleError, RolePlan, parse_mapping, plan_roles
from pytest_gemdirect.comfyui.workflow import (
    Workflow,
    WorkflowError,
    default_workflow_path,
    load_workflow,
    parse_workflow,
)

if TYPE_CHECKING:
    from pytest_gemdirect.settings import Settings

KEYFRAME_MODES = ("single", "bookend")
APP_IMAGE_PROFILE = "app"
"""``--image-profile=app``: the file's own ``imageWorkflowProfile``."""


class AppSettingsError(ValueError):
    """The app's settings file, or a profile the run uses, cannot be used; the message says where."""


@dataclass(frozen=True)
class Profile:
    """One workflow profile of the app's settings file, its graph parsed and its mapping checked."""

    id: str
    label: str
    workflow: Workflow
    mapping: dict[Place, str]
    metadata: dict[str, Any]
    source: str  # "localGenSettings.json profile wan-i2v", for messages


@dataclass(frozen=True)
class AppSettings:
    """What the harness reads of the app's settings file."""

    path: Path
    comfyui_url: str | None
    image_profile: str | None
    video_profile: str | None
    bookend_profile: str | None
    keyframe_mode: str | None
    profiles: dict[str, Profile]
    broken: dict[str, str]  # profile id -> why it cannot be used (an error only when a run uses it)

    def profile(self, profile_id: str, *, chosen_by: str) -> Profile:
        """The profile ``profile_id``; an unknown or broken one is an error listing the file's profiles."""
        if profile_id in self.broken:
            raise AppSettingsError(self.broken[profile_id])
        if profile_id not in self.profiles:
            known = ", ".join(sorted(self.profiles) + sorted(self.broken)) or "none"
            raise AppSettingsError(
                f"{self.path}: {chosen_by} names profile {profile_id!r}, which workflowProfiles lacks;"
                f" the file has: {known}"
            )
        return self.profiles[profile_id]


def load_app_settings(path: Path) -> AppSettings:
    """Read and check the app's settings file (read once per run: it is cached by path and mtime)."""
    path = Path(path).expanduser()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise AppSettingsError(f"app settings {path}: cannot be read: {exc}") from None
    return _load(str(path.resolve()), stamp, str(path))


@lru_cache(maxsize=4)
def _load(resolved: str, _stamp: int, shown: str) -> AppSettings:
    path = Path(shown)
    try:
        data = json.loads(Path(resolved).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AppSettingsError(f"app settings {path}: cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AppSettingsError(f"app settings {path}: expected a JSON object (localGenSettings.json)")
    raw_profiles = data.get("workflowProfiles", {})
    if not isinstance(raw_profiles, dict):
        raise AppSettingsError(f"app settings {path}: workflowProfiles must be an object {{ID: profile}}")
    mode = data.get("keyframeMode")
    if mode is not None and mode not in KEYFRAME_MODES:
        raise AppSettingsError(
            f"app settings {path}: keyframeMode is {mode!r}; expected one of {', '.join(KEYFRAME_MODES)}"
        )
    profiles: dict[str, Profile] = {}
    broken: dict[str, str] = {}
    for profile_id, raw in raw_profiles.items():
        try:
            profiles[str(profile_id)] = _profile(path, str(profile_id), raw)
        except (AppSettingsError, WorkflowError, RoleError) as exc:
            broken[str(profile_id)] = str(exc)
    return AppSettings(
        path=path,
        comfyui_url=_text(data.get("comfyUIUrl")),
        image_profile=_text(data.get("imageWorkflowProfile")),
        video_profile=_text(data.get("videoWorkflowProfile")),
        bookend_profile=_text(data.get("sceneBookendWorkflowProfile")),
        keyframe_mode=mode,
        profiles=profiles,
        broken=broken,
    )


def _profile(path: Path, profile_id: str, raw: Any) -> Profile:
    source = f"{path} profile {profile_id}"
    if not isinstance(raw, dict):
        raise AppSettingsError(f"{source}: expected an object {{id, label, workflowJson, mapping}}")
    text = raw.get("workflowJson")
    if isinstance(text, str):
        if not text.strip():
            raise AppSettingsError(f"{source}: workflowJson is empty")
        try:
            graph = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AppSettingsError(f"{source}: workflowJson is not JSON: {exc}") from None
    elif isinstance(text, dict):  # the graph itself rather than its serialisation: take it as it is
        graph = text
    else:
        raise AppSettingsError(f"{source}: workflowJson must be the API-format graph as a JSON string")
    workflow = parse_workflow(graph, source=source)
    mapping = parse_mapping(raw.get("mapping"), workflow, source=source)
    metadata = raw.get("metadata")
    return Profile(
        id=profile_id,
        label=str(raw.get("label") or profile_id),
        workflow=workflow,
        mapping=mapping,
        metadata=metadata if isinstance(metadata, dict) else {},
        source=source,
    )


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# --- the graphs a run queues --------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """A workflow the run queues: the graph, where it came from, and where each role goes."""

    workflow: Workflow
    source: str  # "workflow FILE" or "FILE profile ID", for messages
    plan: RolePlan
    path: Path | None = None  # the workflow file, when it is one
    profile_id: str | None = None

    @property
    def shown(self) -> str:
        """The summary's name for it: the file, or ``profile ID (FILE)``."""
        if self.profile_id is not None:
            return f"profile {self.profile_id} ({self.source.rsplit(' profile ', 1)[0]})"
        return str(self.path)


@dataclass(frozen=True)
class RunGraphs:
    """The video graph and the keyframe graph (None: the built-in renderer draws) of one run."""

    video: Graph
    keyframe: Graph | None
    keyframe_mode: str
    notes: tuple[str, ...]


def app_settings_of(settings: Settings) -> AppSettings | None:
    """The run's app settings file, read (None without ``--app-settings``)."""
    path = settings.app_settings
    return load_app_settings(path) if path is not None else None


def keyframe_mode(settings: Settings) -> str:
    """``--keyframes``, else the app's ``keyframeMode``, else single."""
    chosen = settings.keyframes
    if chosen:
        return str(chosen)
    app = app_settings_of(settings)
    return app.keyframe_mode if app is not None and app.keyframe_mode else "single"


def run_graphs(settings: Settings) -> RunGraphs:
    """Which graphs this run queues and where each role goes; raises AppSettingsError, WorkflowError."""
    app = app_settings_of(settings)
    for name in ("video_profile", "image_profile"):
        if getattr(settings, name) and app is None:
            raise AppSettingsError(
                f"{name} ({settings.sources[name]}) names a profile of the app's settings file,"
                " but --app-settings is not set"
            )
    mode = keyframe_mode(settings)
    video = _video_graph(settings, app, mode)
    keyframe = _keyframe_graph(settings, app)
    notes = [*video.plan.notes, *(keyframe.plan.notes if keyframe else ())]
    return RunGraphs(video, keyframe, mode, tuple(notes))


def _video_graph(settings: Settings, app: AppSettings | None, mode: str) -> Graph:
    bookend = mode == "bookend"
    path = settings.workflow
    if path is not None or app is None:
        path = Path(path or default_workflow_path())
        return _one_image_graph_in_bookend(load_workflow(path), f"workflow {path}", bookend, path)
    chosen = settings.video_profile
    if chosen:
        by = f"video_profile ({settings.sources['video_profile']})"
    elif bookend and app.bookend_profile:
        chosen, by = app.bookend_profile, "sceneBookendWorkflowProfile (keyframeMode bookend)"
    elif app.video_profile:
        chosen, by = app.video_profile, "videoWorkflowProfile"
    else:
        raise AppSettingsError(
            f"{app.path}: names no videoWorkflowProfile; choose one with --video-profile=ID"
            f" (the file has: {', '.join(sorted(app.profiles)) or 'none'})"
        )
    profile = app.profile(chosen, chosen_by=by)
    return _planned(profile.workflow, profile.mapping, profile.source, bookend, profile_id=profile.id)


def _keyframe_graph(settings: Settings, app: AppSettings | None) -> Graph | None:
    path = settings.keyframe_workflow
    if path is not None:
        path = Path(path)
        return _planned(load_workflow(path), {}, f"keyframe workflow {path}", False, path=path, image=True)
    chosen = settings.image_profile
    if not chosen or app is None:
        return None
    by = f"image_profile ({settings.sources['image_profile']})"
    if chosen == APP_IMAGE_PROFILE:
        if app.image_profile is None:
            raise AppSettingsError(f"{app.path}: {by} asks for imageWorkflowProfile; the file names none")
        chosen, by = app.image_profile, f"imageWorkflowProfile (asked for by {by})"
    profile = app.profile(chosen, chosen_by=by)
    return _planned(
        profile.workflow, profile.mapping, profile.source, False, profile_id=profile.id, image=True
    )


def _one_image_graph_in_bookend(workflow: Workflow, source: str, bookend: bool, path: Path) -> Graph:
    """A plain workflow file that takes one keyframe still runs in bookend mode, on the start keyframe.

    The end keyframes are drawn and shown; the note says they are not queued. (A profile of the app's
    is held to its roles: one that cannot take both keyframes is an error.)
    """
    try:
        return _planned(workflow, {}, source, bookend, path=path)
    except AppSettingsError as exc:
        if not bookend:
            raise
        single = _planned(workflow, {}, source, False, path=path)
        note = (
            f"{source}: bookend mode, but the graph takes one keyframe ({exc}); it gets the start"
            " keyframe, the end keyframes are drawn and shown but not queued"
        )
        return Graph(
            single.workflow, source, replace(single.plan, notes=(*single.plan.notes, note)), path=path
        )


def _planned(
    workflow: Workflow,
    mapping: dict[Place, str],
    source: str,
    bookend: bool,
    *,
    path: Path | None = None,
    profile_id: str | None = None,
    image: bool = False,
) -> Graph:
    """The graph with its role plan; a role the run needs and cannot place is an error naming the graph."""
    try:
        if image:  # a text-to-image graph takes the prompt, no keyframe
            plan = RolePlan(
                prompt=tuple(p for p, r in mapping.items() if r == "human_readable_prompt"),
                negative=tuple(p for p, r in mapping.items() if r == "negative_prompt"),
                notes=tuple(
                    f"{source}: role {r} ({n}:{i}) is not filled when drawing keyframes;"
                    " the graph's value stays"
                    for (n, i), r in mapping.items()
                    if r not in ("human_readable_prompt", "negative_prompt")
                ),
            )
        else:
            plan = plan_roles(workflow, mapping, bookend=bookend, source=source)
    except RoleError as exc:
        raise AppSettingsError(str(exc)) from None
    return Graph(workflow, source, plan, path=path, profile_id=profile_id)
