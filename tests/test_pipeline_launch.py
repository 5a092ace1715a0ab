"""Launching ComfyUI from an install folder (``--comfyui-dir``), from the outside, with the fake
installs in tests/fake_comfyui."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.outside import (
    FAKES,
    SMOKE,
    PipelineRun,
    own_install,
    processes_from,
    run_e2e,
    runpytest,
    stages,
    summary_of,
)

SHORT = ("--story-mode", "fallback", "--scenes", "1", "--history-poll-interval", "0.3")


def run_short(project: pytest.Pytester, *args: str) -> PipelineRun:
    """``run_e2e`` with ``-rs`` and a one-scene fallback story."""
    return run_e2e(project, "-rs", *SHORT, *args)


def test_launched_comfyui_runs_the_pipeline_and_is_gone_afterwards(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    install = own_install("good", tmp_path)
    result, run_dir, _ = run_short(project, f"--comfyui-dir={install}", f"--workflow={SMOKE}")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    comfyui = data["backends"]["comfyui"]
    assert comfyui["target"] == "launched"
    assert comfyui["simulated"] is False
    assert (run_dir / "comfyui.log").is_file()
    assert "IMPORT FAILED" in (run_dir / "comfyui.log").read_text(encoding="utf-8")
    assert any("ComfyUI-Foo" in w and "failed to import" in w for w in data["warnings"]), data["warnings"]
    _ended, alive = psutil.wait_procs(processes_from(install), timeout=30)
    left = [(p.pid, p.info["cmdline"]) for p in alive]
    assert not left, f"processes from {install} still running: {left}"


def test_comfyui_that_crashes_on_boot_fails_the_stage_quickly(project: pytest.Pytester) -> None:
    install = FAKES / "crash_on_boot"
    # a boot timeout no test waits for: the stage can only end through noticing the crash
    result, run_dir, _elapsed = run_short(
        project, f"--comfyui-dir={install}", f"--workflow={SMOKE}", "--comfyui-boot-timeout", "3600"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    by_stage = stages(data)
    message = by_stage["comfyui"]["message"]
    assert by_stage["comfyui"]["status"] == "failed"
    assert "exited during start-up with exit code 3" in message
    assert "--comfyui-boot-timeout" not in message  # the crash, not the deadline
    assert "comfyui.log" in message and "Last" in message  # the log tail
    assert "Checkpoint files will always be loaded safely." in message
    assert by_stage["svd"]["status"] == by_stage["frames"]["status"] == "not_reached"
    assert [scene["status"] for scene in data["scenes"]] == ["not_reached"]
    result.stdout.fnmatch_lines(["*exited during start-up with exit code*"])


def test_comfyui_url_and_dir_together_is_a_usage_error(project: pytest.Pytester) -> None:
    result = runpytest(
        project,
        "-p",
        "no:cacheprovider",
        "-m",
        "e2e",
        "--comfyui-url",
        "http://127.0.0.1:8188",
        "--comfyui-dir",
        str(FAKES / "good"),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*comfyui_url (from --comfyui-url) and comfyui_dir (from --comfyui-dir)*set only one*"]
    )


def test_one_comfyui_per_gpu_each_pinned_with_its_own_port_and_log(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    install = own_install("good", tmp_path)
    pool = (f"--comfyui-dir={install}", "--comfyui-gpus=0,1", f"--workflow={SMOKE}")
    result, run_dir, _ = run_e2e(project, "--story-mode", "fallback", "--scenes", "2", *pool)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    servers = {server["url"] for server in data["comfyui"]["servers"]}
    assert len(servers) == 2  # two ports
    for gpu in (0, 1):
        log = (run_dir / f"comfyui-gpu{gpu}.log").read_text(encoding="utf-8")
        assert f"Set cuda device to: {gpu}" in log
    assert {scene["server"] for scene in data["scenes"]} <= servers
    _ended, alive = psutil.wait_procs(processes_from(install), timeout=30)
    assert not alive, [p.info["cmdline"] for p in alive]
