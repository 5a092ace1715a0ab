"""The scale benchmark of issue 13: one table, each figure the median of repeated runs.

    python benchmarks/scale.py [--repeats 3] [--only comfy,scaling,stall,polling,rss,plugin]

Loopback only; it starts its own simulators (``python -m pytest_gemdirect.sim``) and runs the
harness as a user would (``pytest -m e2e`` in a small project with the one import line).
comfy-cli (PyPI) is installed once into benchmarks/.cache/comfy-cli. Progress goes to stderr,
the table to stdout. Not part of the test suite. About 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from scale_tools import (
    Measured,
    Simulator,
    comfy_cli,
    comfy_env,
    comfy_workflow,
    events,
    executions,
    harness_cmd,
    idle_gaps,
    make_project,
    median,
    run_measured,
    temp_folder,
    upload_keyframe,
    workflow_with_frames,
)

FALLBACK = ("--story-mode", "fallback")
STALL_WAIT_S = 3.0


@dataclass
class Row:
    figure: str
    value: str
    goal: str
    met: bool | None  # None: no goal, for information


def note(text: str) -> None:
    print(f"benchmark: {text}", file=sys.stderr, flush=True)


def checked(m: Measured, what: str, expect_ok: bool = True) -> Measured:
    if (m.returncode == 0) != expect_ok:
        tail = "\n".join(m.output.splitlines()[-25:])
        raise SystemExit(f"benchmark: {what} exited with {m.returncode}:\n{tail}")
    return m


# ------------------------------------------------------------------------------------ against comfy-cli
def against_comfy_cli(tmp: Path, repeats: int) -> list[Row]:
    comfy = str(comfy_cli())
    project = make_project(tmp / "project")
    with Simulator(tmp / "sim") as sim:
        args = ("--scenes", "1", *FALLBACK, f"--comfyui-url={sim.url}")
        warm = tmp / "harness-warm-up"
        checked(run_measured(harness_cmd(warm, *args), project), "the harness (warm-up)")
        keyframe = warm / "scene-001" / "keyframe.png"

        def comfy_run(tag: str) -> Measured:
            name = f"bench-comfy-{tag}.png"
            upload_keyframe(sim.url, keyframe, name)  # uploaded before the clock starts
            workflow = comfy_workflow(warm, name, f"bench/comfy-{tag}/frame", tmp / f"comfy-{tag}.json")
            cmd = [comfy, "run", "--workflow", str(workflow), "--wait", "--host", sim.host]
            return checked(run_measured([*cmd, "--port", str(sim.port)], project, comfy_env()), "comfy run")

        comfy_run("warm-up")
        harness, cli = [], []
        for i in range(repeats):
            note(f"against comfy-cli {i + 1}/{repeats}")
            run = checked(run_measured(harness_cmd(tmp / f"harness-{i}", *args), project), "the harness")
            harness.append(run.wall_s)
            cli.append(comfy_run(str(i)).wall_s)
        # The server's own execution of each job (its log), in run order: warm-ups, then pairs.
        runs = executions(sim.log_path)[2:]
    server_h = median([e.end - e.start for e in runs[0::2]])
    server_c = median([e.end - e.start for e in runs[1::2]])
    ratio = median(harness) / median(cli)
    return [
        Row(
            "pytest -m e2e --scenes 1 (whole process, 25 frames): wall (beyond the server's execution)",
            f"{median(harness):.2f} s ({median(harness) - server_h:.2f} s)",
            "",
            None,
        ),
        Row(
            "comfy run --workflow ... --wait (same job, same server): wall (beyond the server's execution)",
            f"{median(cli):.2f} s ({median(cli) - server_c:.2f} s)",
            "",
            None,
        ),
        Row("ratio harness / comfy-cli", f"{ratio:.2f}", "<= 1.0", ratio <= 1.0),
    ]


# ------------------------------------------------------------------------------------ scaling and idle gap
def _scenes_phase_s(run_dir: Path, scenes: int) -> float:
    """From the first scene's first event to the last scene's last event (the pool at work)."""
    stamps = []
    for n in range(1, scenes + 1):
        evs = [e for e in events(run_dir, f"scene-{n:03d}") if "t" in e]
        stamps += [datetime.fromisoformat(evs[0]["t"]), datetime.fromisoformat(evs[-1]["t"])]
    return (max(stamps) - min(stamps)).total_seconds()


def scaling(tmp: Path, repeats: int) -> list[Row]:
    project = make_project(tmp / "project")
    walls: dict[int, list[float]] = {}
    phases: dict[int, list[float]] = {}
    cpu: dict[int, list[tuple[float, float]]] = {}
    gaps: list[float] = []
    for i in range(repeats):
        for servers in (1, 2, 4):
            note(f"scaling: 8 scenes on {servers} server(s), {i + 1}/{repeats}")
            run_dir = tmp / f"scaling-{servers}-{i}"
            args = ("--scenes", "8", *FALLBACK, "--sim-servers", str(servers), "--sim-step-seconds", "0.1")
            m = checked(run_measured(harness_cmd(run_dir, *args), project), f"8 scenes on {servers}")
            walls.setdefault(servers, []).append(m.wall_s)
            phases.setdefault(servers, []).append(_scenes_phase_s(run_dir, 8))
            cpu.setdefault(servers, []).append((m.cpu_s.get("harness", 0.0), m.cpu_s.get("simulator", 0.0)))
            for log in sorted(run_dir.glob("simulator*.log")):
                gaps += idle_gaps(executions(log))
    rows = []
    for servers in (1, 2, 4):
        harness_cpu = median([c[0] for c in cpu[servers]])
        sim_cpu = median([c[1] for c in cpu[servers]])
        rows.append(
            Row(
                f"8 scenes x 2 s on {servers} server(s): wall (scenes phase)",
                f"{median(walls[servers]):.2f} s ({median(phases[servers]):.2f} s);"
                f" CPU harness {harness_cpu:.1f} s, simulators {sim_cpu:.1f} s",
                "",
                None,
            )
        )
    speedup = median(walls[1]) / median(walls[4])
    phase_speedup = median(phases[1]) / median(phases[4])
    rows.append(
        Row(
            "speed-up 4 servers vs 1: wall (scenes phase)",
            f"{speedup:.2f}x ({phase_speedup:.2f}x)",
            ">= 3.5x",
            speedup >= 3.5,
        )
    )
    rows.append(
        Row(
            f"idle gap between consecutive scenes on one server (median, max of {len(gaps)})",
            f"{median(gaps) * 1000:.1f} ms, {max(gaps, default=float('nan')) * 1000:.1f} ms",
            "< 50 ms",
            max(gaps, default=1.0) < 0.05,
        )
    )
    return rows


# ------------------------------------------------------------------------------------ stall detection
def stall_detection(tmp: Path, repeats: int) -> list[Row]:
    project = make_project(tmp / "project")
    errors = []
    for i in range(repeats):
        note(f"stall detection {i + 1}/{repeats}")
        run_dir = tmp / f"stall-{i}"
        args = ("--scenes", "1", *FALLBACK, "--sim-fault", "stall@scene-001")
        args += ("--scene-max-wait", f"{STALL_WAIT_S:g}", "--max-scene-retries", "0")
        checked(run_measured(harness_cmd(run_dir, *args), project), "the stall run", expect_ok=False)
        evs = [e for e in events(run_dir, "scene-001") if "s" in e]
        posted = next(e["s"] for e in evs if e["event"] == "post_prompt")
        failed = next(e["s"] for e in evs if e["event"] == "failed")
        errors.append(failed - posted - STALL_WAIT_S)
    value = median(errors)
    return [
        Row(
            f"stall detection error (failure after POST - scene-max-wait {STALL_WAIT_S:g} s)",
            f"{value * 1000:+.0f} ms",
            "",
            None,
        )
    ]


# ------------------------------------------------------------------------------------ polling load
def polling_load(tmp: Path, repeats: int) -> list[Row]:
    project = make_project(tmp / "project")
    rates: dict[str, list[float]] = {"normal": [], "ws-silent": []}
    for i in range(repeats):
        for mode in rates:
            note(f"polling load ({mode}) {i + 1}/{repeats}")
            run_dir = tmp / f"polling-{mode}-{i}"
            args = ["--scenes", "1", *FALLBACK, "--sim-step-seconds", "0.25"]  # a 5 s generation
            if mode == "ws-silent":
                args += ["--sim-fault", "ws-silent", "--ws-idle-timeout", "1"]
            checked(run_measured(harness_cmd(run_dir, *args), project), f"the {mode} run")
            rates[mode] += [e.request_rate for e in executions(run_dir / "simulator.log")]
    return [
        Row(
            "requests/s at the server while a 5 s job runs (WebSocket)",
            f"{median(rates['normal']):.2f}",
            "< 2",
            median(rates["normal"]) < 2,
        ),
        Row(
            "requests/s while polling (ws-silent, --ws-idle-timeout 1)",
            f"{median(rates['ws-silent']):.2f}",
            "< 2",
            median(rates["ws-silent"]) < 2,
        ),
    ]


# ------------------------------------------------------------------------------------ peak RSS
def peak_rss(tmp: Path, repeats: int) -> list[Row]:
    project = make_project(tmp / "project")
    harness: dict[int, list[float]] = {}
    sim_peak: dict[int, list[float]] = {}
    for frames in (25, 250):
        workflow = workflow_with_frames(frames, tmp / f"svd-{frames}.json")
        for i in range(repeats):
            note(f"peak RSS, {frames} frames, {i + 1}/{repeats}")
            with Simulator(tmp / f"rss-sim-{frames}-{i}") as sim:
                args = ("--scenes", "1", *FALLBACK, f"--comfyui-url={sim.url}", f"--workflow={workflow}")
                args += ("--min-motion", "0")  # 250 frames of the simulator's pan move too little a frame
                m = checked(run_measured(harness_cmd(tmp / f"rss-{frames}-{i}", *args), project), "rss run")
                harness.setdefault(frames, []).append(m.peak_rss_mb)
                sim_peak.setdefault(frames, []).append(sim.peak_rss_mb())
    rows = []
    for who, peaks in (("harness", harness), ("simulator", sim_peak)):
        small, large = median(peaks[25]), median(peaks[250])
        rows.append(
            Row(
                f"peak RSS of the {who}, 25 vs 250 frames",
                f"{small:.0f} MB vs {large:.0f} MB ({large - small:+.0f} MB)",
                "within 50 MB",
                abs(large - small) <= 50,
            )
        )
    return rows


# ------------------------------------------------------------------------------------ plugin cost
def plugin_cost(tmp: Path, repeats: int) -> list[Row]:
    project = tmp / "plain-project"
    project.mkdir(parents=True)
    (project / "test_one.py").write_text("def test_one():\n    pass\n", encoding="utf-8")
    base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]
    with_plugin, without = [], []
    for i in range(max(10, repeats)):
        note(f"plugin cost {i + 1}/{max(10, repeats)}")
        with_plugin.append(checked(run_measured(base, project), "pytest --co").wall_s)
        without.append(checked(run_measured([*base, "-p", "no:gemdirect"], project), "pytest --co").wall_s)
    cost = median(with_plugin) - median(without)
    return [
        Row(
            "plugin cost when unused (pytest --co -q, median of 10)",
            f"{cost * 1000:+.0f} ms ({median(with_plugin):.3f} s vs {median(without):.3f} s)",
            "< 50 ms",
            cost < 0.05,
        )
    ]


SECTIONS: dict[str, Callable[[Path, int], list[Row]]] = {
    "comfy": against_comfy_cli,
    "scaling": scaling,
    "stall": stall_detection,
    "polling": polling_load,
    "rss": peak_rss,
    "plugin": plugin_cost,
}


def print_table(rows: list[Row]) -> None:
    header = ("figure", "median", "goal", "met")
    cells = [(r.figure, r.value, r.goal, {True: "yes", False: "NO", None: ""}[r.met]) for r in rows]
    widths = [max(len(c[k]) for c in [header, *cells]) for k in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for cell in [header, *cells]:
        print("  ".join(text.ljust(w) for text, w in zip(cell, widths, strict=True)).rstrip())
        if cell is header:
            print(line)
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    parser.add_argument("--keep", action="store_true", help="keep the run directories (path on stderr)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    tmp = temp_folder("gemdirect-scale-")
    rows: list[Row] = []
    try:
        for name in chosen:
            rows += SECTIONS[name](tmp / name, args.repeats)
    except SystemExit:
        print_table(rows)  # the figures so far
        raise
    finally:
        if args.keep:
            note(f"run directories kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
