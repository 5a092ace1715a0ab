"""The eight pipeline stages as test nodes.

A test module collects them with one line::

    from pytest_gemdirect.pipeline_tests import *  # noqa: F401,F403

Each is marked ``e2e`` and with its stage's marker; the work lives in the plugin's fixtures,
so deselecting a test hides its check, not the work later stages need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

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

Check = Callable[[str], Any]


def is_pipeline_test(nodeid: str) -> bool:
    """Whether a node id names one of the pipeline's tests (``…::test_frames[scene-001]``)."""
    return nodeid.split("::")[-1].split("[")[0].split("@")[0] in __all__


@pytest.mark.e2e
@pytest.mark.env
def test_environment(gemdirect_check: Check) -> None:
    """Python, packages, disk, Node/npm, GPU visibility."""
    gemdirect_check("env")


@pytest.mark.e2e
@pytest.mark.llm
def test_llm_health(gemdirect_check: Check) -> None:
    """The LLM lists the model and answers a tiny completion within its timeout."""
    gemdirect_check("llm")


@pytest.mark.e2e
@pytest.mark.story
def test_story(gemdirect_check: Check) -> None:
    """N scenes, valid against story.schema.json, one keyframe PNG per scene."""
    gemdirect_check("story")


@pytest.mark.e2e
@pytest.mark.comfyui
def test_comfyui_startup(gemdirect_check: Check) -> None:
    """ComfyUI ready; the workflow's node classes and checkpoint are offered."""
    gemdirect_check("comfyui")


@pytest.mark.e2e
@pytest.mark.svd
def test_generation(gemdirect_check: Check, gemdirect_scene: str) -> None:
    """The scene's workflow queued and followed to completion under the queue policy."""
    gemdirect_check(f"svd[{gemdirect_scene}]")


@pytest.mark.e2e
@pytest.mark.frames
def test_frames(gemdirect_check: Check, gemdirect_scene: str) -> None:
    """The scene's outputs listed in /history, downloaded, counted and decodable."""
    gemdirect_check(f"frames[{gemdirect_scene}]")


@pytest.mark.e2e
@pytest.mark.suites
def test_suites(gemdirect_check: Check, gemdirect_suite: str | None) -> None:
    """An external suite (vitest or any JUnit-producing command) passes."""
    gemdirect_check(f"suites[{gemdirect_suite}]" if gemdirect_suite else "suites")


@pytest.mark.e2e
@pytest.mark.summary
def test_run_summary(gemdirect_check: Check) -> None:
    """run-summary.json is schema-valid, has telemetry for every finished scene, names only existing files."""
    gemdirect_check("summary")
