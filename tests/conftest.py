"""Fixtures shared by the outside-in tests (their helpers are in tests/outside.py)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

from tests.outside import PIPELINE_MODULE, REPO
from tests.runs import SharedRuns

VITEST_DIR = REPO / "fixtures" / "suites" / "vitest"
"""The sample vitest project that stands in for the app's own suites."""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user project that collects the pipeline's stages."""
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE)
    return pytester


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> SharedRuns:
    """The shared pipeline runs of tests/runs.py, each started once when a test first reads it."""
    return SharedRuns(tmp_path_factory)


@pytest.fixture(scope="session")
def vitest_dir() -> Path:
    """The sample vitest project, its npm packages installed once (``npm ci``) when missing.

    So that a fresh clone passes the README's test command with nothing else typed. Under
    pytest-xdist the first worker installs them under a lock (in the temp folder, named for the
    project's path, so two sessions of one clone share it too) and the others wait for it: two
    ``npm ci`` at once in one folder break each other.
    """
    installed = VITEST_DIR / "node_modules" / "vitest"
    npm = shutil.which("npm")
    digest = hashlib.sha256(str(VITEST_DIR).encode()).hexdigest()[:12]
    with FileLock(str(Path(tempfile.gettempdir()) / f"gemdirect-npm-ci-{digest}.lock")):
        if installed.is_dir():
            return VITEST_DIR
        if npm is None:
            pytest.skip("npm is not installed: the sample vitest project cannot be set up")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=VITEST_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0 or not installed.is_dir():
            pytest.fail(f"npm ci in {VITEST_DIR} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return VITEST_DIR
