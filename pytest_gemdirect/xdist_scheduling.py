"""pytest-xdist scheduling that keeps the pipeline's stages together on one worker.

The stages share one run (one story, one ComfyUI queue, one summary), so they must run in one
process, in order. xdist's own ``loadgroup`` does this by rewriting node ids on the workers, which
pytest 9.2 no longer honours (pytest-dev/pytest-xdist#1386); this scheduler needs no rewriting:
it knows the pipeline's tests by name.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling

from pytest_gemdirect.pipeline_tests import is_pipeline_test

GROUP = "gemdirect"


class PipelineScheduling(LoadGroupScheduling):
    """``--dist load`` for every other test (or ``loadgroup`` where they have groups); the
    pipeline's eight tests form one unit that goes to one worker, in collection order."""

    def _split_scope(self, nodeid: str) -> str:
        if is_pipeline_test(nodeid):
            return GROUP
        return super()._split_scope(nodeid)
