"""The stage catalogue: one table every part reads, and a typed (stage, scene) key."""

from __future__ import annotations

import random

import pytest

from pytest_gemdirect import pipeline_tests
from pytest_gemdirect.catalogue import SCENE_STAGES, STAGE_NAMES, STAGES, StageKey, order_of
from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.settings import SPECS_BY_NAME
from pytest_gemdirect.summary import RunSummary


def test_every_stage_has_one_test_with_its_marker_and_settings_that_exist() -> None:
    marked: dict[str, list[str]] = {}
    for name in pipeline_tests.__all__:
        for mark in getattr(getattr(pipeline_tests, name), "pytestmark", []):
            if mark.name != "e2e":
                marked.setdefault(mark.name, []).append(name)
    assert {stage.marker: 1 for stage in STAGES} == {m: len(tests) for m, tests in marked.items()}
    for stage in STAGES:
        assert set(stage.bounded_by) <= set(SPECS_BY_NAME), stage.name
        assert stage.number == STAGE_NAMES.index(stage.name) + 1


def test_a_key_round_trips_through_its_summary_form() -> None:
    keys = [StageKey("llm"), StageKey("svd", "scene-002"), StageKey("suites", "vitest"), StageKey("suites")]
    assert [str(k) for k in keys] == ["llm", "svd[scene-002]", "suites[vitest]", "suites"]
    assert [StageKey.parse(str(k)) for k in keys] == keys
    assert (keys[1].scene, keys[2].scene, keys[2].item) == ("scene-002", None, "vitest")
    with pytest.raises(ValueError, match="no such stage: 'svdd'"):
        StageKey.parse("svdd[scene-001]")
    with pytest.raises(ValueError, match="not a stage key"):
        StageKey.parse("svd[")


def test_each_scene_is_retrieved_right_after_its_generation() -> None:
    nodes: list[tuple[str | None, int | None]] = [(s.name, None) for s in STAGES if not s.per_scene]
    nodes += [(stage, n) for stage in SCENE_STAGES for n in (1, 2)] + [(None, 1), (None, None)]
    random.Random(7).shuffle(nodes)
    ordered = sorted(nodes, key=lambda node: order_of(*node))
    first, last = STAGE_NAMES.index(SCENE_STAGES[0]), STAGE_NAMES.index(SCENE_STAGES[-1])
    assert (
        ordered
        == [
            *[(name, None) for name in STAGE_NAMES[:first]],  # env, llm, story, comfyui
            ("svd", 1),
            ("frames", 1),
            ("svd", 2),
            ("frames", 2),
            (None, 1),  # a user's check of scene 1's frames: after the scenes' own stages
            (None, None),
            *[(name, None) for name in STAGE_NAMES[last + 1 :]],  # suites, summary
        ]
    )
    assert ordered[:4] == [("env", None), ("llm", None), ("story", None), ("comfyui", None)]
    assert ordered[-1] == ("summary", None)


def test_the_summary_records_typed_keys_under_their_stage_and_scene(tmp_path) -> None:
    run = RunDirectory.create(logs_dir=tmp_path, run_dir=tmp_path / "run")
    summary = RunSummary(run, settings={}, sources={}, scene_ids=["scene-001", "scene-002"])
    summary.record_item(StageKey("svd", "scene-001"), "passed", duration_s=1.0)
    summary.record_item(StageKey("frames", "scene-001"), "passed", duration_s=0.5)
    summary.record_item(StageKey("svd", "scene-002"), "failed", message="scene_max_wait")
    stages = {stage["name"]: stage for stage in summary.data["stages"]}
    assert [item["key"] for item in stages["svd"]["items"]] == ["svd[scene-001]", "svd[scene-002]"]
    assert (stages["svd"]["status"], stages["frames"]["status"]) == ("failed", "passed")
    scenes = {scene["id"]: scene for scene in summary.data["scenes"]}
    assert scenes["scene-001"]["status"] == "passed"
    assert (scenes["scene-002"]["status"], scenes["scene-002"]["failed_stage"]) == ("failed", "svd")


def test_the_summary_schema_names_the_catalogue_stages() -> None:
    """The schema keeps the stage names on disk for the app's own tools; it must not drift."""
    schema = load_schema("run-summary.schema.json")
    stage = schema["properties"]["stages"]["items"]["properties"]["name"]
    assert stage["enum"] == list(STAGE_NAMES)
