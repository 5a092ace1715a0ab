"""The eight pipeline stages as test nodes.

A test module collects them with one line::

    from pytest_gemdirect.pipeline_tests import *  # noqa: F401,F403

Each is marked ``e2e`` and with its stage's marker. The work lives in the run's stages, so
deselecting a test hides its check, not the work later stages need. A project adds checks of its
own through the plugin's fixtures (``gemdirect_frames``, ``gemdirect_story``…).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_gemdirect.stages import Stages

__all__ = [
    "test_environment",
    "test_llm_health",
    "test_story",
    "test_comfyui_startup",
    "test_generation",
    "test_frames",
    "test_suites",
    "test_run_summary",
]

PIPELINE_FIXTURE = "gemdirect_stages"
"""Every test that works on the run requests this fixture, directly or through another one."""


def is_pipeline_test(nodeid: str) -> bool:
    """Whether a node id names one of the pipeline's tests (``…::test_frames[scene-001]``)."""
    return nodeid.split("::")[-1].split("[")[0].split("@")[0] in __all__


def is_pipeline_item(item: pytest.Item) -> bool:
    """Whether a collected test works on the run (a stage's test, or a user's check over a stage)."""
    return PIPELINE_FIXTURE in getattr(item, "fixturenames", ())


def stage_check(work: Callable[[], Any]) -> None:
    """Run a stage's work as its own test: a failure is this test's, a failure upstream a skip."""
    from pytest_gemdirect.stages import NotReached, StageFailed, StageSkipped

    try:
        work()
        return
    except StageFailed as exc:
        failure = str(exc)  # failed outside the except block: the message once, without a chain
    except (NotReached, StageSkipped) as exc:
        pytest.skip(str(exc))
    pytest.fail(failure, pytrace=False)


@pytest.mark.e2e
@pytest.mark.env
def test_environment(gemdirect_stages: Stages) -> None:
    """Python, packages, disk, Node/npm, GPU visibility."""
    stage_check(gemdirect_stages.environment)


@pytest.mark.e2e
@pytest.mark.llm
def test_llm_health(gemdirect_stages: Stages) -> None:
    """The LLM lists the model and answers a tiny completion within its timeout."""
    stage_check(gemdirect_stages.llm)


@pytest.mark.e2e
@pytest.mark.story
def test_story(gemdirect_stages: Stages) -> None:
    """N scenes, valid against story.schema.json, one keyframe PNG per scene."""
    stage_check(gemdirect_stages.story)


@pytest.mark.e2e
@pytest.mark.comfyui
def test_comfyui_startup(gemdirect_stages: Stages) -> None:
    """ComfyUI ready; the workflow's node classes and checkpoint are offered."""
    stage_check(gemdirect_stages.comfyui)


def _with_figures(stages: Stages, scene_id: str, record_property: Callable[[str, object], None]) -> None:
    """The scene's figures as JUnit properties (``--junitxml``), whatever the stage's outcome."""
    for name, value in stages.scene_figures(scene_id).items():
        record_property(name, value)


@pytest.mark.e2e
@pytest.mark.svd
def test_generation(
    gemdirect_stages: Stages, gemdirect_scene: str, record_property: Callable[[str, object], None]
) -> None:
    """The scene's workflow queued and followed to completion under the queue policy."""
    try:
        stage_check(lambda: gemdirect_stages.generation(gemdirect_scene))
    finally:
        _with_figures(gemdirect_stages, gemdirect_scene, record_property)


@pytest.mark.e2e
@pytest.mark.frames
def test_frames(
    gemdirect_stages: Stages, gemdirect_scene: str, record_property: Callable[[str, object], None]
) -> None:
    """The scene's outputs listed in /history, downloaded, counted and decodable."""
    try:
        stage_check(lambda: gemdirect_stages.frames(gemdirect_scene))
    finally:
        _with_figures(gemdirect_stages, gemdirect_scene, record_property)


@pytest.mark.e2e
@pytest.mark.suites
def test_suites(gemdirect_stages: Stages, gemdirect_suite: str | None) -> None:
    """An external suite (vitest or any JUnit-producing command) passes."""
    stage_check(lambda: gemdirect_stages.suite(gemdirect_suite))


@pytest.mark.e2e
@pytest.mark.summary
def test_run_summary(gemdirect_stages: Stages) -> None:
    """run-summary.json is schema-valid, has telemetry for every finished scene, names only existing files."""
    stage_check(gemdirect_stages.summary)
