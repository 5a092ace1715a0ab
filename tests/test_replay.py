"""Record a run, replay it anywhere (issue 23), from the outside: pytest runs in subprocesses.

One recording is shared by the tests that replay it or read it (module scope): three scenes on
the embedded simulator, scene-001's history stored late, scene-002's first attempt failing with
an execution error and its retry succeeding, scene-003 failing on a history that never comes,
an API key set.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pytest_gemdirect.replay.recorder import Recorder
from pytest_gemdirect.replay.server import first_difference
from pytest_gemdirect.settings import SettingError
from pytest_gemdirect.settings import resolve as resolve_only
from pytest_gemdirect.startup_checks import with_files_read
from tests.outside import FAST, PIPELINE_MODULE, summary_of


def resolve(flags: dict, ini: dict, *, environ: dict[str, str]):  # as the plugin configures
    return with_files_read(resolve_only(flags, ini, environ=environ))


SECRET = "sk-replay-test-never-written"
POLICY = (*FAST, "--completion-grace", "6")  # the late history (3 s) comes within it
FAULTS = (
    *("--sim-fault", "history-late@scene-001"),  # passes, its history a few polls late
    *("--sim-fault", "flaky@scene-002"),  # an execution error, then a retry that succeeds
    *("--sim-fault", "history-never@scene-003"),  # fails: the history never comes
)
RECORDED = ("--workflow=smoke", *FAULTS, "--llm-api-key", SECRET, *POLICY)
HANG_GUARD_S = 300  # a run that hangs fails the test instead of the suite; never a timed assertion


def run_pipeline(
    folder: Path, run_dir: Path, *args: str, markexpr: str = "e2e"
) -> subprocess.CompletedProcess[str]:
    """``pytest -m e2e --run-dir=RUN_DIR ARGS`` in ``folder`` (a project collecting the stages)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_pipeline.py").write_text(PIPELINE_MODULE, encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--run-dir={run_dir}",
        "-m",
        markexpr,
    ]
    return subprocess.run(
        [*command, *args], cwd=folder, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )


def replay(recorded: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A replay of ``recorded`` as fast as it goes, in a project beside ``run_dir``."""
    return run_pipeline(run_dir.parent, run_dir, f"--replay={recorded}", "--replay-speed", "0", *args)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of the shared recording (it failed at scene-003's frames only)."""
    folder = tmp_path_factory.mktemp("gpu-box")
    run_dir = folder / "recorded"
    done = run_pipeline(folder, run_dir, *RECORDED)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert [s["status"] for s in summary_of(run_dir)["scenes"]] == ["passed", "passed", "failed"]
    return run_dir


def frame_hashes(run_dir: Path) -> dict[str, dict[str, str]]:
    return {
        scene.name: {
            frame.name: hashlib.sha256(frame.read_bytes()).hexdigest()
            for frame in sorted((scene / "generated-frames").iterdir())
        }
        for scene in sorted(run_dir.glob("scene-*"))
        if (scene / "generated-frames").is_dir()
    }


def outcomes(data: dict) -> dict[str, tuple]:
    return {
        scene["id"]: (
            scene["status"],
            scene["failed_stage"],
            [a["outcome"] for a in scene["attempts"]],
            scene["frame_count"],
        )
        for scene in data["scenes"]
    }


def test_a_replay_gives_the_recorded_verdict_frames_and_scene_outcomes(
    recorded: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "replayed"
    done = replay(recorded, run_dir, "--workflow=smoke", *POLICY)
    assert done.returncode == 1, done.stdout[-3000:]
    before, after = summary_of(recorded), summary_of(run_dir)
    assert after["status"] == before["status"] == "failed"
    assert after["status_reason"] == before["status_reason"]
    assert outcomes(after) == outcomes(before)
    assert outcomes(after)["scene-002"][2] == ["execution_error", "success"]  # the fault, then its retry
    # the history that never came: the grace after completion ends it, at its frames (FAST's scene
    # deadline is above what a busy machine needs, so it no longer fires first)
    assert outcomes(after)["scene-003"][:2] == ("failed", "frames")
    never = [
        scene["message"] for data in (before, after) for scene in data["scenes"] if scene["id"] == "scene-003"
    ]
    assert len(never) == 2 and all("--completion-grace" in m for m in never), never
    assert frame_hashes(run_dir) == frame_hashes(recorded)
    assert sorted(frame_hashes(run_dir)) == ["scene-001", "scene-002"]
    assert all(len(frames) > 1 for frames in frame_hashes(run_dir).values())
    # served by the replay server alone: no simulator was started for the replay
    assert not list(run_dir.glob("simulator*.log")) and (run_dir / "replay.log").is_file()
    assert {b["target"] for b in after["backends"].values()} == {"replayed"}
    # labelled in the terminal, the summary and the report
    label = after["replayed"]["label"]
    assert label.startswith(f"REPLAYED from run {before['run_id']} (") and "ComfyUI 0.3.64" in label
    assert (
        "GPU " in label and after["replayed"]["date"] == json.loads(trace_lines(recorded)[0])["recorded_at"]
    )
    assert f"verdict: FAILED — {label}" in done.stdout
    assert label in (run_dir / "report.html").read_text(encoding="utf-8")
    assert label in (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    assert not (run_dir / "trace").exists()  # a replay is not recorded again


def trace_lines(run_dir: Path) -> list[str]:
    return (run_dir / "trace" / "exchanges.jsonl").read_text(encoding="utf-8").splitlines()


def test_the_trace_holds_every_exchange_portably_and_no_key(recorded: Path) -> None:
    records = [json.loads(line) for line in trace_lines(recorded)]
    header = records[0]
    assert header["kind"] == "header" and header["harness_version"] and header["run_id"] == recorded.name
    assert header["settings"]["workflow"] == "smoke.json" and header["settings"]["workflow_sha256"]
    http = [r for r in records if r["kind"] == "http"]
    routes = {(r["service"], r["method"], r["path"]) for r in http}
    assert {
        ("comfyui", "POST", "/prompt"),
        ("comfyui", "POST", "/upload/image"),
        ("comfyui", "GET", "/view"),
    } <= routes
    assert ("llm", "POST", "/v1/chat/completions") in routes
    prompts = [r for r in http if r["path"] == "/prompt"]
    assert len(prompts) == 4  # three scenes, scene-002 twice
    frames = [r for r in records if r["kind"] == "ws"]
    assert any(f["message"] and f["message"].get("type") == "execution_error" for f in frames)
    assert all(f["since_prompt"] is None or f["since_prompt"] >= 0 for f in frames)
    # each output file once, by its hash, beside the records
    views = [r for r in http if r["path"] == "/view"]
    blobs = {p.name for p in (recorded / "trace" / "blobs").iterdir()}
    assert {v["body"]["blob"] for v in views} <= blobs
    assert all(len(name) == 64 for name in blobs)
    # portable and secret-free: no absolute path, no key, no request header
    everything = b"".join(p.read_bytes() for p in (recorded / "trace").rglob("*") if p.is_file())
    assert SECRET.encode() not in everything
    assert str(recorded).encode() not in everything and str(recorded.parent).encode() not in everything
    assert not any("Authorization" in json.dumps(r) for r in records)


def test_a_replay_under_another_workflow_fails_naming_the_first_diverging_request(
    recorded: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "diverged"
    done = replay(recorded, run_dir, "--workflow=smoke_video", *FAST)
    assert done.returncode == 1, done.stdout[-3000:]
    data = summary_of(run_dir)
    assert data["status"] == "failed"
    first = data["scenes"][0]
    assert first["status"] == "failed"
    assert "replay diverged at POST /prompt (scene-001)" in first["message"]
    assert "workflow (recorded 'smoke.json', now 'smoke_video.json')" in (run_dir / "replay.log").read_text()
    assert "replay diverged at POST /prompt" in done.stdout


def test_record_false_writes_no_trace(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_pipeline(tmp_path, run_dir, "--record", "false", "--scenes", "1", "--workflow=smoke", *FAST)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (run_dir / "scene-001" / "generated-frames").is_dir()
    assert not (run_dir / "trace").exists()


def test_require_real_backends_refuses_a_replay(recorded: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "refused"
    done = run_pipeline(
        tmp_path, run_dir, f"--replay={recorded}", "--require-real-backends", "true", markexpr="comfyui"
    )
    assert done.returncode == 1, done.stdout[-3000:]
    assert "REPLAYED" in done.stdout and "require_real_backends is set" in done.stdout
    assert not (run_dir / "replay.log").exists()


def test_replay_settings_are_checked_at_start_up(recorded: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match=r"replay \(from --replay\): .* holds no trace"):
        resolve({"replay": str(tmp_path)}, {}, environ={})
    with pytest.raises(SettingError, match="but comfyui_url .* names one"):
        resolve({"replay": str(recorded), "comfyui_url": ["http://127.0.0.1:8188"]}, {}, environ={})
    settings = resolve({}, {"replay": str(recorded / "trace")}, environ={})
    assert settings.replay == (recorded / "trace").resolve() and settings.replay_speed == 1.0
    # a folder of run directories (a CI artifact of logs/) names its newest recording
    assert resolve({"replay": str(recorded.parent)}, {}, environ={}).replay == (recorded / "trace").resolve()


def test_the_recorder_keeps_every_record_whole_when_scenes_write_at_once(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "trace", header={"run_id": "r"}, secrets=[SECRET])

    def scene(number: int) -> None:
        for step in range(200):
            body = json.dumps({"scene": number, "step": step, "echo": SECRET}).encode()
            recorder.http("comfyui", "http://127.0.0.1:1", "GET", f"/history/{number}", status=200, body=body)
            recorder.ws_frame(f"client-{number}", {"frame": "text", "message": {"step": step}})

    threads = [threading.Thread(target=scene, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close()
    lines = (tmp_path / "trace" / "exchanges.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert len(records) == 1 + 8 * 200 * 2
    assert {json.loads(r["body"]["text"])["echo"] for r in records if r["kind"] == "http"} == {"***"}
    assert SECRET not in "".join(lines)


def test_first_difference_names_where_two_graphs_part() -> None:
    recorded = {"3": {"class_type": "KSampler", "inputs": {"steps": 25, "cfg": 7}}}
    assert first_difference(recorded, recorded) is None
    asked = {"3": {"class_type": "KSampler", "inputs": {"steps": 20, "cfg": 7}}}
    assert first_difference(asked, recorded) == "at 3.inputs.steps: asked 20, the recording has 25"
    assert (
        first_difference({**asked, "9": {}}, recorded) == "at 3.inputs.steps: asked 20, the recording has 25"
    )
    assert first_difference({"9": {}}, {}) == "at 9: asked {}, the recording has no 9"
