"""The package works installed non-editable: schemas, workflows and the simulator data ship inside it."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import json, pathlib, sys
from pytest_gemdirect.schemas_io import load_schema
from pytest_gemdirect.comfyui.workflow import default_workflow_path, load_workflow
import pytest_gemdirect
root = pathlib.Path(pytest_gemdirect.__file__).parent
assert str(root).startswith(sys.prefix), (root, sys.prefix)
load_schema("story.schema.json"); load_schema("run-summary.schema.json")
for name in ("svd_img2vid.json", "smoke.json", "smoke_video.json", "smoke_webm.json"):
    path = default_workflow_path(name)
    assert str(path).startswith(sys.prefix), path
    load_workflow(path)
assert (root / "sim" / "comfyui" / "object_info_0.3.64.json.gz").is_file()  # the simulator's node table
assert (root / "report" / "templates" / "page.html.j2").is_file()  # the report's templates ship
assert (root / "report" / "static" / "report.css").is_file()
print("ok", root)
"""


def test_non_editable_install_ships_schemas_and_workflows(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [str(python), "-c", CHECK], cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


HEAVY = ("PIL", "requests", "websocket", "aiohttp", "jsonschema", "psutil", "av", "numpy", "jinja2")
"""Libraries only a pipeline run needs (Jinja2 too: pytest-html imports it for itself, on use)."""
RUN_MODULES = ("run", "stages", "report", "suites", "services", "appcontract", "summary_io", "comfyui")
"""The plugin's own modules for a run: none of them loads where no pipeline test runs."""


def _loaded(names: tuple[str, ...], prefix: str = "") -> str:
    return f"','.join(m for m in {names!r} if {prefix!r} + m in sys.modules)"


def test_loading_the_plugin_leaves_the_stage_machinery_unloaded() -> None:
    # pytest loads the plugin in every run of the user's, unit tests included: the HTTP clients,
    # Pillow, psutil, jsonschema, Jinja2 and the video decoders (PyAV, numpy) load only when a
    # pipeline run needs them.
    code = f"import sys, pytest_gemdirect.pytest_plugin.hooks\nprint({_loaded(HEAVY)})"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""


UNRELATED = f"""
import sys


def test_unrelated():
    print("heavy:", {_loaded(HEAVY[:-1])})
    print("ours:", {_loaded(RUN_MODULES, "pytest_gemdirect.")})
"""


def test_an_unrelated_pytest_run_loads_none_of_the_runs_code(pytester: pytest.Pytester) -> None:
    # The whole start-up of a real run (options, settings, the start-up checks, xdist's part where
    # xdist is installed, collection): by the first test of a project with no pipeline test,
    # nothing a pipeline run needs was imported. (Jinja2 is left out: pytest-html loads it.)
    pytester.makepyfile(test_unrelated=UNRELATED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    said = {
        label: line.partition(f"{label}:")[2].strip()
        for line in result.stdout.lines
        for label in ("heavy", "ours")
        if f"{label}:" in line
    }
    assert said == {"heavy": "", "ours": ""}
    assert not (pytester.path / "logs").exists()  # and it made nothing
