"""Every setting as a triple (flag, ini key, environment variable), resolved once per run.

Lookup order: command-line flag, then ``GEMDIRECT_*`` environment variable, then the
``gemdirect_*`` ini key, then the default. A bad value stops the run at start-up with a
message naming the setting and where the value came from (pytest-timeout's pattern).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pytest_gemdirect.policy import POLICY_SETTINGS, PolicySetting
from pytest_gemdirect.sim.faults import FaultPlan


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
    parse: Callable[[str], Any]
    default: Any
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


def _policy_spec(setting: PolicySetting) -> SettingSpec:
    if setting.whole:
        parse = _positive_int if setting.minimum >= 1 else _non_negative_int
        return SettingSpec(setting.name, parse, setting.default, setting.help, metavar="N")
    return SettingSpec(setting.name, _positive_float, setting.default, setting.help, metavar="S")


SPECS: tuple[SettingSpec, ...] = (
    # services
    SettingSpec(
        "comfyui_url",
        _url,
        (),
        "attach to the ComfyUI server at this URL; repeat (or comma-separate) for a pool of servers",
        multi=True,
        commas_in_flag=True,
        metavar="URL",
    ),
    SettingSpec(
        "comfyui_gpus",
        _non_negative_int,
        (),
        "with --comfyui-dir: launch one ComfyUI per GPU index (--cuda-device), e.g. 0,1",
        multi=True,
        commas_in_flag=True,
        metavar="N,N",
    ),
    SettingSpec(
        "sim_servers",
        _positive_int,
        1,
        "embedded ComfyUI simulators to start (a pool of K servers, to try scaling anywhere)",
        metavar="K",
    ),
    SettingSpec(
        "comfyui_dir", _existing_dir, None, "launch ComfyUI's main.py from this install folder", metavar="DIR"
    ),
    SettingSpec(
        "comfyui_port", _port, None, "port for a launched ComfyUI (default: a free port)", metavar="PORT"
    ),
    SettingSpec(
        "comfyui_python", str, None, "Python that runs a launched ComfyUI (default: this one)", metavar="EXE"
    ),
    SettingSpec(
        "comfyui_args", str, "", 'extra arguments for a launched ComfyUI, e.g. "--lowvram"', metavar="ARGS"
    ),
    SettingSpec(
        "comfyui_boot_timeout",
        _positive_float,
        120.0,
        "seconds a launched ComfyUI may take to answer",
        metavar="S",
    ),
    SettingSpec(
        "llm_url", _url, None, "attach to the OpenAI-compatible LLM server at this URL", metavar="URL"
    ),
    SettingSpec(
        "llm_model", str, None, "LLM model id (default: the first one the server lists)", metavar="ID"
    ),
    SettingSpec(
        "llm_api_key",
        str,
        None,
        "bearer token for the LLM server (never written anywhere)",
        secret=True,
        metavar="KEY",
    ),
    SettingSpec(
        "max_response_mb",
        _positive_float,
        64.0,
        "megabytes any server's answer may have before it is refused",
        metavar="MB",
    ),
    SettingSpec("llm_timeout", _positive_float, 120.0, "seconds an LLM request may take", metavar="S"),
    SettingSpec("llm_seed", _whole, 42, "seed sent to the LLM and used by the fallback story", metavar="N"),
    SettingSpec("llm_temperature", _non_negative_float, 0.35, "temperature sent to the LLM", metavar="T"),
    SettingSpec(
        "require_real_backends",
        _bool,
        False,
        "fail the run when a service would be simulated (for GPU runs that must not pass on the simulator)",
        metavar="BOOL",
    ),
    SettingSpec(
        "sim_fault",
        str,
        (),
        "switch on a simulator fault: NAME or NAME@scene-002",
        multi=True,
        metavar="NAME",
    ),
    SettingSpec(
        "sim_step_seconds",
        _non_negative_float,
        0.01,
        "seconds per sampler step in the simulator",
        metavar="S",
    ),
    SettingSpec(
        "sim_keep_files",
        _bool,
        False,
        "keep the simulator's own input and output files in the run directory (simulator/)",
        metavar="BOOL",
    ),
    # story
    SettingSpec(
        "story_mode",
        _choice("auto", "llm", "fallback"),
        "auto",
        "where the story comes from",
        metavar="auto|llm|fallback",
    ),
    SettingSpec("scenes", _positive_int, 3, "number of scenes", metavar="N"),
    SettingSpec("keyframe_size", _size, (1024, 576), "keyframe size WIDTHxHEIGHT", metavar="WxH"),
    # run directory
    SettingSpec(
        "logs_dir", Path, Path("logs"), "folder that holds the timestamped run directories", metavar="DIR"
    ),
    SettingSpec("run_dir", Path, None, "exact run directory (overrides logs-dir/<timestamp>)", metavar="DIR"),
    SettingSpec(
        "keep_runs",
        _non_negative_int,
        20,
        "run directories the harness made under --logs-dir to keep, this one included; older ones are"
        " removed (0: keep all)",
        metavar="N",
    ),
    SettingSpec(
        "baseline",
        _existing_dir,
        None,
        "an earlier run directory to compare timings and VRAM with",
        metavar="RUN_DIR",
    ),
    SettingSpec(
        "workflow",
        _workflow_file,
        None,
        "API-format ComfyUI workflow file, or a shipped one by name: smoke, smoke_video, smoke_webm,"
        " svd_img2vid (the default)",
        metavar="FILE",
    ),
    SettingSpec(
        "keyframe_workflow",
        _workflow_file,
        None,
        "ComfyUI text-to-image workflow that draws the keyframes (default: the built-in renderer)",
        metavar="FILE",
    ),
    # video checks of each scene's frames (the defaults are the video library's: video/checks.py, drift.py)
    SettingSpec(
        "min_motion",
        _non_negative_float,
        0.5,
        "a scene whose motion (mean grey-level change between frames, 0-255) is below this is frozen"
        " (0: not checked)",
        metavar="X",
    ),
    SettingSpec(
        "black_level", _grey_level, 8, "a pixel at or below this grey level (0-255) is black", metavar="N"
    ),
    SettingSpec(
        "black_share",
        _share,
        0.99,
        "a frame is black when at least this share of its pixels is black",
        metavar="X",
    ),
    SettingSpec(
        "flat_std",
        _non_negative_float,
        2.0,
        "a frame is flat when the spread (standard deviation) of its grey levels is below this"
        " (0: not checked)",
        metavar="X",
    ),
    SettingSpec(
        "drift_tolerance",
        _positive_float,
        30.0,
        "with --baseline: a scene with a frame below this PSNR (dB) against the baseline's has drifted",
        metavar="DB",
    ),
    SettingSpec(
        "drift_fails",
        _bool,
        False,
        "with --baseline: drift beyond the tolerance fails the scene's frames (default: a warning)",
        metavar="BOOL",
    ),
    # queue policy (design §4): named once, in policy.py
    *(_policy_spec(p) for p in POLICY_SETTINGS),
    # external suites
    SettingSpec(
        "suites",
        str,
        (),
        "external suite NAME=COMMAND (or the preset 'vitest')",
        multi=True,
        flag_name="suite",
        metavar="NAME=COMMAND",
    ),
    SettingSpec(
        "suite_cwd", _existing_dir, None, "folder the suites run in (default: the rootdir)", metavar="DIR"
    ),
    SettingSpec("suite_timeout", _positive_float, 600.0, "seconds each external suite may take", metavar="S"),
)

SPECS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True)
class Settings:
    """The effective settings of one run, with where each value came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]  # "flag", "env GEMDIRECT_X", "ini gemdirect_x", "default"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def faults(self) -> FaultPlan:
        return FaultPlan.parse(self.values["sim_fault"])

    def public(self) -> dict[str, Any]:
        """JSON-friendly values with secrets redacted, for the summary, header and report."""
        shown: dict[str, Any] = {}
        for spec in SPECS:
            value = self.values[spec.name]
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


def _parse(spec: SettingSpec, raw: Any, source: str) -> Any:
    if spec.multi:
        items = raw if isinstance(raw, list | tuple) else str(raw).replace("\n", ",").split(",")
        if spec.commas_in_flag:
            items = [part for item in items for part in str(item).split(",")]
        return tuple(_parse_one(spec, str(item).strip(), source) for item in items if str(item).strip())
    if raw is None:
        return None
    return _parse_one(spec, raw, source) if isinstance(raw, str) else raw


def _parse_one(spec: SettingSpec, text: str, source: str) -> Any:
    """One value as the user typed it; the error quotes that value, never a Python list."""
    try:
        return spec.parse(text)
    except (ValueError, TypeError) as exc:
        shown = "***" if spec.secret else repr(text)
        raise SettingError(f"invalid value {shown} for {spec.name} ({source}): {exc}") from None


def resolve(
    flags: Mapping[str, Any],
    ini: Mapping[str, Any],
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
            values[spec.name], sources[spec.name] = spec.default, "default"
            continue
        values[spec.name] = _parse(spec, raw, source)
        sources[spec.name] = source
    settings = Settings(values, sources)
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    """Checks that need more than one value, or the fault names."""
    try:
        FaultPlan.parse(settings.values["sim_fault"])
    except ValueError as exc:
        raise SettingError(f"invalid value for sim_fault ({settings.sources['sim_fault']}): {exc}") from None
    if settings.comfyui_gpus and not settings.comfyui_dir:
        raise SettingError(
            f"comfyui_gpus ({settings.sources['comfyui_gpus']}) launches one ComfyUI per GPU from"
            " --comfyui-dir, which is not set"
        )
    if settings.sim_servers > 1 and (settings.comfyui_url or settings.comfyui_dir):
        raise SettingError(
            f"sim_servers ({settings.sources['sim_servers']}) starts simulators, but ComfyUI comes from"
            " --comfyui-url or --comfyui-dir; set only one"
        )
    if len(set(settings.comfyui_url)) != len(settings.comfyui_url):
        raise SettingError(f"comfyui_url ({settings.sources['comfyui_url']}) names a server twice")
    if settings.comfyui_url and settings.comfyui_dir:
        raise SettingError(
            f"comfyui_url ({settings.sources['comfyui_url']}) and"
            f" comfyui_dir ({settings.sources['comfyui_dir']}) both say where ComfyUI comes from;"
            " set only one"
        )
    if settings.history_poll_interval >= settings.scene_max_wait:
        raise SettingError(
            f"history_poll_interval ({settings.history_poll_interval:g} s,"
            f" {settings.sources['history_poll_interval']})"
            f" must be below scene_max_wait ({settings.scene_max_wait:g} s)"
        )


def describe_targets(settings: Settings) -> dict[str, str]:
    """Each service's target in words, for the terminal header (nothing is booted)."""
    if settings.comfyui_url:
        comfy = "attach " + ", ".join(settings.comfyui_url)
    elif settings.comfyui_dir:
        comfy = f"launch {settings.comfyui_dir} (main.py)"
    else:
        comfy = "embedded simulator (SIMULATED)"
    llm = f"attach {settings.llm_url}" if settings.llm_url else "embedded simulator (SIMULATED)"
    if settings.story_mode == "fallback" and not settings.llm_url:
        llm += ", story mode fallback"
    return {"comfyui": comfy, "llm": llm}


PATH_SETTINGS = (
    "comfyui_dir",
    "workflow",
    "keyframe_workflow",
    "run_dir",
    "logs_dir",
    "baseline",
    "suite_cwd",
)
"""Settings whose value is a path: written ``--flag PATH``, pytest may take PATH for a test path."""


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
            f"run_dir ({settings.sources['run_dir']}): {run_dir} is not empty (an earlier run?);"
            " a run never mixes its files with another's: name a new or empty folder"
        )


def _check_workflows(settings: Settings) -> None:
    for name in ("workflow", "keyframe_workflow"):
        path = settings.values[name]
        if path is None:
            continue
        from pytest_gemdirect.comfyui.workflow import WorkflowError, load_workflow

        try:
            load_workflow(path)
        except WorkflowError as exc:
            raise SettingError(f"invalid value for {name} ({settings.sources[name]}): {exc}") from None


def _check_fault_scenes(settings: Settings) -> None:
    scenes = {f"scene-{n:03d}" for n in range(1, settings.scenes + 1)}
    for fault in settings.faults.faults:
        if fault.scene is not None and fault.scene not in scenes:
            raise SettingError(
                f"invalid value for sim_fault ({settings.sources['sim_fault']}): {fault.spec()} names"
                f" {fault.scene}, but the run has {settings.scenes} scene(s) (scenes = {settings.scenes})"
            )


def _check_comfyui_args(settings: Settings) -> None:
    from pytest_gemdirect.cmdline import split_args

    try:
        split_args(settings.comfyui_args, what="--comfyui-args")
    except ValueError as exc:
        raise SettingError(
            f"invalid value {settings.comfyui_args!r} for comfyui_args"
            f" ({settings.sources['comfyui_args']}): {exc}"
        ) from None
