"""The package works installed non-editable: schemas, workflows and the simulator data ship inside it."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

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


def test_loading_the_plugin_leaves_the_stage_machinery_unloaded() -> None:
    # pytest loads the plugin in every run of the user's, unit tests included: the HTTP clients,
    # Pillow, psutil, jsonschema and the video decoders (PyAV, numpy) load only when a pipeline run
    # needs them.
    heavy = ("PIL", "requests", "websocket", "aiohttp", "jsonschema", "psutil", "av", "numpy")
    code = f"import sys, pytest_gemdirect.plugin\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""
