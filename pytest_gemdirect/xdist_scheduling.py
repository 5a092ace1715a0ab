"""pytest-xdist scheduling that keeps the pipeline's stages together on one worker.

The stages share one run (one story, one ComfyUI queue, one summary), so they must run in one
process, in order. xdist's own ``loadgroup`` does this by rewriting node ids on the workers, which
pytest 9.2 no longer honours (pytest-dev/pytest-xdist#1386); this scheduler needs no rewriting:
it knows the pipeline's tests by name.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling

from pytest_gemdirect.pipeline_tests import __all__ as PIPELINE_TESTS

GROUP = "gemdirect"


def is_pipeline_test(nodeid: str) -> bool:
    """Whether a node id names one of the pipeline's tests (``…::test_frames[scene-001]``)."""
    return nodeid.split("::")[-1].split("[")[0].split("@")[0] in PIPELINE_TESTS


class PipelineScheduling(LoadGroupScheduling):
    """``--dist load`` for every other test (or ``loadgroup`` where they have groups); the
    pipeline's eight tests form one unit that goes to one worker, in collection order."""

    def _split_scope(self, nodeid: str) -> str:
        if is_pipeline_test(nodeid):
            return GROUP
        return super()._split_scope(nodeid)
