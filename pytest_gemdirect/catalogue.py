"""The stage catalogue: every fact about the eight stages (design §2) in one table.

A stage's name is its marker and the summary's name for it; its place in :data:`STAGES` is its
step number and its order. The summary, the report, the plugin's ordering and the stages read
this table, so adding a stage is one row here plus its work (``stages/``) and its test
(``pipeline_tests.py``). A node of a stage is a :class:`StageKey`: the stage, and for a stage
with items (a scene, a suite) the item; ``svd[scene-001]`` is only its form on disk.
Nothing here imports the harness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its marker), title, whether it runs per scene, and what bounds it."""

    name: str
    title: str
    expected: str  # what the stage checks, said as the expectation a failure did not meet
    bounded_by: tuple[str, ...] = ()  # the settings that bound its waits, shown beside a failure
    per_scene: bool = False  # one node per scene (``svd[scene-001]``), ordered scene by scene

    @property
    def marker(self) -> str:
        return self.name

    @property
    def number(self) -> int:
        """Its step number, from 1 (the order the run, the summary and the report show)."""
        return STAGE_NAMES.index(self.name) + 1


STAGES: tuple[Stage, ...] = (
    Stage(
        "env",
        "environment",
        "Python, the required packages, enough disk and free ports on this machine",
    ),
    Stage(
        "llm",
        "LLM health",
        "GET /v1/models answers, the configured model is listed and a tiny chat completion"
        " answers within llm_timeout",
        ("llm_timeout",),
    ),
    Stage(
        "story",
        "story",
        "the configured number of scenes, valid against schemas/story.schema.json,"
        " with one keyframe PNG per scene",
        ("story_mode", "scenes", "llm_timeout"),
    ),
    Stage(
        "comfyui",
        "ComfyUI startup",
        "ComfyUI booted or attached and ready (GET /system_stats), the workflow's node classes"
        " and the SVD checkpoint present",
        ("comfyui_url", "workflow"),
    ),
    Stage(
        "svd",
        "generation",
        "the workflow is queued and ComfyUI reports completion (execution_success, or executing"
        " with node null, or a final /history status) within scene_max_wait",
        ("scene_max_wait", "max_scene_retries", "ws_idle_timeout"),
        per_scene=True,
    ),
    Stage(
        "frames",
        "frame retrieval",
        "the outputs are listed in /history/<prompt id> within completion_grace and"
        " history_max_attempts polls, then downloaded and decodable",
        ("completion_grace", "history_max_attempts", "history_poll_interval", "scene_max_wait"),
        per_scene=True,
    ),
    Stage(
        "suites",
        "external suites",
        "the suite command exits 0 and its JUnit results show no failing case within suite_timeout",
        ("suite_timeout",),
    ),
    Stage(
        "summary",
        "run summary",
        "run-summary.json valid against its schema, telemetry for every finished scene,"
        " every file it names present",
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
STAGE_TITLES: dict[str, str] = {stage.name: stage.title for stage in STAGES}
SCENE_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.per_scene)
"""The stages with one node per scene (generation, then retrieval), in order."""

# The stages code refers to by role; their names are in the table above.
GENERATION, RETRIEVAL = SCENE_STAGES
SUITES = "suites"

_KEY = re.compile(r"^(?P<stage>[a-z0-9_]+)(?:\[(?P<item>.+)\])?$")


@dataclass(frozen=True)
class StageKey:
    """One node of the run: a stage, and the scene (or suite) it is for when the stage has items."""

    stage: str
    item: str | None = None  # a scene id for a per-scene stage, a suite name for suites

    def __post_init__(self) -> None:
        if self.stage not in BY_NAME:
            raise ValueError(f"no such stage: {self.stage!r} (the stages are {', '.join(STAGE_NAMES)})")

    @property
    def scene(self) -> str | None:
        """The scene of a per-scene stage's node (None for any other node)."""
        return self.item if BY_NAME[self.stage].per_scene else None

    @property
    def info(self) -> Stage:
        return BY_NAME[self.stage]

    def __str__(self) -> str:
        """The form the summary keeps on disk: ``svd[scene-001]``, ``suites[vitest]``, ``llm``."""
        return self.stage if self.item is None else f"{self.stage}[{self.item}]"

    @classmethod
    def parse(cls, text: str) -> StageKey:
        """A key as the summary writes it (``svd[scene-001]``) back into its parts."""
        match = _KEY.match(text)
        if match is None:
            raise ValueError(f"not a stage key: {text!r}")
        return cls(match["stage"], match["item"])


def order_of(stage: str | None, scene_number: int | None) -> tuple[int, int, int]:
    """Where a pipeline test runs: stage order, except that a scene's per-scene stages run together.

    Each scene's retrieval comes right after its generation, so the scene's deadline covers queue
    to frames on disk. ``stage`` None is a user's own check over the stages' results: it runs after
    the per-scene stages of its scene (or after all of them when it has none).
    """
    last_scene_stage = BY_NAME[SCENE_STAGES[-1]].number
    if stage is None:
        return (last_scene_stage, scene_number if scene_number is not None else 10**6, len(STAGES))
    number = BY_NAME[stage].number
    if BY_NAME[stage].per_scene and scene_number is not None:
        return (BY_NAME[SCENE_STAGES[0]].number, scene_number, number)
    return (number, 0, 0)
