"""The eight stages (design §2), each in its own module returning a typed result.

:class:`Stages` runs each stage's work at most once and hands its result to whoever asks: the
stage's own test (which shows a failure as its outcome), a later stage, or a user's test through
the plugin's fixtures (which shows a failure upstream as "not reached"). The string keys
(``svd[scene-001]``) the summary records stay inside this package.
"""

from __future__ import annotations

from typing import Any, cast

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


def _scene_of(key: str) -> str:
    return key[key.index("[") + 1 : -1]


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
                "svd": lambda key: self._scene_pool().result(_scene_of(key)),
                "frames": lambda key: frames.retrieve(ctx, self.generation(_scene_of(key), need=True)),
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
            self._pool.start(lambda ticket: generation.generate(self.ctx, ticket, story_result, comfy))
        return self._pool

    def _get(self, key: str, need: bool) -> Any:
        return self.pipeline.require(key) if need else self.pipeline.run(key)

    def environment(self, *, need: bool = False) -> EnvironmentFacts:
        return cast(EnvironmentFacts, self._get("env", need))

    def llm(self, *, need: bool = False) -> LLMHealth:
        return cast(LLMHealth, self._get("llm", need))

    def story(self, *, need: bool = False) -> Story:
        return cast(Story, self._get("story", need))

    def comfyui(self, *, need: bool = False) -> ComfyUIService:
        return cast(ComfyUIService, self._get("comfyui", need))

    def generation(self, scene_id: str, *, need: bool = False) -> Generation:
        return cast(Generation, self._get(f"svd[{scene_id}]", need))

    def frames(self, scene_id: str, *, need: bool = False) -> SceneFrames:
        return cast(SceneFrames, self._get(f"frames[{scene_id}]", need))

    def suite(self, name: str | None, *, need: bool = False) -> SuiteResult:
        """One configured suite's result (``None``: no suite configured, the stage is skipped)."""
        return cast(SuiteResult, self._get(f"suites[{name}]" if name else "suites", need))

    def summary(self, *, need: bool = False) -> CheckedSummary:
        return cast(CheckedSummary, self._get("summary", need))

    def scene_ids(self) -> list[str]:
        return scene_ids(self.ctx.settings.scenes)

    def all_keys(self) -> list[str]:
        """Every stage node of the run, in order (the summary stage runs them all)."""
        scenes = self.scene_ids()
        keys = ["env", "llm", "story", "comfyui"]
        keys += [f"svd[{s}]" for s in scenes] + [f"frames[{s}]" for s in scenes]
        return keys + ([f"suites[{name}]" for name in self.suite_specs] or ["suites"])

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
                self.pipeline.mark_interrupted(f"svd[{scene_id}]", message)
        self.pipeline.interrupt_running(message)
        if self._pool is not None:
            self._pool.stop(message)
        self.ctx.active_jobs.stop_all(message)

    def _suite(self, key: str) -> SuiteResult:
        if "[" not in key:
            raise StageSkipped("no external suites configured")
        return suites.run(self.ctx, self.suite_specs[_scene_of(key)])

    def _summary(self, key: str) -> CheckedSummary:
        self.pipeline.attempt_all(self.all_keys())
        return summary.check(self.ctx)
