"""The end-to-end pipeline: `pytest -m e2e` runs these eight stages."""

from pytest_gemdirect.pipeline_tests import *  # noqa: F403
