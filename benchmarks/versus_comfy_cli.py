"""Issue 24's figures: the harness against comfy-cli on one scene, the pool's busy share, the
plugin's cost in an unrelated run.

    python benchmarks/versus_comfy_cli.py [--repeats 5] [--comfyui-url URL] [--only one,pool,plugin]

One scene: the graph of ``--workflow=smoke``, run by ``pytest -m e2e --scenes 1`` in a fresh user
project each time and by ``comfy run --wait`` (comfy-cli from PyPI, installed once into
benchmarks/.cache/), paired run by run, each job with a fresh ``filename_prefix`` so the server's
cache never skips it. Both talk to the same server: a simulator this script starts
(``python -m pytest_gemdirect.sim``, so neither pays for the server's CPU) or ``--comfyui-url``.
Pool: 8 scenes of the shipped SVD graph (2 s a job at --sim-step-seconds 0.1) on 1 and on 4
embedded simulators; each server's busy share of the scenes phase
from its own execution start/end log lines. Medians of ``--repeats``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from scale import FALLBACK, Row, checked, note, plugin_cost, print_table
from scale_tools import (
    Execution,
    Measured,
    Simulator,
    comfy_cli,
    comfy_env,
    comfy_workflow,
    executions,
    harness_cmd,
    make_project,
    median,
    run_measured,
    temp_folder,
    upload_keyframe,
)

SMOKE = ("--scenes", "1", "--workflow=smoke", *FALLBACK)


def _figures(label: str, runs: list[Measured], role: str = "harness") -> tuple[float, float, float]:
    wall = median([m.wall_s for m in runs])
    cpu = median([sum(v for k, v in m.cpu_s.items() if k != "simulator") for m in runs])
    rss = median([m.peak_rss_mb for m in runs])
    note(f"{label}: wall {wall:.2f} s, CPU {cpu:.2f} s, peak RSS {rss:.0f} MB")
    return wall, cpu, rss


def one_scene(tmp: Path, repeats: int, url: str | None) -> list[Row]:
    comfy = str(comfy_cli())
    sim = None if url else Simulator(tmp / "sim")
    try:
        target = url or (sim.url if sim else "")
        parsed = urlparse(target)
        args = (*SMOKE, f"--comfyui-url={target}")
        warm = tmp / "harness-warm-up"
        checked(
            run_measured(harness_cmd(warm, *args), make_project(tmp / "project-warm-up")), "harness warm-up"
        )
        keyframe = warm / "scene-001" / "keyframe.png"

        def comfy_run(tag: str) -> Measured:
            name = f"bench-comfy-{tag}.png"
            upload_keyframe(target, keyframe, name)  # before the clock starts
            workflow = comfy_workflow(warm, name, f"bench/comfy-{tag}/frame", tmp / f"comfy-{tag}.json")
            cmd = [comfy, "run", "--workflow", str(workflow), "--wait", "--host", str(parsed.hostname)]
            return checked(run_measured([*cmd, "--port", str(parsed.port)], tmp, comfy_env()), "comfy run")

        comfy_run("warm-up")
        harness: list[Measured] = []
        cli: list[Measured] = []
        for i in range(repeats):
            note(f"one scene, pair {i + 1}/{repeats}")
            project = make_project(tmp / f"project-{i}")  # a fresh user project every time
            harness.append(
                checked(run_measured(harness_cmd(tmp / f"harness-{i}", *args), project), "harness")
            )
            cli.append(comfy_run(str(i)))
    finally:
        if sim is not None:
            sim.stop()
    h_wall, h_cpu, h_rss = _figures("harness", harness)
    c_wall, c_cpu, c_rss = _figures("comfy-cli", cli)
    paired = median([h.wall_s / c.wall_s for h, c in zip(harness, cli, strict=True)])
    where = url or "a standalone simulator"
    return [
        Row(
            f"pytest -m e2e --scenes 1 --workflow=smoke on {where}: wall, CPU, peak RSS",
            f"{h_wall:.2f} s, {h_cpu:.2f} s, {h_rss:.0f} MB",
            "",
            None,
        ),
        Row(
            f"comfy run --wait, same graph, on {where}: wall, CPU, peak RSS",
            f"{c_wall:.2f} s, {c_cpu:.2f} s, {c_rss:.0f} MB",
            "",
            None,
        ),
        Row(
            "wall ratio harness / comfy-cli (median of the paired ratios)",
            f"{paired:.2f}",
            "<= 1.0",
            paired <= 1.0,
        ),
        Row(
            "CPU ratio harness / comfy-cli; peak RSS ratio",
            f"{h_cpu / c_cpu:.2f}; {h_rss / c_rss:.2f}",
            "",
            None,
        ),
    ]


def busy_shares(run_dir: Path) -> list[float]:
    """Each server's share of the scenes phase (first execution start to last end, all servers)
    that it spent executing, from the simulators' own log lines (one monotonic clock)."""
    per_server: list[list[Execution]] = [executions(log) for log in sorted(run_dir.glob("simulator*.log"))]
    every = [e for execs in per_server for e in execs]
    if not every:
        raise SystemExit(f"benchmark: no execution lines in {run_dir}/simulator*.log")
    phase = max(e.end for e in every) - min(e.start for e in every)
    return [sum(e.end - e.start for e in execs) / phase for execs in per_server]


def pool(tmp: Path, repeats: int, url: str | None) -> list[Row]:
    project = make_project(tmp / "project")
    walls: dict[int, list[float]] = {1: [], 4: []}
    shares: dict[int, list[list[float]]] = {1: [], 4: []}
    for i in range(repeats):
        for servers in (1, 4):
            note(f"pool: 8 scenes on {servers} server(s), {i + 1}/{repeats}")
            run_dir = tmp / f"pool-{servers}-{i}"
            args = ("--scenes", "8", *FALLBACK, "--sim-servers", str(servers))  # the SVD graph, 2 s a job
            m = checked(
                run_measured(harness_cmd(run_dir, *args, "--sim-step-seconds", "0.1"), project), "pool"
            )
            walls[servers].append(m.wall_s)
            shares[servers].append(busy_shares(run_dir))
    per_server = [median([run[k] for run in shares[4]]) for k in range(len(shares[4][0]))]
    return [
        Row(
            "8 scenes: wall on 1 server, on 4; speed-up",
            f"{median(walls[1]):.2f} s, {median(walls[4]):.2f} s; {median(walls[1]) / median(walls[4]):.2f}x",
            "",
            None,
        ),
        Row("busy share of the scenes phase, 1 server", f"{median([r[0] for r in shares[1]]):.0%}", "", None),
        Row(
            "busy share of the scenes phase, each of 4 servers",
            ", ".join(f"{s:.0%}" for s in per_server),
            ">= 90 % each",
            min(per_server) >= 0.9,
        ),
    ]


_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def plugin_imports(tmp: Path, repeats: int, url: str | None) -> list[Row]:
    """``python -X importtime -m pytest --co`` in a project with no pipeline test: the import time
    of the modules that load only with the plugin, plus the whole run's wall (scale.py's figure)."""
    project = tmp / "importtime-project"
    project.mkdir(parents=True)
    (project / "test_one.py").write_text("def test_one():\n    pass\n", encoding="utf-8")
    base = [sys.executable, "-X", "importtime", "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]

    def modules(*extra: str) -> dict[str, int]:
        done = subprocess.run([*base, *extra], cwd=project, capture_output=True, text=True, check=True)
        return {m[2]: int(m[1]) for m in _IMPORT.finditer(done.stderr)}

    costs, names = [], set()
    for _ in range(max(5, repeats)):
        with_plugin, without = modules(), modules("-p", "no:gemdirect")
        only = {name: us for name, us in with_plugin.items() if name not in without}
        costs.append(sum(only.values()) / 1000)
        names = set(only)
    heavy = sorted(n for n in names if n.split(".")[0] in {"psutil", "numpy", "av", "jsonschema", "requests"})
    rows = [
        Row(
            f"plugin's imports in an unrelated run (-X importtime, {len(names)} modules)",
            f"{median(costs):.1f} ms",
            "< 50 ms",
            median(costs) < 50,
        ),
        Row("heavy modules loaded in an unrelated run", ", ".join(heavy) or "none", "none", not heavy),
    ]
    return rows + plugin_cost(tmp / "wall", repeats)


SECTIONS = {"one": one_scene, "pool": pool, "plugin": plugin_imports}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--comfyui-url", default=None, help="a real ComfyUI for the one-scene figure")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--keep", action="store_true", help="keep the run directories (path on stderr)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in chosen if name not in SECTIONS]:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    tmp = temp_folder("gemdirect-versus-")
    rows: list[Row] = []
    try:
        for name in chosen:
            rows += SECTIONS[name](tmp / name, args.repeats, args.comfyui_url)
    finally:
        print_table(rows)
        if args.keep:
            note(f"run directories kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
