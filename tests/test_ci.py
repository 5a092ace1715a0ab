"""What a CI runner gets: JUnit properties per scene, a job-page summary, and an example workflow."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.outside import REPO, run_e2e

WORKFLOW = REPO / "examples" / "ci" / "github-actions-gpu.yml"


def test_junit_xml_carries_each_scenes_figures(project: pytest.Pytester) -> None:
    junit = project.path / "junit.xml"
    result, _, _ = run_e2e(project, f"--junitxml={junit}", "--scenes", "2")
    result.assert_outcomes(passed=9, skipped=1)
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    frames = {p.get("name"): p.get("value") for p in cases["test_frames[scene-002]"].iter("property")}
    assert frames["scene_status"] == "passed" and frames["frame_count"] == "25"
    assert float(frames["generation_s"]) >= 0 and float(frames["retrieval_s"]) >= 0
    assert frames["prompt_id"]


def test_a_github_job_page_gets_the_verdict_and_what_went_wrong(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = project.path / "step-summary.md"
    page.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(page))
    run_e2e(project, "--sim-fault", "execution-error@scene-002", "--max-scene-retries", "0")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n### gemdirect: FAILED")
    assert "| 5 | generation | failed |" in text
    assert re.search(r"\| `svd\[scene-002\]` \| scene-002 generation: .*execution_error", text)
    assert "report.html" in text


def test_no_job_page_outside_github(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result, run_dir, _ = run_e2e(project, "--scenes", "1")
    result.assert_outcomes(passed=7, skipped=1)
    assert not list(project.path.glob("*.md"))


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
