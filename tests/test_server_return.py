"""A ComfyUI that dies mid-run (issue 22): relaunched when the harness launched it, waited for
otherwise; a finished scene keeps its frames; what happened, and what it cost, in the summary and
the report. From the outside: a user's project runs ``pytest -m e2e`` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.outside import (
    FAKES,
    SMOKE,
    events,
    processes_from,
    read_summary,
    run_e2e,
    scenes,
    summary_of,
)

QUICK = ("--story-mode", "fallback", "--history-poll-interval", "0.3", "--ws-idle-timeout", "2")


def frames_on_disk(run_dir: Path, scene_id: str) -> int:
    return len(list((run_dir / scene_id / "generated-frames").iterdir()))


def test_crash_restart_on_the_embedded_simulator_every_scene_passes(project: pytest.Pytester) -> None:
    result, run_dir, _ = run_e2e(project, *QUICK, "--scenes", "3", "--sim-fault", "crash-restart@scene-002")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    by_scene = scenes(data)
    assert [s["status"] for s in data["scenes"]] == ["passed"] * 3
    crashed = by_scene["scene-002"]["attempts"]
    assert crashed[0]["outcome"] == "server_gone" and crashed[-1]["outcome"] == "success"
    assert "went away" in crashed[0]["reason"]
    for scene_id, scene in by_scene.items():  # every frame of every scene is on disk
        assert scene["frame_count"] > 0 and frames_on_disk(run_dir, scene_id) == scene["frame_count"]
    [incident] = data["server_incidents"]
    assert incident["how"] == "returned" and incident["scene"] == "scene-002"
    assert incident["seconds"] > 0 and "answered again" in incident["detail"]
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Servers that went away" in report and "answered again after" in report
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    assert "servers that went away:" in text and "server-1 during scene-002: returned" in text


def test_crash_for_good_keeps_the_finished_scene_and_names_the_server_and_the_wait(
    project: pytest.Pytester,
) -> None:
    result, run_dir, _ = run_e2e(
        project, *QUICK, "--scenes", "3", "--server-return-wait", "1", "--sim-fault", "crash@scene-002"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    by_scene = scenes(data)
    first = by_scene["scene-001"]
    assert first["status"] == "passed", first["message"]
    assert first["frame_count"] == 25 and frames_on_disk(run_dir, "scene-001") == 25
    url = data["backends"]["comfyui"]["url"]
    for later in ("scene-002", "scene-003"):
        message = by_scene[later]["message"]
        assert by_scene[later]["status"] == "failed"
        assert url in message and "--server-return-wait = 1" in message, message
    [incident] = data["server_incidents"]
    assert incident["how"] == "lost" and "did not answer again within 1 s" in incident["detail"]


def test_restart_between_scenes_the_earlier_scenes_frames_are_all_kept(project: pytest.Pytester) -> None:
    result, run_dir, _ = run_e2e(project, *QUICK, "--scenes", "3", "--sim-fault", "restart-between@scene-002")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert [s["status"] for s in data["scenes"]] == ["passed"] * 3
    for scene in data["scenes"]:
        assert scene["frame_count"] == 25 and frames_on_disk(run_dir, scene["id"]) == 25
    assert [i["how"] for i in data["server_incidents"]] == ["returned"]
    # scene-002's prompt was lost with the restarted server's queue: it ran again
    assert scenes(data)["scene-002"]["attempts"][0]["outcome"] == "server_gone"


def test_a_launched_comfyui_that_crashes_is_relaunched_on_its_folders(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    install = FAKES / "good"
    base = tmp_path / "comfyui-base"
    result, run_dir, _ = run_e2e(
        project,
        *QUICK,
        "--scenes",
        "3",
        f"--comfyui-dir={install}",
        f"--comfyui-args=--base-directory {base}",
        f"--workflow={SMOKE}",
        "--sim-fault",
        "crash-restart@scene-002",
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert [s["status"] for s in data["scenes"]] == ["passed"] * 3
    [incident] = data["server_incidents"]
    assert incident["how"] == "relaunched" and incident["cause"]["exit_code"] == 3
    assert "crash-restart" in incident["cause"]["log_tail"]  # the last lines of the dead one's log
    assert "relaunched (1 of --max-server-restarts = 1)" in incident["detail"]
    assert incident["log"].endswith("comfyui-2.log")
    assert "Starting server" in (run_dir / "comfyui-2.log").read_text(encoding="utf-8")
    cost = scenes(data)["scene-002"]["attempts"][0]
    assert cost["outcome"] == "server_gone" and cost["cause"]["exit_code"] == 3
    assert "exit code 3" in cost["reason"]
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "relaunched" in report and "comfyui-2.log" in report
    _ended, alive = psutil.wait_procs(processes_from(install), timeout=30)
    assert not alive, [p.pid for p in alive]


def test_a_launched_comfyui_killed_mid_scene_is_relaunched(project: pytest.Pytester, tmp_path: Path) -> None:
    install = FAKES / "good"
    run_dir = project.path / "run"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "e2e", f"--run-dir={run_dir}"]
    argv += [*QUICK, "--scenes", "2", f"--comfyui-dir={install}"]
    argv += [f"--comfyui-args=--base-directory {tmp_path / 'base'} --sim-step-seconds 0.5"]
    out_to = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    proc = subprocess.Popen(argv, cwd=project.path, **out_to)
    try:
        pid = _wait_until_scene_runs(proc, run_dir, "scene-001")
        psutil.Process(pid).kill()  # SIGKILL; TerminateProcess on Windows
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    data = summary_of(run_dir)
    assert [s["status"] for s in data["scenes"]] == ["passed", "passed"]
    [incident] = data["server_incidents"]
    assert incident["how"] == "relaunched" and incident["cause"]["exit_code"] is not None
    killed = scenes(data)["scene-001"]["attempts"]
    assert killed[0]["outcome"] == "server_gone" and killed[-1]["outcome"] == "success"


def _wait_until_scene_runs(proc: subprocess.Popen, run_dir: Path, scene_id: str) -> int:
    """The launched ComfyUI's pid once the scene's prompt is executing on it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        data = read_summary(run_dir / "run-summary.json") or {}
        pid = (data.get("backends", {}).get("comfyui") or {}).get("pid")
        started = (run_dir / scene_id / "events.jsonl").is_file() and any(
            e.get("type") == "execution_start" for e in events(run_dir, scene_id)
        )
        if pid and started:
            return int(pid)
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"{scene_id} never ran: {proc.stdout.read() if proc.stdout else ''}")
