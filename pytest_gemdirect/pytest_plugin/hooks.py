"""pytest wiring for pytest-gemdirect: options, markers, fixtures.

The plugin loads in every pytest run of the environment, so this module only wires: the run
(run.py) and its parts for the terminal, pytest-timeout and pytest-xdist are registered once
pipeline tests are collected. A run without them shows nothing, creates nothing and costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pytest_gemdirect.catalogue import BY_NAME, STAGES, order_of
from pytest_gemdirect.pipeline_tests import is_pipeline_item
from pytest_gemdirect.settings import SPECS, SettingError, Settings, resolve
from pytest_gemdirect.startup_checks import check_startup, with_files_read

if TYPE_CHECKING:
    from pytest_gemdirect.pytest_plugin.run import Run
    from pytest_gemdirect.stages import ComfyUIService, Generation, SceneFrames, Stages, Story

SETTINGS_KEY = pytest.StashKey["Settings"]()
RUN_KEY = pytest.StashKey["Run"]()
MARKERS = {"e2e": "the end-to-end pipeline (all eight stages)"} | {
    stage.marker: f"pipeline stage: {stage.title}" for stage in STAGES
}
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gemdirect", "gemdirect end-to-end pipeline")
    for spec in SPECS:
        extra: dict[str, Any] = {"action": "append"} if spec.multi else {}
        default = f"default {spec.shown_default}; " if spec.shown_default is not None else ""
        group.addoption(
            spec.flag,
            dest=f"gemdirect_{spec.name}",
            default=None,
            metavar=spec.metavar,
            help=f"{spec.help} ({default}env {spec.env}, ini {spec.ini})",
            **extra,
        )
        if spec.multi:
            parser.addini(spec.ini, type="linelist", default=None, help=spec.help)
        else:
            parser.addini(spec.ini, type="string", default=None, help=spec.help)


def _ini_value(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except ValueError:
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    flags = {spec.name: config.getoption(f"gemdirect_{spec.name}") for spec in SPECS}
    ini = {spec.name: _ini_value(config, spec.ini) for spec in SPECS}
    try:
        settings = with_files_read(resolve(flags, ini))
        if not hasattr(config, "workerinput"):  # the controller checked it; its run is the workers' run
            check_startup(
                settings,
                rootpath=config.rootpath,
                inipath=config.inipath,
                args=config.invocation_params.args,
                invocation_dir=config.invocation_params.dir,
            )
    except SettingError as exc:
        raise pytest.UsageError(f"pytest-gemdirect: {exc}") from None
    config.stash[SETTINGS_KEY] = settings
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_gemdirect.pytest_plugin import xdist_support

        xdist_support.check_dist_mode(config)
        if xdist_support.is_controller(config):
            controller = xdist_support.XdistController(config, lambda: activate(config))
            config.pluginmanager.register(controller, "gemdirect-xdist")


def activate(config: pytest.Config) -> Run:
    """The run of this process, made and registered (with its parts) on first need."""
    if RUN_KEY in config.stash:
        return config.stash[RUN_KEY]
    from pytest_gemdirect.pytest_plugin.run import Run
    from pytest_gemdirect.pytest_plugin.terminal import Terminal, TerminalOutput

    settings = config.stash[SETTINGS_KEY]
    output = TerminalOutput(config)
    handoff = None
    if hasattr(config, "workerinput"):
        from pytest_gemdirect.pytest_plugin.xdist_support import worker_handoff

        handoff = worker_handoff(config)
    run = Run(
        config,
        settings,
        baseline=_baseline(settings),
        progress=output.progress(),
        on_start=output.announce,
        handoff=handoff,
    )
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, "gemdirect-run")
    config.pluginmanager.register(Terminal(run), "gemdirect-terminal")
    return run


def _baseline(settings: Settings) -> dict[str, Any] | None:
    if settings.baseline is None:
        return None
    from pytest_gemdirect.report import BaselineError, load_baseline

    try:
        return load_baseline(settings.baseline)
    except BaselineError as exc:
        raise pytest.UsageError(f"pytest-gemdirect: invalid value for baseline: {exc}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Scenes come from the scenes setting, suites from the suite setting."""
    settings = metafunc.config.stash[SETTINGS_KEY]
    if "gemdirect_scene" in metafunc.fixturenames:
        from pytest_gemdirect.summary import scene_ids  # the run's record: loaded for pipeline tests only

        ids = scene_ids(settings.scenes)
        metafunc.parametrize("gemdirect_scene", ids, ids=ids)
    if "gemdirect_suite" in metafunc.fixturenames:
        from pytest_gemdirect.suites import parse_suite_specs

        names = [spec.name for spec in parse_suite_specs(list(settings.suites))]
        metafunc.parametrize("gemdirect_suite", names or [None], ids=names or ["none"])


@pytest.hookimpl(tryfirst=True)
def pytest_itemcollected(item: pytest.Item) -> None:
    """A user's own check over a stage's result belongs to the pipeline: ``-m e2e`` selects it too."""
    if is_pipeline_item(item) and item.get_closest_marker("e2e") is None:
        item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Once the pipeline is among the selected tests, the run is switched on and its tests ordered."""
    slots = [index for index, item in enumerate(items) if is_pipeline_item(item)]
    if not slots:
        return
    ordered = sorted((items[index] for index in slots), key=_order_key)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item
    if not hasattr(config, "workerinput"):  # the controller checked it for its workers
        _check_run_place(config.stash[SETTINGS_KEY])
    _probe_servers(config, ordered)
    run = activate(config)
    run.collected(
        (item.nodeid for item in ordered),
        (m.name for item in ordered for m in item.iter_markers() if m.name in BY_NAME),
        own_checks=((item.nodeid, _scene_of(item)) for item in ordered if _stage_of(item) is None),
    )
    if config.pluginmanager.hasplugin("timeout"):
        from pytest_gemdirect.pytest_plugin.timeout_support import TimeoutSupport

        support = TimeoutSupport(run)
        config.pluginmanager.register(support, "gemdirect-timeout")
        support.add_backstop(ordered)


def _check_run_place(settings: Settings) -> None:
    """A run directory that cannot be made or written is a usage error before any stage runs."""
    from pytest_gemdirect.rundir import RunPlaceError, check_run_place

    name = "run_dir" if settings.run_dir is not None else "logs_dir"
    try:
        check_run_place(settings.run_dir or settings.logs_dir, is_run_dir=name == "run_dir")
    except RunPlaceError as exc:
        raise pytest.UsageError(f"pytest-gemdirect: {name} ({settings.source(name)}): {exc}") from None


_NEED_COMFYUI = {"comfyui", "svd", "frames", "summary"}


def _probe_servers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An unreachable ``--comfyui-url`` stops the run before its first stage (exit 4).

    Only where the selected tests need ComfyUI, and not on an xdist worker (the controller boots
    the services there and hands their state over).
    """
    urls = config.stash[SETTINGS_KEY].comfyui_url
    if not urls or hasattr(config, "workerinput"):
        return
    stages = {m.name for item in items for m in item.iter_markers() if m.name in BY_NAME}
    own_checks = any(not any(m.name in BY_NAME for m in item.iter_markers()) for item in items)
    if not (stages & _NEED_COMFYUI or own_checks):
        return
    from pytest_gemdirect.services.probe import startup_problem

    problem = startup_problem(urls)
    if problem is not None:
        raise pytest.UsageError(f"pytest-gemdirect: {problem}")


def _stage_of(item: pytest.Item) -> str | None:
    """The stage a pipeline test is the check of; None for a user's own check."""
    return next((m.name for m in item.iter_markers() if m.name in BY_NAME), None)


def _scene_of(item: pytest.Item) -> str | None:
    params = getattr(item, "callspec", None)
    scene = params.params.get("gemdirect_scene") if params else None
    return str(scene) if scene else None


def _order_key(item: pytest.Item) -> tuple[int, int, int]:
    """The catalogue's order: each scene's retrieval right after its generation."""
    scene = _scene_of(item)
    return order_of(_stage_of(item), int(scene.split("-")[1]) if scene else None)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """``-m e2e`` that found no pipeline test: say which line collects it."""
    if RUN_KEY in config.stash or exitstatus != pytest.ExitCode.NO_TESTS_COLLECTED:
        return
    if re.search(r"\be2e\b", config.getoption("markexpr", "") or ""):
        terminalreporter.write_line(
            "gemdirect: no pipeline test was collected; add this line to a test module:\n"
            "    from pytest_gemdirect.pipeline_tests import *  # noqa: F401,F403"
        )


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gemdirect_stages(pytestconfig: pytest.Config) -> Stages:
    """The run's stages (started on first use: run directory, summary, services)."""
    return activate(pytestconfig).stages()


def _needed(get: Callable[[], T]) -> T:
    from pytest_gemdirect.stages import NotReached, StageSkipped

    try:
        return get()
    except (NotReached, StageSkipped) as exc:
        pytest.skip(str(exc))


@pytest.fixture
def gemdirect_story(gemdirect_stages: Stages) -> Story:
    """The run's story (skips with "not reached: …" when its stage failed)."""
    return _needed(lambda: gemdirect_stages.story(need=True))


@pytest.fixture
def gemdirect_comfyui(gemdirect_stages: Stages) -> ComfyUIService:
    """The ready ComfyUI: its URL, client and checked workflows."""
    return _needed(lambda: gemdirect_stages.comfyui(need=True))


@pytest.fixture
def gemdirect_generation(gemdirect_stages: Stages, gemdirect_scene: str) -> Generation:
    """One scene's generation (the test runs once per scene): prompt id, attempts, job result."""
    return _needed(lambda: gemdirect_stages.generation(gemdirect_scene, need=True))


@pytest.fixture
def gemdirect_frames(gemdirect_stages: Stages, gemdirect_scene: str) -> SceneFrames:
    """One scene's frames on disk (the test runs once per scene); skips "not reached" upstream."""
    return _needed(lambda: gemdirect_stages.frames(gemdirect_scene, need=True))


@pytest.fixture
def gemdirect_run_dir(gemdirect_stages: Stages) -> Path:
    """The run directory of this run."""
    return gemdirect_stages.ctx.run.root
