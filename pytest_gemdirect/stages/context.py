"""What every stage works with: the settings, the run directory, the summary and the services.

Each stage module is a function of this context and the results of the stages it needs; none of
them imports pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pytest_gemdirect.comfyui.job import ActiveJobs
from pytest_gemdirect.policy import QueuePolicy
from pytest_gemdirect.rundir import RunDirectory, append_jsonl
from pytest_gemdirect.services import Services
from pytest_gemdirect.settings import Settings
from pytest_gemdirect.summary import RunSummary


class ProgressSink(Protocol):
    """Where a scene's progress is shown (the terminal's progress display)."""

    def __call__(self, scene_id: str, value: int, maximum: int) -> None:
        """A sampler progress message: step ``value`` of ``maximum``."""

    def node(self, scene_id: str, label: str) -> None:
        """ComfyUI started a node of the scene's graph."""

    def done(self, scene_id: str) -> None:
        """The scene's job ended."""


STARTUP_TIMEOUT_S = 30.0
"""The budget of the start-up checks (environment facts, ComfyUI's first answers)."""


@dataclass
class StageContext:
    """One run's shared state, handed to every stage."""

    settings: Settings
    run: RunDirectory
    summary: RunSummary
    services: Services
    suite_cwd: Path
    progress: ProgressSink | None = None
    server_gone: str | None = None  # set once ComfyUI died: later scenes are not reached
    active_jobs: ActiveJobs = field(default_factory=ActiveJobs)  # what to stop if the run is cut short

    @property
    def max_body_bytes(self) -> int:
        """The cap on any answer read from a server (--max-response-mb)."""
        return int(self.settings.max_response_mb * 1024 * 1024)

    @property
    def policy(self) -> QueuePolicy:
        """The queue policy, built once with the settings."""
        return self.settings.policy

    def abandoned(self, scene_id: str, what: str) -> Callable[[dict[str, Any]], None]:
        """Records in the summary that a job of the scene was stopped because the run was cut short."""

        def record(done: dict[str, Any]) -> None:
            self.summary.warn(f"{scene_id}: the run was cut short during its {what}: {done['cleanup']}")

        return record

    def event(self, scene_id: str, record: dict[str, Any]) -> None:
        """One line of the scene's events.jsonl, written at once."""
        append_jsonl(self.run.events_path(scene_id), record)


def now() -> str:
    """Wall-clock time for the summary and events (durations use the monotonic clock)."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def as_json(value: object) -> Any:  # noqa: ANN401 - JSON of any shape, for the summary
    """A typed result as JSON-friendly data, for the summary and scene.json."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
