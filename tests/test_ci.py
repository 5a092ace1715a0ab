"""What a CI runner gets: JUnit properties per scene, a job-page summary, and an example workflow."""

from __future__ import annotations

import re
import shlex
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.outside import REPO
from tests.runs import FAILED_SCENE, PASSING, SharedRuns

WORKFLOW = REPO / "examples" / "ci" / "github-actions-gpu.yml"


def test_junit_xml_carries_each_scenes_figures(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # its command line has --junitxml={project}/junit.xml
    junit = run.project / "junit.xml"
    run.result.assert_outcomes(passed=11 + 3, skipped=1)  # the stages, the README's check; no suites
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    frames = {p.get("name"): p.get("value") for p in cases["test_frames[scene-002]"].iter("property")}
    assert frames["scene_status"] == "passed" and frames["frame_count"] == "25"
    assert float(frames["generation_s"]) >= 0 and float(frames["retrieval_s"]) >= 0
    assert frames["prompt_id"]


def test_a_github_job_page_gets_the_verdict_and_what_went_wrong(shared_runs: SharedRuns) -> None:
    # the run's GITHUB_STEP_SUMMARY is step-summary.md in its project, which said "earlier step" before
    run = shared_runs.get(FAILED_SCENE)
    text = (run.project / "step-summary.md").read_text(encoding="utf-8")
    assert text.startswith("earlier step\n### gemdirect: FAILED")
    assert "| 5 | generation | failed |" in text
    assert re.search(r"\| `svd\[scene-002\]` \| scene-002 generation: .*execution_error", text)
    assert "report.html" in text


def test_no_job_page_outside_github(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(PASSING)  # shared runs never inherit GITHUB_STEP_SUMMARY unless asked to
    run.result.assert_outcomes(passed=11 + 3, skipped=1)
    assert not list(run.project.glob("*.md")) and not list(run.run_dir.glob("*.md"))


def _commands(job: dict) -> list[str]:
    lines = []
    for step in job["steps"]:
        for line in step.get("run", "").replace("`\n", " ").replace("\\\n", " ").splitlines():
            lines.append(" ".join(line.split()))
    return lines


def test_the_example_ci_workflow_runs_the_readmes_commands_on_windows_and_linux() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "examples/ci/github-actions-gpu.yml" in readme
    labels = {name: job["runs-on"] for name, job in workflow["jobs"].items()}
    assert any("windows" in runs_on for runs_on in labels.values())
    assert any("linux" in runs_on for runs_on in labels.values())
    for name, job in workflow["jobs"].items():
        commands = _commands(job)
        assert 'pip install -e ".[dev]"' in commands, name  # the README's set-up
        assert 'pytest -m "not e2e"' in commands, name  # the README's test command
        e2e = [c for c in commands if c.startswith("pytest -m e2e")]
        if any("--replay=" in c for c in e2e):  # the CPU job: the GPU job's trace, downloaded
            downloads = [
                s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/download-artifact")
            ]
            assert downloads and job["needs"] in workflow["jobs"], name
            assert all("--require-real-backends" not in c and "--junitxml=" in c for c in e2e), name
        else:
            assert e2e and all("--require-real-backends true" in c and "--junitxml=" in c for c in e2e), name
        upload = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
        assert upload and upload[0]["if"] == "always()", name
    for command in ('pip install -e ".[dev]"', 'pytest -m "not e2e"', "pytest -m e2e"):
        assert command in readme


def test_ci_and_the_suite_benchmark_run_the_readmes_test_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_benchmark", REPO / "benchmarks" / "test_suite.py")
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclasses look their module up
    spec.loader.exec_module(benchmark)
    command = benchmark.readme_test_command()
    assert command[:3] == ["pytest", "-m", "not e2e"] and "-n" in command  # on xdist's workers
    ci_lines = [
        " ".join(line.split()) for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ]
    assert shlex.join(command).replace("'", '"') in ci_lines


def test_the_readmes_set_up_shows_the_venv_for_linux_macos_and_powershell() -> None:
    """A new user copies the set-up as it stands: a venv first, on either kind of machine."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    set_up = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    for line in (
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        "py -m venv .venv",
        ".venv\\Scripts\\Activate.ps1",
    ):
        assert line in set_up, line
    assert set_up.count('pip install -e ".[dev]"') == 2  # after each activation
    assert "```powershell" in set_up
