"""Stage 7, external suites (marker ``suites``): the app's own test commands pass."""

from __future__ import annotations

from pytest_gemdirect.stages.context import StageContext
from pytest_gemdirect.stages.pipeline import StageFailed
from pytest_gemdirect.suites import SuiteResult, SuiteSpec, run_suite


def run(ctx: StageContext, spec: SuiteSpec) -> SuiteResult:
    result = run_suite(spec, cwd=ctx.suite_cwd, run_dir=ctx.run.root, timeout_s=ctx.settings.suite_timeout)
    others = [s for s in ctx.summary.data["suites"] if s.get("name") != spec.name]
    ctx.summary.set_section("suites", [*others, result.to_dict()])
    if result.status != "passed":
        raise StageFailed(result.failure_message())
    return result
