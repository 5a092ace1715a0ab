"""A run closed from another thread (pytest-timeout's thread method) while a stage is at work in the
main thread: the closed summary names that stage as interrupted, whatever the stopped job reports.

The end-to-end case is test_pipeline_faults.py's thread-method test; here the two threads meet in
the one order that lost the item (``KeyError: 'svd[scene-002]'`` on a busy machine): the stopped job
ends the stage in the main thread before the interrupting thread has recorded anything.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_gemdirect.catalogue import STAGE_NAMES, StageKey
from pytest_gemdirect.rundir import RunDirectory
from pytest_gemdirect.stages import StageFailed, Stages
from pytest_gemdirect.stages.pipeline import Pipeline
from pytest_gemdirect.summary import RunSummary

KEY = StageKey("svd", "scene-002")


class StoppedJob:
    """Stands in for the scene pool: a generation the main thread waits on, ended by ``stop``.

    ``stop`` returns only once the waiting stage has ended and recorded what it saw, the order in
    which a busy machine may schedule the two threads.
    """

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.stage_ended = threading.Event()

    def at_work(self) -> list[str]:
        return ["scene-002"]

    def stop(self, reason: str) -> None:
        self.stopped.set()
        assert self.stage_ended.wait(30), "the stage waiting on the job never ended"

    def result(self, scene_id: str) -> object:
        self.started.set()
        assert self.stopped.wait(30), "the job was never stopped"
        raise StageFailed(f"{scene_id} generation: the job was interrupted")


def test_a_stage_ended_by_the_stop_is_recorded_as_interrupted(tmp_path: Path) -> None:
    summary = RunSummary(
        RunDirectory.create(logs_dir=tmp_path, run_dir=tmp_path / "run"),
        settings={},
        sources={},
        scene_ids=["scene-001", "scene-002"],
    )
    job = StoppedJob()
    stages = Stages.__new__(Stages)  # only what interrupt_running touches: the pipeline, the pool, the jobs
    works = {name: (lambda key: None) for name in STAGE_NAMES}
    works["svd"] = lambda key: job.result("scene-002")
    stages.pipeline = Pipeline(summary, works)
    stages._pool = job  # type: ignore[assignment]
    stages.ctx = SimpleNamespace(active_jobs=SimpleNamespace(stop_all=lambda reason: []))  # type: ignore[assignment]

    def main_thread_stage() -> None:
        try:
            with pytest.raises(StageFailed):
                stages.pipeline.run(KEY)
        finally:
            job.stage_ended.set()

    waiting = threading.Thread(target=main_thread_stage)
    waiting.start()
    assert job.started.wait(30), "the stage never started"
    stages.interrupt_running("pytest-timeout ended the process")
    waiting.join(30)

    item = next(
        i for s in summary.data["stages"] for i in s.get("items") or [] if i["key"] == "svd[scene-002]"
    )
    assert item["status"] == "interrupted", item
    assert "pytest-timeout ended the process" in item["message"]
    assert stages.pipeline.outcomes[KEY].status == "interrupted"
