"""Every simulator fault from the outside: a generated project runs ``pytest -m e2e`` with
``--sim-fault`` and we check the exit status, run-summary.json and the files in the run directory.

Small policy values keep each run to a few seconds; a test that a deadline fired checks which
setting the failure names, never how long it took (figures belong in benchmarks/).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import jsonschema
import psutil
import pytest

from pytest_gemdirect.schemas_io import load_schema
from tests.outside import (
    FAST,
    GRACE_THAT_FIRES,
    SCENE_WAIT_THAT_FIRES,
    PipelineRun,
    events,
    gpu_requests,
    interrupt,
    is_running,
    items,
    posted_prompts,
    run_e2e,
    scenes,
    stages,
    start_stalled_run,
    summary_of,
    wait_for_scene_002_attempt,
)
from tests.runs import RECOVERED, RECOVERED_FAULTS, SharedRuns


def scene_fault_run(project: pytest.Pytester, fault: str, *extra: str, n: int = 3) -> PipelineRun:
    return run_e2e(
        project,
        "--story-mode",
        "fallback",
        "--scenes",
        str(n),
        *FAST,
        "--sim-fault",
        f"{fault}@scene-002",
        *extra,
    )


# --- ComfyUI faults ---------------------------------------------------------------------------


def test_history_never_fails_frames_of_that_scene_after_the_grace(project: pytest.Pytester) -> None:
    result, run_dir, _ = scene_fault_run(project, "history-never", *GRACE_THAT_FIRES)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    by_scene = scenes(data)
    assert by_scene["scene-001"]["status"] == "passed"
    assert by_scene["scene-003"]["status"] == "passed"
    assert by_scene["scene-002"]["status"] == "failed"
    frames = items(data, "frames")
    assert frames["frames[scene-002]"]["status"] == "failed"
    assert "--completion-grace" in frames["frames[scene-002]"]["message"]  # the grace ended it, not
    assert "--scene-max-wait" not in frames["frames[scene-002]"]["message"]  # the longer scene deadline
    assert frames["frames[scene-001]"]["status"] == frames["frames[scene-003]"]["status"] == "passed"
    assert stages(data)["summary"]["status"] == "passed"
    assert (run_dir / "report.html").is_file()
    kinds = [event.get("event") for event in events(run_dir, "scene-002")]
    assert "poll" in kinds
    # our prompt is taken out of the queue; it is interrupted only if it is the one running (the
    # next scene of ours may already be running there, and is left alone)
    assert "dequeue" in kinds
    result.stdout.fnmatch_lines(["*--completion-grace*"])


def test_history_late_within_the_grace_passes_with_a_warning(project: pytest.Pytester) -> None:
    # the simulator stores history ~3 s late; an 8 s grace covers it
    result, run_dir, _ = run_e2e(
        project,
        "--story-mode",
        "fallback",
        "--scenes",
        "2",
        "--completion-grace",
        "8",
        "--scene-max-wait",
        "30",
        "--ws-idle-timeout",
        "1",
        "--history-poll-interval",
        "0.3",
        "--sim-fault",
        "history-late@scene-002",
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = summary_of(run_dir)
    assert data["status"] == "passed"
    late = [
        w for w in data["warnings"] if "scene-002" in w and "history came" in w and "after completion" in w
    ]
    assert late, data["warnings"]
    assert "--completion-grace" in late[0]


@pytest.mark.parametrize(
    ("fault", "note"), [("ws-drop", "websocket dropped"), ("ws-silent", "websocket silent")]
)
def test_websocket_faults_pass_by_polling_with_a_note(shared_runs: SharedRuns, fault: str, note: str) -> None:
    run = shared_runs.get(RECOVERED)  # one recovered fault a scene; scene-001 clean
    (scene_id,) = [scene for scene, recovered in RECOVERED_FAULTS.items() if recovered == fault]
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    data = summary_of(run.run_dir)
    assert data["status"] == "passed"
    notes = scenes(data)[scene_id]["notes"]
    assert any(note in n and "polling" in n for n in notes), notes
    assert scenes(data)["scene-001"]["notes"] == []


def test_stall_fails_generation_at_scene_max_wait_naming_last_progress(project: pytest.Pytester) -> None:
    result, run_dir, _ = scene_fault_run(project, "stall", *SCENE_WAIT_THAT_FIRES, "--max-scene-retries", "0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    svd = items(data, "svd")["svd[scene-002]"]
    assert svd["status"] == "failed"
    assert "--scene-max-wait" in svd["message"]
    assert "last progress 19/20" in svd["message"]  # the simulator stops at step max-1
    scene = scenes(data)["scene-002"]
    assert scene["status"] == "failed" and scene["failed_stage"] == "svd"
    assert scene["evidence"]["interrupt_sent"]
    assert scenes(data)["scene-001"]["status"] == scenes(data)["scene-003"]["status"] == "passed"


SCENE_002_TIMEOUT = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.name == "test_generation[scene-002]":
            item.add_marker(pytest.mark.timeout(4))
"""
"""The user's own timeout on scene-002's generation alone: the stages before it may take any time
a busy machine needs (a --timeout 4 for every test fired in test_environment under load)."""


def _stalled_under_user_timeout(project: pytest.Pytester, *extra: str) -> PipelineRun:
    """scene-002 stalls under a long scene-max-wait; the user's timeout of 4 s on its generation test
    ends that test first (``--timeout 600``: the user set one, so the harness adds no backstop)."""
    project.makeconftest(SCENE_002_TIMEOUT)
    return run_e2e(
        project, "--story-mode", "fallback", "--scenes", "2", "--scene-max-wait", "300",
        "--sim-fault", "stall@scene-002", "--timeout", "600", *extra,
    )  # fmt: skip


def test_a_user_timeout_that_ends_a_scene_first_is_recorded_as_that_stage_failing(
    project: pytest.Pytester,
) -> None:
    # The user's own --timeout stands (no backstop of ours) and fires inside scene-002's generation,
    # long before its scene-max-wait: the summary must say the stage failed, not leave it running.
    result, run_dir, _ = _stalled_under_user_timeout(project)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    svd = items(data, "svd")["svd[scene-002]"]
    assert svd["status"] == "failed" and "Timeout" in svd["message"], svd
    scene = scenes(data)["scene-002"]
    assert scene["status"] == "failed" and scene["failed_stage"] == "svd"
    # the harness stopped the scene's job when its test ran out of time, and says so
    (attempt,) = scene["attempts"]
    assert attempt["outcome"] == "interrupted" and "its test was ended" in attempt["reason"], attempt
    assert scenes(data)["scene-001"]["status"] == "passed"
    _assert_own_prompt_stopped(run_dir, data, "scene-002")


def _assert_own_prompt_stopped(run_dir: Path, data: dict, scene_id: str) -> None:
    """The simulator was asked to interrupt and dequeue the scene's running prompt, and only ours.

    A later scene of ours may be queued behind it (the GPU never waits): it is dequeued too.
    """
    prompt = posted_prompts(run_dir, scene_id)[-1]
    ours = {p for scene in scenes(data) for p in posted_prompts(run_dir, scene)}
    asked = gpu_requests(run_dir)
    assert f"POST /interrupt prompt_id={prompt} running={prompt}" in asked, asked
    assert f"POST /queue delete {prompt}" in asked, asked
    assert all(any(p in line for p in ours) for line in asked), asked
    assert any(f"{scene_id}: the run was cut short during its generation" in w for w in data["warnings"])


def test_timeout_thread_method_leaves_a_closed_summary_before_the_process_ends(
    project: pytest.Pytester,
) -> None:
    # pytest-timeout's thread method (the only one on Windows) ends the process with os._exit(1):
    # the summary and the report must be closed before that, and the simulator ended.
    result, run_dir, _ = _stalled_under_user_timeout(project, "--timeout-method", "thread")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*Timeout*"])
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    assert "pytest-timeout ended the process: " in data["status_reason"]
    assert "test_generation[scene-002]" in data["status_reason"]
    scene = scenes(data)["scene-002"]
    assert scene["status"] == "interrupted"
    assert [attempt["outcome"] for attempt in scene["attempts"]] == ["interrupted"]
    assert scenes(data)["scene-001"]["status"] == "passed"
    generation = items(data, "svd")["svd[scene-002]"]
    assert (
        generation["status"] == "interrupted" and "pytest-timeout ended the process" in generation["message"]
    )
    assert stages(data)["svd"]["status"] == "interrupted"
    assert "FAILED" in (run_dir / "report.html").read_text(encoding="utf-8")
    _assert_own_prompt_stopped(run_dir, data, "scene-002")
    sim_pid = data["backends"]["comfyui"]["pid"]
    gone_by = time.monotonic() + 10
    while psutil.pid_exists(sim_pid) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not is_running(sim_pid)


def test_execution_error_is_retried_then_fails_naming_the_node(project: pytest.Pytester) -> None:
    result, run_dir, _ = scene_fault_run(project, "execution-error", "--max-scene-retries", "1", n=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    scene = scenes(data)["scene-002"]
    assert scene["status"] == "failed"
    assert [a["number"] for a in scene["attempts"]] == [1, 2]
    assert all(a["outcome"] == "execution_error" for a in scene["attempts"])
    message = items(data, "svd")["svd[scene-002]"]["message"]
    assert "node 5" in message and "KSampler" in message and "OutOfMemoryError" in message
    assert scenes(data)["scene-001"]["status"] == "passed"


def test_flaky_passes_on_the_second_attempt(shared_runs: SharedRuns) -> None:
    run = shared_runs.get(RECOVERED)  # flaky@scene-004
    assert RECOVERED_FAULTS["scene-004"] == "flaky"
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    data = summary_of(run.run_dir)
    scene = scenes(data)["scene-004"]
    assert scene["status"] == "passed"
    assert [(a["number"], a["outcome"]) for a in scene["attempts"]] == [
        (1, "execution_error"),
        (2, "success"),
    ]


def test_view_404_fails_frames_naming_missing_files(project: pytest.Pytester) -> None:
    result, run_dir, _ = scene_fault_run(project, "view-404", n=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    frames = items(data, "frames")["frames[scene-002]"]
    assert frames["status"] == "failed"
    assert "404" in frames["message"]
    assert "frame_00001_.png" in frames["message"]
    assert items(data, "svd")["svd[scene-002]"]["status"] == "passed"
    assert scenes(data)["scene-001"]["status"] == "passed"


def test_crash_fails_that_scene_quickly_and_later_scenes_are_not_reached(project: pytest.Pytester) -> None:
    # A long scene-max-wait proves the crash is noticed at once, not at the deadline. The one
    # server holds two of our scenes (the next is queued behind the running one): the scene queued
    # behind scene-002 dies with the server too; the server is waited for (--server-return-wait)
    # and does not come back, so the scene after them is never queued.
    result, run_dir, _ = run_e2e(
        project,
        "--story-mode",
        "fallback",
        "--scenes",
        "4",
        "--scene-max-wait",
        "120",
        "--completion-grace",
        "2",
        "--ws-idle-timeout",
        "1",
        "--history-poll-interval",
        "0.3",
        "--server-return-wait",
        "1",
        # steps of 0.25 s: the crash comes seconds into scene-002's generation, after scene-003 is
        # queued behind it even on a busy machine (at 0.01 s it came before that under load)
        "--sim-step-seconds",
        "0.25",
        "--sim-fault",
        "crash@scene-002",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # noticed as a dead server at once, not as the 120 s scene deadline running out
    data = summary_of(run_dir)
    by_scene = scenes(data)
    assert by_scene["scene-002"]["status"] == "failed"
    assert by_scene["scene-002"]["attempts"][-1]["outcome"] == "server_gone"
    assert "went away" in by_scene["scene-002"]["message"]
    queued_behind = by_scene["scene-003"]
    assert queued_behind["status"] == "failed" and queued_behind["attempts"][-1]["outcome"] == "server_gone"
    assert by_scene["scene-004"]["status"] == "not_reached"
    svd4 = items(data, "svd")["svd[scene-004]"]
    assert svd4["status"] == "not_reached" and "--server-return-wait = 1" in svd4["message"]
    # scene-001's frames were all fetched before the crash (its download ran in its own thread)
    assert by_scene["scene-001"]["status"] == "passed", by_scene["scene-001"]


# --- LLM faults -------------------------------------------------------------------------------

LLM_FAST = ("--scenes", "1", "--llm-timeout", "2", "--scene-max-wait", "60", "--history-poll-interval", "0.3")


@pytest.mark.parametrize("fault", ["llm-down", "llm-timeout", "llm-garbage"])
def test_llm_fault_in_auto_mode_falls_back_to_the_deterministic_story(
    project: pytest.Pytester, fault: str
) -> None:
    result, run_dir, _ = run_e2e(project, "--story-mode", "auto", *LLM_FAST, "--sim-fault", fault)
    data = summary_of(run_dir)
    by_stage = stages(data)
    assert by_stage["story"]["status"] == "passed", by_stage["story"]
    assert by_stage["frames"]["status"] == "passed"
    story = json.loads((run_dir / "story" / "story.json").read_text(encoding="utf-8"))
    jsonschema.validate(story, load_schema("story.schema.json"))
    assert story["metadata"]["mode"] == "fallback"
    assert story["metadata"]["requested_mode"] == "auto"
    assert story["metadata"]["fallback_reason"]
    assert any("fell back" in w for w in data["warnings"])
    # the LLM stage itself reports the unhealthy LLM (garbage still answers the health check)
    expected_llm = "passed" if fault == "llm-garbage" else "failed"
    assert by_stage["llm"]["status"] == expected_llm


@pytest.mark.parametrize(
    ("fault", "failed_stage", "reason"),
    [
        ("llm-down", "llm", "connection refused"),
        ("llm-timeout", "llm", "--llm-timeout"),
        ("llm-garbage", "story", "not JSON"),
    ],
)
def test_llm_fault_in_llm_mode_fails_the_story_and_scenes_are_not_reached(
    project: pytest.Pytester, fault: str, failed_stage: str, reason: str
) -> None:
    result, run_dir, _ = run_e2e(project, "--story-mode", "llm", *LLM_FAST, "--sim-fault", fault)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = summary_of(run_dir)
    by_stage = stages(data)
    assert by_stage[failed_stage]["status"] == "failed"
    assert reason in by_stage[failed_stage]["message"]
    if failed_stage == "llm":
        assert by_stage["story"]["status"] == "not_reached"
    assert by_stage["svd"]["status"] == by_stage["frames"]["status"] == "not_reached"
    assert [scene["status"] for scene in data["scenes"]] == ["not_reached"]
    assert not (run_dir / "story" / "story.json").exists()


# --- Ctrl-C -----------------------------------------------------------------------------------


def test_ctrl_c_mid_scene_leaves_an_interrupted_summary_and_no_simulator(project: pytest.Pytester) -> None:
    proc, run_dir = start_stalled_run(project)
    live = wait_for_scene_002_attempt(proc, run_dir)
    sim_pid = live["backends"]["comfyui"]["pid"]  # ready.json is deleted on exit, so record it now
    assert is_running(sim_pid)
    output = interrupt(proc)  # gives up (and fails) if pytest is still there 60 s after Ctrl-C
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    data = summary_of(run_dir)
    assert data["status"] == "interrupted", output
    assert scenes(data)["scene-001"]["status"] == "passed"
    scene_002 = scenes(data)["scene-002"]
    assert scene_002["status"] == "interrupted"
    assert [a["outcome"] for a in scene_002["attempts"]] == ["interrupted"]
    assert items(data, "svd")["svd[scene-002]"]["status"] == "interrupted"
    # what people read says each thing once: no "svd[scene-002]: svd[scene-002]: …", no
    # "INTERRUPTED — interrupted"
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    assert "svd[scene-002]: svd[scene-002]" not in text and "svd[scene-002]: the run was" in text
    assert "— interrupted" not in output + text and "— cut short by Ctrl-C or a signal" in text
    # the GPU job stopped too: our own running prompt interrupted and dequeued, nobody else's
    _assert_own_prompt_stopped(run_dir, data, "scene-002")
    gone_by = time.monotonic() + 10
    while is_running(sim_pid) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not is_running(sim_pid), f"simulator pid {sim_pid} still running after Ctrl-C"


def test_live_summary_shows_a_scene_in_generation_as_running(project: pytest.Pytester) -> None:
    proc, run_dir = start_stalled_run(project)
    try:
        live = wait_for_scene_002_attempt(proc, run_dir)
    finally:
        interrupt(proc)
    assert scenes(live)["scene-002"]["status"] == "running"


def test_sigterm_mid_scene_ends_the_run_like_ctrl_c_and_stops_our_prompt(project: pytest.Pytester) -> None:
    # A CI runner cancelling a job sends SIGTERM (on Windows, Ctrl-Break or closing the console:
    # SIGBREAK, handled the same way; see test_windows_console_signals_end_the_run_too).
    proc, run_dir = start_stalled_run(project)
    wait_for_scene_002_attempt(proc, run_dir)
    proc.send_signal(signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    data = summary_of(run_dir)
    assert data["status"] == "interrupted"
    assert scenes(data)["scene-002"]["status"] == "interrupted"
    _assert_own_prompt_stopped(run_dir, data, "scene-002")


def test_windows_console_signals_end_the_run_too() -> None:
    from types import SimpleNamespace

    from pytest_gemdirect.pytest_plugin.run import interrupting_signals

    windows = SimpleNamespace(SIGBREAK=21, SIGINT=2)  # Windows' signal module has no SIGTERM to send
    posix = SimpleNamespace(SIGTERM=15, SIGINT=2)
    assert interrupting_signals(windows) == (21,)
    assert interrupting_signals(posix) == (15,)
