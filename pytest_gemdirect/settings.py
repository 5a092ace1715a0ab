"""Every setting as a typed field of :class:`Settings`, resolved once per run.

Each field carries its spec (``setting(...)``): the flag, ini key and environment variable are
named after the field, so adding a setting is one field here plus the code that reads it. Lookup
order: command-line flag, then ``GEMDIRECT_*`` environment variable, then the ``gemdirect_*`` ini
key, then the default. A bad value stops the run at start-up with a message naming the setting
and where the value came from (pytest-timeout's pattern). This module imports nothing of the
harness but the policy and the fault vocabulary (both leaves): start-up checks that need the
workflow loader live in ``startup_checks.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pytest_gemdirect.policy import QueuePolicy
from pytest_gemdirect.sim.faults import FaultPlan

T = TypeVar("T")


class SettingError(ValueError):
    """An invalid setting value; the message names the setting and its source."""


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number, e.g. 3") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number, e.g. 2.5") from None


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise ValueError("must be a number above 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise ValueError("must be a number of at least 0")
    return value


def _grey_level(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= 255:
        raise ValueError("must be a grey level from 0 to 255")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise ValueError("must be a share above 0 and at most 1 (0.99 is 99 %)")
    return value


def _url(text: str) -> str:
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8188")
    return text.rstrip("/")


def _port(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number from 1 to 65535")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


SHIPPED_WORKFLOWS = ("smoke", "smoke_video", "smoke_webm", "svd_img2vid", "keyframe_txt2img")
"""Workflows that ship inside the package, named without a folder (``--workflow smoke``)."""


def _workflow_file(text: str) -> Path:
    """A workflow file, or the short name of a shipped one (``smoke``, ``svd_img2vid``…)."""
    name = text.removesuffix(".json")
    if name in SHIPPED_WORKFLOWS and not Path(text).is_file():
        from importlib import resources

        return Path(str(resources.files("pytest_gemdirect.workflows").joinpath(f"{name}.json")))
    try:
        return _existing_file(text)
    except ValueError as exc:
        raise ValueError(f"{exc} (or name a shipped workflow: {', '.join(SHIPPED_WORKFLOWS)})") from None


def _existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"no such folder: {path}")
    return path


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep:
        raise ValueError("must look like 1024x576")
    try:
        w, h = int(width), int(height)
    except ValueError:
        raise ValueError("must look like 1024x576") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise ValueError("width and height must be between 16 and 8192")
    return (w, h)


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its flag, ini key, environment variable, parser and default."""

    name: str
    parse: Callable[[str], object]
    default: object
    help: str
    multi: bool = False  # repeatable flag, comma-separated env var, one-per-line ini
    commas_in_flag: bool = False  # a multi flag's value may list several too (--comfyui-gpus=0,1)
    secret: bool = False  # never shown in the header, the summary or the report
    metavar: str | None = None
    flag_name: str | None = None  # a repeatable flag reads better singular: --suite, ini gemdirect_suites

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name).replace("_", "-")

    @property
    def shown_default(self) -> str | None:
        """The default as a user would type it (None when there is none to show)."""
        if self.default in (None, (), "") or self.secret:
            return None
        if isinstance(self.default, tuple):
            return "x".join(map(str, self.default))
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    @property
    def ini(self) -> str:
        return "gemdirect_" + self.name

    @property
    def env(self) -> str:
        return "GEMDIRECT_" + self.name.upper()


_SPEC = "gemdirect_spec"
"""The metadata key under which a field of :class:`Settings` carries its spec (less its name)."""


def setting(
    parse: Callable[[str], T],
    default: T,
    help: str,
    *,
    metavar: str,
    secret: bool = False,
) -> T:
    """A field of :class:`Settings` that is a setting: one value, typed as ``parse`` returns."""
    spec = SettingSpec("", parse, default, help, secret=secret, metavar=metavar)
    return field(default=default, metadata={_SPEC: spec})


def repeated(
    parse: Callable[[str], T],
    help: str,
    *,
    metavar: str,
    commas_in_flag: bool = False,
    flag_name: str | None = None,
) -> tuple[T, ...]:
    """A repeatable setting (flag given again, comma-separated env var, one-per-line ini)."""
    spec = SettingSpec(
        "", parse, (), help, multi=True, commas_in_flag=commas_in_flag, metavar=metavar, flag_name=flag_name
    )
    empty: tuple[T, ...] = ()
    return field(default=empty, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Settings:
    """The effective settings of one run (one typed field a setting), with where each came from."""

    # services
    comfyui_url: tuple[str, ...] = repeated(
        _url,
        "attach to the ComfyUI server at this URL; repeat (or comma-separate) for a pool of servers",
        commas_in_flag=True,
        metavar="URL",
    )
    comfyui_gpus: tuple[int, ...] = repeated(
        _non_negative_int,
        "with --comfyui-dir: launch one ComfyUI per GPU index (--cuda-device), e.g. 0,1",
        commas_in_flag=True,
        metavar="N,N",
    )
    sim_servers: int = setting(
        _positive_int,
        1,
        "embedded ComfyUI simulators to start (a pool of K servers, to try scaling anywhere)",
        metavar="K",
    )
    comfyui_dir: Path | None = setting(
        _existing_dir, None, "launch ComfyUI's main.py from this install folder", metavar="DIR"
    )
    comfyui_port: int | None = setting(
        _port, None, "port for a launched ComfyUI (default: a free port)", metavar="PORT"
    )
    comfyui_python: str | None = setting(
        str, None, "Python that runs a launched ComfyUI (default: this one)", metavar="EXE"
    )
    comfyui_args: str = setting(
        str, "", 'extra arguments for a launched ComfyUI, e.g. "--lowvram"', metavar="ARGS"
    )
    comfyui_boot_timeout: float = setting(
        _positive_float, 120.0, "seconds a launched ComfyUI may take to answer", metavar="S"
    )
    llm_url: str | None = setting(
        _url, None, "attach to the OpenAI-compatible LLM server at this URL", metavar="URL"
    )
    llm_model: str | None = setting(
        str, None, "LLM model id (default: the first one the server lists)", metavar="ID"
    )
    llm_api_key: str | None = setting(
        str, None, "bearer token for the LLM server (never written anywhere)", secret=True, metavar="KEY"
    )
    max_response_mb: float = setting(
        _positive_float, 64.0, "megabytes any server's answer may have before it is refused", metavar="MB"
    )
    llm_timeout: float = setting(_positive_float, 120.0, "seconds an LLM request may take", metavar="S")
    llm_seed: int = setting(_whole, 42, "seed sent to the LLM and used by the fallback story", metavar="N")
    llm_temperature: float = setting(_non_negative_float, 0.35, "temperature sent to the LLM", metavar="T")
    require_real_backends: bool = setting(
        _bool,
        False,
        "fail the run when a service would be simulated (for GPU runs that must not pass on the simulator)",
        metavar="BOOL",
    )
    sim_fault: tuple[str, ...] = repeated(
        str, "switch on a simulator fault: NAME or NAME@scene-002", metavar="NAME"
    )
    sim_step_seconds: float = setting(
        _non_negative_float, 0.01, "seconds per sampler step in the simulator", metavar="S"
    )
    sim_keep_files: bool = setting(
        _bool,
        False,
        "keep the simulator's own input and output files in the run directory (simulator/)",
        metavar="BOOL",
    )
    # record and replay (replay/)
    record: bool = setting(
        _bool,
        True,
        "record every exchange with ComfyUI and the LLM into trace/ in the run directory",
        metavar="BOOL",
    )
    replay: Path | None = setting(
        _existing_dir,
        None,
        "serve this recorded run (its run directory or trace folder) in place of ComfyUI and the LLM",
        metavar="RUN_DIR",
    )
    replay_speed: float = setting(
        _non_negative_float,
        1.0,
        "with --replay: the recorded pace times this (0: as fast as possible)",
        metavar="X",
    )
    # story
    story_mode: str = setting(
        _choice("auto", "llm", "fallback"), "auto", "where the story comes from", metavar="auto|llm|fallback"
    )
    story: Path | None = setting(
        _existing_file,
        None,
        "a story file to use instead of writing one: the app's story/story.json or the harness's"
        " own shape (the scene count comes from it)",
        metavar="FILE",
    )
    story_command: str | None = setting(
        str,
        None,
        "the app's story generator, run without a shell; {out} is the file it writes, e.g."
        ' "npx tsx scripts/generate-story-scenes.ts --out {out}"',
        metavar="COMMAND",
    )
    story_command_timeout: float = setting(
        _positive_float, 300.0, "seconds the story command may take", metavar="S"
    )
    scenes: int = setting(_positive_int, 3, "number of scenes (with --story: the file's)", metavar="N")
    keyframe_size: tuple[int, int] = setting(_size, (1024, 576), "keyframe size WIDTHxHEIGHT", metavar="WxH")
    keyframes: str | None = setting(
        _choice("single", "bookend"),
        None,
        "keyframes a scene: single (one, the video's start) or bookend (a start and an end keyframe)"
        " (default: single)",
        metavar="single|bookend",
    )
    # run directory
    logs_dir: Path = setting(
        Path, Path("logs"), "folder that holds the timestamped run directories", metavar="DIR"
    )
    run_dir: Path | None = setting(
        Path, None, "exact run directory (overrides logs-dir/<timestamp>)", metavar="DIR"
    )
    keep_runs: int = setting(
        _non_negative_int,
        20,
        "run directories the harness made under --logs-dir to keep, this one included; older ones are"
        " removed (0: keep all)",
        metavar="N",
    )
    baseline: Path | None = setting(
        _existing_dir, None, "an earlier run directory to compare timings and VRAM with", metavar="RUN_DIR"
    )
    workflow: Path | None = setting(
        _workflow_file,
        None,
        "API-format ComfyUI workflow file, or a shipped one by name: smoke, smoke_video, smoke_webm,"
        " svd_img2vid (the default)",
        metavar="FILE",
    )
    keyframe_workflow: Path | None = setting(
        _workflow_file,
        None,
        "ComfyUI text-to-image workflow that draws the keyframes (default: the built-in renderer)",
        metavar="FILE",
    )
    app_settings: Path | None = setting(
        _existing_file,
        None,
        "the app's settings file (localGenSettings.json): its workflow profiles give the graphs",
        metavar="FILE",
    )
    video_profile: str | None = setting(
        str,
        None,
        "with --app-settings: the video profile to run (default: the file's videoWorkflowProfile,"
        " or sceneBookendWorkflowProfile in bookend mode)",
        metavar="ID",
    )
    image_profile: str | None = setting(
        str,
        None,
        "with --app-settings: draw the keyframes on ComfyUI with this profile ('app': the file's"
        " imageWorkflowProfile)",
        metavar="ID",
    )
    # video checks of each scene's frames (the defaults are the video library's: video/checks.py, drift.py)
    min_motion: float = setting(
        _non_negative_float,
        0.5,
        "a scene whose motion (mean grey-level change between frames, 0-255) is below this is frozen"
        " (0: not checked)",
        metavar="X",
    )
    black_level: int = setting(
        _grey_level, 8, "a pixel at or below this grey level (0-255) is black", metavar="N"
    )
    black_share: float = setting(
        _share, 0.99, "a frame is black when at least this share of its pixels is black", metavar="X"
    )
    flat_std: float = setting(
        _non_negative_float,
        2.0,
        "a frame is flat when the spread (standard deviation) of its grey levels is below this"
        " (0: not checked)",
        metavar="X",
    )
    drift_tolerance: float = setting(
        _positive_float,
        30.0,
        "with --baseline: a scene with a frame below this PSNR (dB) against the baseline's has drifted",
        metavar="DB",
    )
    drift_fails: bool = setting(
        _bool,
        False,
        "with --baseline: drift beyond the tolerance fails the scene's frames (default: a warning)",
        metavar="BOOL",
    )
    # queue policy (design §4): these names are policy.POLICY_NAMES, and the fields of QueuePolicy
    max_scene_retries: int = setting(
        _non_negative_int, 1, "re-queues of a scene after a failed attempt", metavar="N"
    )
    scene_max_wait: float = setting(
        _positive_float, 180.0, "seconds for a whole attempt, queue to frames", metavar="S"
    )
    history_poll_interval: float = setting(
        _positive_float, 2.0, "seconds between /history polls", metavar="S"
    )
    history_max_attempts: int = setting(_positive_int, 30, "/history polls before giving up", metavar="N")
    completion_grace: float = setting(
        _positive_float, 30.0, "seconds after completion until outputs must be in history", metavar="S"
    )
    ws_idle_timeout: float = setting(
        _positive_float, 15.0, "seconds of WebSocket silence before polling", metavar="S"
    )
    # external suites
    suites: tuple[str, ...] = repeated(
        str, "external suite NAME=COMMAND (or the preset 'vitest')", flag_name="suite", metavar="NAME=COMMAND"
    )
    suite_cwd: Path | None = setting(
        _existing_dir, None, "folder the suites run in (default: the rootdir)", metavar="DIR"
    )
    suite_timeout: float = setting(
        _positive_float, 600.0, "seconds each external suite may take", metavar="S"
    )
    # the app's run contract (appcontract/): artifact-metadata.json, its lines in run-summary.txt
    app_contract: bool = setting(
        _bool,
        True,
        "also write the app's run contract (artifact-metadata.json, its run-summary.txt lines,"
        " vitest-results.json)",
        metavar="BOOL",
    )
    publish_latest: Path | None = setting(
        _existing_dir,
        None,
        "at the end of the run copy artifact-metadata.json to APP_DIR/public/artifacts/latest-run.json",
        metavar="APP_DIR",
    )

    # not settings: where each value came from, and what is built from them once
    sources: Mapping[str, str] = field(default_factory=dict)  # "from --x", "from GEMDIRECT_X", "default"
    faults: FaultPlan = field(init=False, repr=False, compare=False)
    policy: QueuePolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            faults = FaultPlan.parse(self.sim_fault)
        except ValueError as exc:
            raise SettingError(f"invalid value for sim_fault ({self.source('sim_fault')}): {exc}") from None
        object.__setattr__(self, "faults", faults)
        policy = QueuePolicy(
            max_scene_retries=self.max_scene_retries,
            scene_max_wait=self.scene_max_wait,
            history_poll_interval=self.history_poll_interval,
            history_max_attempts=self.history_max_attempts,
            completion_grace=self.completion_grace,
            ws_idle_timeout=self.ws_idle_timeout,
        )
        object.__setattr__(self, "policy", policy)

    def source(self, name: str) -> str:
        """Where the setting's value came from, in words (``from --scenes``, ``default``)."""
        return self.sources.get(name, "default")

    def public(self) -> dict[str, Any]:
        """JSON-friendly values with secrets redacted, for the summary, header and report."""
        shown: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            if spec.secret and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple) and spec.name == "keyframe_size":
                value = f"{value[0]}x{value[1]}"
            elif isinstance(value, tuple):
                value = list(value)
            shown[spec.name] = value
        return shown


SPECS: tuple[SettingSpec, ...] = tuple(
    replace(f.metadata[_SPEC], name=f.name) for f in fields(Settings) if _SPEC in f.metadata
)
"""Every setting's spec, in the order of the fields (the order of the header and the report)."""

SPECS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SPECS}


def _parse(spec: SettingSpec, raw: object, source: str) -> object:
    if spec.multi:
        items = raw if isinstance(raw, list | tuple) else str(raw).replace("\n", ",").split(",")
        if spec.commas_in_flag:
            items = [part for item in items for part in str(item).split(",")]
        return tuple(_parse_one(spec, str(item).strip(), source) for item in items if str(item).strip())
    if raw is None:
        return None
    return _parse_one(spec, raw, source) if isinstance(raw, str) else raw


def _parse_one(spec: SettingSpec, text: str, source: str) -> object:
    """One value as the user typed it; the error quotes that value, never a Python list."""
    try:
        return spec.parse(text)
    except (ValueError, TypeError) as exc:
        shown = "***" if spec.secret else repr(text)
        raise SettingError(f"invalid value {shown} for {spec.name} ({source}): {exc}") from None


def resolve(
    flags: Mapping[str, object],
    ini: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting: flag > environment > ini > default.

    ``flags`` and ``ini`` map setting names to raw values (None or empty when unset).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        flag_value = flags.get(spec.name)
        env_value = environ.get(spec.env)
        ini_value = ini.get(spec.name)
        if flag_value not in (None, [], ()):
            raw, source = flag_value, f"from {spec.flag}"
        elif env_value not in (None, ""):
            raw, source = env_value, f"from {spec.env}"
        elif ini_value not in (None, "", []):
            raw, source = ini_value, f"from ini {spec.ini}"
        else:
            sources[spec.name] = "default"
            continue
        values[spec.name] = _parse(spec, raw, source)
        sources[spec.name] = source
    settings = Settings(sources=sources, **values)
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    """Checks that need more than one value."""
    source = settings.source
    if settings.comfyui_gpus and not settings.comfyui_dir:
        raise SettingError(
            f"comfyui_gpus ({source('comfyui_gpus')}) launches one ComfyUI per GPU from"
            " --comfyui-dir, which is not set"
        )
    if settings.sim_servers > 1 and (settings.comfyui_url or settings.comfyui_dir):
        raise SettingError(
            f"sim_servers ({source('sim_servers')}) starts simulators, but ComfyUI comes from"
            " --comfyui-url or --comfyui-dir; set only one"
        )
    if settings.replay is not None:
        _check_replay_alone(settings)
    if len(set(settings.comfyui_url)) != len(settings.comfyui_url):
        raise SettingError(f"comfyui_url ({source('comfyui_url')}) names a server twice")
    if settings.comfyui_url and settings.comfyui_dir:
        raise SettingError(
            f"comfyui_url ({source('comfyui_url')}) and"
            f" comfyui_dir ({source('comfyui_dir')}) both say where ComfyUI comes from;"
            " set only one"
        )
    if settings.history_poll_interval >= settings.scene_max_wait:
        raise SettingError(
            f"history_poll_interval ({settings.history_poll_interval:g} s,"
            f" {source('history_poll_interval')})"
            f" must be below scene_max_wait ({settings.scene_max_wait:g} s)"
        )


def _check_replay_alone(settings: Settings) -> None:
    """A replay is where both servers come from: another target for either is a contradiction."""
    for name in ("comfyui_url", "comfyui_dir", "llm_url"):
        if getattr(settings, name):
            raise SettingError(
                f"replay ({settings.sources['replay']}) serves the recording in place of the servers,"
                f" but {name} ({settings.sources[name]}) names one; set only one"
            )


PATH_SETTINGS = (
    "comfyui_dir",
    "app_settings",
    "story",
    "replay",
    "workflow",
    "app_settings",
    "keyframe_workflow",
    "story",
    "run_dir",
    "logs_dir",
    "baseline",
    "suite_cwd",
    "publish_latest",
)
"""Settings whose value is a path: written ``--flag PATH``, pytest may take PATH for a test path."""
