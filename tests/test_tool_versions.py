"""The environment stage asks node and npm for their versions once per executable, nvidia-smi every run.

From the outside: ``pytest -m env`` in a user project whose PATH starts with fake tools that count
their starts, the user's cache folder set with GEMDIRECT_CACHE_DIR.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.outside import runpytest, summary_of

WINDOWS = sys.platform == "win32"


def fake_tool(bin_dir: Path, name: str, lines: list[str]) -> Path:
    """A program ``name`` on PATH that notes each start in ``<name>.starts`` and prints ``lines``."""
    starts = bin_dir / f"{name}.starts"
    if WINDOWS:
        path = bin_dir / f"{name}.cmd"
        body = ["@echo off", f'echo started>>"{starts}"', *(f"echo {line}" for line in lines)]
        path.write_text("\r\n".join(body) + "\r\n", encoding="utf-8")
    else:
        path = bin_dir / name
        body = ["#!/bin/sh", f"echo started >> '{starts}'", *(f"echo '{line}'" for line in lines)]
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
        path.chmod(0o755)
    return path


def starts(bin_dir: Path, name: str) -> int:
    path = bin_dir / f"{name}.starts"
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


@pytest.fixture
def bin_dir(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = project.path / "fake-bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("GEMDIRECT_CACHE_DIR", str(project.path / "user-cache"))
    fake_tool(folder, "node", ["v99.1.0"])
    fake_tool(folder, "npm", ["42.0.0"])
    fake_tool(folder, "nvidia-smi", ["Fake RTX, 24576, 20000, 999.9"])
    return folder


def env_run(project: pytest.Pytester, name: str) -> dict:
    run_dir = project.path / name
    result = runpytest(project, "-p", "no:cacheprovider", "-m", "env", f"--run-dir={run_dir}")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    return summary_of(run_dir)["environment"]


def test_an_unchanged_node_and_npm_are_asked_once_and_nvidia_smi_every_run(
    project: pytest.Pytester, bin_dir: Path
) -> None:
    first = env_run(project, "run-1")
    second = env_run(project, "run-2")
    assert (first["node"], first["npm"]) == (second["node"], second["npm"]) == ("v99.1.0", "42.0.0")
    assert first["tool_versions_remembered"] == []
    assert second["tool_versions_remembered"] == ["node", "npm"]  # said so, not hidden
    assert (starts(bin_dir, "node"), starts(bin_dir, "npm")) == (1, 1)
    assert starts(bin_dir, "nvidia-smi") == 2  # free memory is news at every run
    assert second["gpu"]["gpus"][0]["name"] == "Fake RTX"


def test_a_changed_executable_is_asked_again(project: pytest.Pytester, bin_dir: Path) -> None:
    env_run(project, "run-1")
    fake_tool(bin_dir, "node", ["v100.0.0-upgraded"])  # another size and modification time
    second = env_run(project, "run-2")
    assert second["node"] == "v100.0.0-upgraded"
    assert second["tool_versions_remembered"] == ["npm"]
    assert (starts(bin_dir, "node"), starts(bin_dir, "npm")) == (2, 1)


def test_a_cache_folder_that_cannot_be_written_only_costs_the_probes(
    project: pytest.Pytester, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = project.path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("GEMDIRECT_CACHE_DIR", str(blocker))
    assert env_run(project, "run-1")["node"] == env_run(project, "run-2")["node"] == "v99.1.0"
    assert starts(bin_dir, "node") == 2
