"""Stage 1, environment (marker ``env``): Python, packages, disk, ports, Node/npm, GPU visibility."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.environment import EnvironmentProblem, check_environment
from pytest_gemdirect.stages.context import STARTUP_TIMEOUT_S, StageContext
from pytest_gemdirect.stages.pipeline import StageFailed


@dataclass(frozen=True)
class EnvironmentFacts:
    """What the machine offers the run, as recorded in the summary's ``environment`` section."""

    facts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.facts)


def check(ctx: StageContext) -> EnvironmentFacts:
    try:
        facts = check_environment(ctx.run.root, deadline=Deadline(STARTUP_TIMEOUT_S))
    except EnvironmentProblem as exc:
        raise StageFailed(f"environment: {exc}") from None
    ctx.summary.set_section("environment", facts)
    return EnvironmentFacts(facts)
