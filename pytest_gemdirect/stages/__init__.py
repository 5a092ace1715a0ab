"""The eight stages (design §2), each in its own module returning a typed result.

:class:`Stages` runs each stage's work at most once and hands its result to whoever asks: the
stage's own test (which shows a failure as its outcome), a later stage, or a user's test through
the plugin's fixtures (which shows a failure upstream as "not reached"). Each node is a typed
:class:`~pytest_gemdirect.catalogue.StageKey`; its string form (``svd[scene-001]``) is the summary's.
"""

from __future__ import annotations

from typing import TypeVar

from pytest_gemdirect.catalogue import GENERATION, RETRIEVAL, STAGE_NAMES, SUITES, StageKey
from pytest_gemdirect.stages import comfyui, environment, frames, generation, llm, story, suites, summary
from pytest_gemdirect.stages.comfyui import ComfyUIService
from pytest_gemdirect.stages.context import ProgressSink, StageContext
from pytest_gemdirect.stages.environment import EnvironmentFacts
from pytest_gemdirect.stages.frames import SceneFrames
from pytest_gemdirect.stages.generation import Generation
from pytest_gemdirect.stages.llm import LLMHealth
from pytest_gemdirect.stages.pipeline import NotReached, Pipeline, StageFailed, StageSkipped
from pytest_gemdirect.stages.pool import ScenePool
from pytest_gemdirect.stages.story import SceneScript, Story
from pytest_gemdirect.stages.summary import CheckedSummary
from pytest_gemdirect.suites import SuiteResult, SuiteSpec, parse_suite_specs
from pytest_gemdirect.summary import scene_ids

__all__ = [
    "CheckedSummary",
    "ComfyUIService",
    "EnvironmentFacts",
    "Generation",
    "LLMHealth",
    "NotReached",
    "ProgressSink",
    "SceneFrames",
    "SceneScript",
    "StageContext",
    "StageFailed",
    "StageSkipped",
    "Stages",
    "Story",
    "SuiteResult",
]


T = TypeVar("T")


class Stages:
    """One run's stage work. Each accessor runs its stage once and returns its typed result.

    With ``need=False`` (a stage's own test) a failure raises :class:`StageFailed`; with
    ``need=True`` (a later stage, a user's check) it raises :class:`NotReached` naming the stage.
    """

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.suite_specs: dict[str, SuiteSpec] = {
            s.name: s for s in parse_suite_specs(list(ctx.settings.suites))
        }
        self.pipeline = Pipeline(
            ctx.summary,
            {
                "env": lambda key: environment.check(ctx),
                "llm": lambda key: llm.check(ctx),
                "story": lambda key: story.write(ctx, self.llm),
                "comfyui": lambda key: comfyui.start(ctx),
                GENERATION: lambda key: self._scene_pool().result(_item(key)),
                RETRIEVAL: lambda key: self._frames(_item(key)),
                "suites": self._suite,
                "summary": self._summary,
            },
        )

        self._pool: ScenePool | None = None

    def _scene_pool(self) -> ScenePool:
        """Every scene's generation, started over the ComfyUI servers when the first one is needed."""
        if self._pool is None:
            story_result, comfy = self.story(need=True), self.comfyui(need=True)
            self._pool = ScenePool(self.ctx, comfy.servers, self.scene_ids())
            self._pool.start(
                lambda ticket: generation.generate(self.ctx, ticket, story_result, comfy),
                lambda ticket, done: frames.retrieve(self.ctx, _generation(done), ticket),
            )
        return self._pool

    def _frames(self, scene_id: str) -> SceneFrames:
        """The scene's frames: fetched and checked in the scene's own thread once its job ended."""
        self.generation(scene_id, need=True)  # "not reached: svd[...] failed" first
        done = self._scene_pool().after_job(scene_id)
        if not isinstance(done, SceneFrames):
            raise TypeError(f"{scene_id}'s post-job work gave a {type(done).__name__}, not SceneFrames")
        return done

    def _get(self, key: StageKey, need: bool, kind: type[T]) -> T:
        value = self.pipeline.require(key) if need else self.pipeline.run(key)
        if not isinstance(value, kind):
            raise TypeError(f"stage {key} gave a {type(value).__name__}, not a {kind.__name__}")
        return value

    def environment(self, *, need: bool = False) -> EnvironmentFacts:
        return self._get(StageKey("env"), need, EnvironmentFacts)

    def llm(self, *, need: bool = False) -> LLMHealth:
        return self._get(StageKey("llm"), need, LLMHealth)

    def story(self, *, need: bool = False) -> Story:
        return self._get(StageKey("story"), need, Story)

    def comfyui(self, *, need: bool = False) -> ComfyUIService:
        return self._get(StageKey("comfyui"), need, ComfyUIService)

    def generation(self, scene_id: str, *, need: bool = False) -> Generation:
        return self._get(StageKey(GENERATION, scene_id), need, Generation)

    def frames(self, scene_id: str, *, need: bool = False) -> SceneFrames:
        return self._get(StageKey(RETRIEVAL, scene_id), need, SceneFrames)

    def suite(self, name: str | None, *, need: bool = False) -> SuiteResult:
        """One configured suite's result (``None``: no suite configured, the stage is skipped)."""
        return self._get(StageKey(SUITES, name), need, SuiteResult)

    def summary(self, *, need: bool = False) -> CheckedSummary:
        return self._get(StageKey("summary"), need, CheckedSummary)

    def scene_ids(self) -> list[str]:
        return scene_ids(self.ctx.settings.scenes)

    def all_keys(self) -> list[StageKey]:
        """Every stage node of the run before the summary, in stage order (the summary runs them all)."""
        keys: list[StageKey] = []
        for stage in STAGE_NAMES[: STAGE_NAMES.index("summary")]:
            if stage in (GENERATION, RETRIEVAL):
                keys += [StageKey(stage, scene) for scene in self.scene_ids()]
            elif stage == SUITES:
                keys += [StageKey(stage, name) for name in self.suite_specs] or [StageKey(stage)]
            else:
                keys.append(StageKey(stage))
        return keys

    def scene_figures(self, scene_id: str) -> dict[str, str | int | float]:
        """A scene's figures as the summary has them now (for JUnit properties)."""
        record = self.ctx.summary.scene(scene_id)
        figures: dict[str, str | int | float] = {
            "scene_status": record["status"],
            "frame_count": record["frame_count"],
            "attempts": len(record["attempts"]),
        }
        if record.get("prompt_id"):
            figures["prompt_id"] = str(record["prompt_id"])
        telemetry = record.get("telemetry") or {}
        figures.update(
            {k: v for k, v in telemetry.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
        return figures

    def interrupt_running(self, message: str) -> None:
        """Stop our prompts still queued or running, then record every stage at work as interrupted.

        Called when the process is about to end from another thread (pytest-timeout's thread
        method); Ctrl-C and SIGTERM stop the prompts in the job follower itself.
        """
        # Recorded before the jobs are stopped: stopping a job ends the stage waiting on it in the
        # main thread, which would otherwise record it as failed first, or (between leaving the
        # running stages and recording) not at all, leaving the closed summary without the item.
        if self._pool is not None:
            for scene_id in self._pool.at_work():
                self.pipeline.mark_interrupted(StageKey(GENERATION, scene_id), message)
        self.pipeline.interrupt_running(message)
        if self._pool is not None:
            self._pool.stop(message)
        self.ctx.active_jobs.stop_all(message)

    def _suite(self, key: StageKey) -> SuiteResult:
        if key.item is None:
            raise StageSkipped("no external suites configured")
        return suites.run(self.ctx, self.suite_specs[key.item])

    def _summary(self, key: StageKey) -> CheckedSummary:
        self.pipeline.attempt_all(self.all_keys())
        return summary.check(self.ctx)


def _item(key: StageKey) -> str:
    """The scene (or suite) a node of a stage with items is for."""
    if key.item is None:
        raise ValueError(f"stage {key} needs an item: {key.stage}[...]")
    return key.item


def _generation(value: object) -> Generation:
    if not isinstance(value, Generation):
        raise TypeError(f"a scene's job gave a {type(value).__name__}, not a Generation")
    return value
