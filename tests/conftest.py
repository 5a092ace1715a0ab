"""Fixtures shared by the outside-in tests (their helpers are in tests/outside.py)."""

from __future__ import annotations

import pytest

from tests.outside import PIPELINE_MODULE


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user project that collects the pipeline's stages."""
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE)
    return pytester
