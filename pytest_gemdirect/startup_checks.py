"""Start-up checks: what can be known before anything runs, checked at configure time.

They need more than the settings (the workflow loader, the command-line splitter, pytest's
rootdir), so they live above ``settings.py``: the run fails here, not at stage 4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from pytest_gemdirect.settings import PATH_SETTINGS, SPECS_BY_NAME, SettingError, Settings


def check_startup(
    settings: Settings,
    *,
    rootpath: Path,
    inipath: Path | None,
    args: Sequence[str] = (),
    invocation_dir: Path | None = None,
) -> None:
    """What can be known before anything runs, checked now: the run fails here, not at stage 4.

    Raises SettingError naming the setting, its source and the file or scene.
    """
    _check_path_flags_kept_their_root(args, rootpath, inipath, invocation_dir or Path.cwd())
    _check_run_dir_is_new(settings)
    _check_workflows(settings)
    _check_fault_scenes(settings)
    _check_comfyui_args(settings)
    _check_story_source(settings)
    _check_app_settings(settings)
    from pytest_gemdirect.appcontract.startup import check_app_contract

    check_app_contract(settings)


def _check_path_flags_kept_their_root(
    args: Sequence[str], rootpath: Path, inipath: Path | None, invocation_dir: Path
) -> None:
    """``--comfyui-dir ~/ComfyUI`` (with a space) lets pytest pick its rootdir and config there.

    pytest chooses them from the command line's paths before any plugin says which options take
    a value, so a path option written with a space looks like a test path to it. Such a value
    outside the folder pytest was started in, or holding the config file pytest chose, is refused.
    """
    flags = {SPECS_BY_NAME[name].flag for name in PATH_SETTINGS}
    started_in = invocation_dir.resolve()
    for flag, value in zip(args, args[1:], strict=False):
        path = Path(value).expanduser()
        if flag not in flags or not path.exists():
            continue
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        outside = folder != started_in and started_in not in folder.parents
        holds_config = inipath is not None and folder in (
            inipath.resolve().parent,
            *inipath.resolve().parents,
        )
        if outside or holds_config or folder == rootpath.resolve():
            where = f"config file {inipath}" if inipath is not None else f"rootdir {rootpath}"
            raise SettingError(
                f"{flag} {value}: written with a space, pytest took {value} for a test path when it"
                f" chose its {where}; write {flag}={value} instead"
            )


def _check_run_dir_is_new(settings: Settings) -> None:
    run_dir = settings.run_dir
    if run_dir is not None and Path(run_dir).is_dir() and any(Path(run_dir).iterdir()):
        raise SettingError(
            f"run_dir ({settings.source('run_dir')}): {run_dir} is not empty (an earlier run?);"
            " a run never mixes its files with another's: name a new or empty folder"
        )


def _check_workflows(settings: Settings) -> None:
    for name, path in (("workflow", settings.workflow), ("keyframe_workflow", settings.keyframe_workflow)):
        if path is None:
            continue
        from pytest_gemdirect.comfyui.workflow import WorkflowError, load_workflow

        try:
            load_workflow(path)
        except WorkflowError as exc:
            raise SettingError(f"invalid value for {name} ({settings.source(name)}): {exc}") from None


def _check_fault_scenes(settings: Settings) -> None:
    scenes = {f"scene-{n:03d}" for n in range(1, settings.scenes + 1)}
    for fault in settings.faults.faults:
        if fault.scene is not None and fault.scene not in scenes:
            raise SettingError(
                f"invalid value for sim_fault ({settings.source('sim_fault')}): {fault.spec()} names"
                f" {fault.scene}, but the run has {settings.scenes} scene(s) (scenes = {settings.scenes})"
            )


def _check_comfyui_args(settings: Settings) -> None:
    from pytest_gemdirect.cmdline import split_args

    try:
        split_args(settings.comfyui_args, what="--comfyui-args")
    except ValueError as exc:
        raise SettingError(
            f"invalid value {settings.comfyui_args!r} for comfyui_args"
            f" ({settings.source('comfyui_args')}): {exc}"
        ) from None


def with_files_read(settings: Settings) -> Settings:
    """The settings once the files they name are read: ``--story``'s scene count, ``--replay``'s
    trace folder. Done in every process at configure time (the scenes are collected from it).
    """
    return _with_trace_folder(_with_story_file(settings))


def _with_trace_folder(settings: Settings) -> Settings:
    """``--replay`` names a run directory, a trace folder or a folder of runs: its trace folder."""
    if settings.replay is None:
        return settings
    from pytest_gemdirect.replay.trace import TraceError, find_trace

    try:
        return dataclasses.replace(settings, replay=find_trace(settings.replay).resolve())
    except TraceError as exc:
        raise SettingError(f"invalid value for replay ({settings.sources['replay']}): {exc}") from None


def _with_story_file(settings: Settings) -> Settings:
    """With ``--story`` the file says how many scenes there are: the settings with that count."""
    if settings.story is None:
        return settings
    from pytest_gemdirect.story.story_file import StoryFileError, load_story_file

    sources = dict(settings.sources)
    try:
        count = load_story_file(settings.story).scene_count
    except StoryFileError as exc:
        raise SettingError(f"invalid value for story ({sources['story']}): {exc}") from None
    if sources["scenes"] != "default" and settings.scenes != count:
        sources["scenes"] = (
            f"from the story file {settings.story} ({count} scenes;"
            f" scenes = {settings.scenes} {sources['scenes']} is not used)"
        )
    else:
        sources["scenes"] = f"from the story file {settings.story}"
    return dataclasses.replace(settings, scenes=count, sources=sources)


def _check_story_source(settings: Settings) -> None:
    """One place the story comes from: a file, a generator, or the story mode (LLM or fallback)."""
    given = [name for name in ("story", "story_command") if getattr(settings, name) is not None]
    if settings.sources["story_mode"] != "default" and given:
        given.append("story_mode")
    if len(given) > 1:
        where = " and ".join(f"{name} ({settings.sources[name]})" for name in given)
        raise SettingError(f"{where} each say where the story comes from; set only one")
    if settings.story_command is not None:
        from pytest_gemdirect.story.command import story_command_argv

        try:
            story_command_argv(settings.story_command, Path("story.json"))
        except ValueError as exc:
            raise SettingError(
                f"invalid value {settings.story_command!r} for story_command"
                f" ({settings.sources['story_command']}): {exc}"
            ) from None


def _check_app_settings(settings: Settings) -> None:
    """The app's profiles the run uses: they exist, parse, and every role the run needs has a place."""
    names = ("app_settings", "video_profile", "image_profile", "keyframes")
    if not any(getattr(settings, name, None) for name in names):
        return
    from pytest_gemdirect.app_settings import AppSettingsError, run_graphs
    from pytest_gemdirect.comfyui.workflow import WorkflowError

    try:
        run_graphs(settings)
    except (AppSettingsError, WorkflowError) as exc:
        if settings.app_settings is None:
            raise SettingError(str(exc)) from None
        raise SettingError(f"app_settings ({settings.sources['app_settings']}): {exc}") from None
