"""pytest wiring for pytest-gemdirect: options, markers, fixtures; the run machinery lives in session.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gemdirect.pipeline import NotReached, StageFailed, StageSkipped
from pytest_gemdirect.session import GemdirectRun, run_of
from pytest_gemdirect.settings import SPECS, SettingError, resolve
from pytest_gemdirect.summary import STAGE_TITLES, STAGES

if TYPE_CHECKING:
    from pytest_gemdirect.stages import Stages

MARKERS = {"e2e": "the end-to-end pipeline (all eight stages)"} | {
    name: f"pipeline stage: {STAGE_TITLES[name]}" for name in STAGES
}


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
        parser.addini(spec.ini, type="linelist" if spec.multi else "string", default=None, help=spec.help)


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
        settings = resolve(flags, ini)
    except SettingError as exc:
        raise pytest.UsageError(f"pytest-gemdirect: {exc}") from None
    config.pluginmanager.register(GemdirectRun(config, settings), "gemdirect-run")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Scenes come from the scenes setting, suites from the suite setting."""
    run = run_of(metafunc.config)
    if "gemdirect_scene" in metafunc.fixturenames:
        ids = run.scene_ids()
        metafunc.parametrize("gemdirect_scene", ids, ids=ids)
    if "gemdirect_suite" in metafunc.fixturenames:
        names = run.suite_names()
        metafunc.parametrize("gemdirect_suite", names or [None], ids=names or ["none"])


@pytest.fixture(scope="session")
def gemdirect_stages(pytestconfig: pytest.Config) -> Stages:
    """The run's stage work (started on first use: run directory, summary, services)."""
    return run_of(pytestconfig).stages()


@pytest.fixture
def gemdirect_check(gemdirect_stages: Stages) -> Callable[[str], Any]:
    """Run one stage key (``svd[scene-001]``) and show its outcome as this test's outcome."""

    def check(key: str) -> Any:
        try:
            return gemdirect_stages.pipeline.run(key)
        except StageFailed as exc:
            failure = str(exc)  # failed outside the except block: the message once, without a chain
        except (NotReached, StageSkipped) as exc:
            pytest.skip(str(exc))
        pytest.fail(failure, pytrace=False)

    return check


def _require(stages: Stages, key: str) -> Any:
    try:
        return stages.pipeline.require(key)
    except (NotReached, StageSkipped) as exc:
        pytest.skip(str(exc))


@pytest.fixture
def gemdirect_story(gemdirect_stages: Stages) -> dict[str, Any]:
    """The run's story (skips with "not reached: …" when its stage failed)."""
    return _require(gemdirect_stages, "story")


@pytest.fixture
def gemdirect_run_dir(gemdirect_stages: Stages) -> Iterator[Any]:
    """The run directory (pathlib.Path) of this run."""
    yield gemdirect_stages.run.root
