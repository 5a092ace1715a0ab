"""The app's run contract (issue 21): the run directory also speaks the app's shape.

A few whole-pipeline runs, each shared by the tests that read it (module scope): a passing run
with the app's three suites (fake ones), a run with a failed scene and suites that exit 0, 1 and 2
(published to an app folder), a run with a scene below its frame floor and no suites, an
interrupted run. The contract's validator (tests/app_contract_rules.py) must pass on each; then
every rule is broken on a copy of the passing run, one at a time, and the validator must name it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_gemdirect.appcontract.mapping import EXIT_REASONS, scene_entry
from pytest_gemdirect.appcontract.startup import check_node, node_version, parse_version
from pytest_gemdirect.rundir import atomic_write_json
from pytest_gemdirect.settings import SettingError
from pytest_gemdirect.suites import parse_suite_specs
from tests import app_contract_rules as rules
from tests.outside import PIPELINE_MODULE, interrupt, runpytest, start_stalled_run, wait_for_scene_002_attempt

PY = Path(sys.executable).as_posix()


def _suite(name: str, code: int) -> str:
    return f'{name}="{PY}" -c "import sys; print(\'{name} ran\'); sys.exit({code})"'


def _pipeline(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``pytest -m e2e`` in a fresh project folder (a subprocess), two scenes, small waits."""
    folder.mkdir(parents=True)
    (folder / "test_pipeline.py").write_text(PIPELINE_MODULE, encoding="utf-8")
    run_dir = folder / "run"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "e2e", f"--run-dir={run_dir}"]
    argv += ["--story-mode", "fallback", "--scenes", "2", "--history-poll-interval", "0.3", *args]
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=600, check=False)
    return done, run_dir


def _texts(run_dir: Path) -> tuple[str, dict[str, Any]]:
    text = (run_dir / "run-summary.txt").read_text(encoding="utf-8")
    return text, json.loads((run_dir / "artifact-metadata.json").read_text(encoding="utf-8"))


def _scenes(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {scene["SceneId"]: scene for scene in meta["Scenes"]}


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All green, the app's suites named in another letter case, a queue policy of its own."""
    policy = ("--max-scene-retries", "2", "--history-max-attempts", "12", "--scene-max-wait", "120")
    policy += ("--completion-grace", "20")
    suites = ("--suite", _suite("comfyui", 0), "--suite", _suite("E2E", 0), "--suite", _suite("scripts", 0))
    done, run_dir = _pipeline(tmp_path_factory.mktemp("contract") / "passing", *policy, *suites)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """scene-002 fails in ComfyUI; the suites exit 0, 1 and 2; the metadata is published to an app."""
    app = tmp_path_factory.mktemp("app")
    suites = ("--suite", _suite("comfyUI", 0), "--suite", _suite("e2e", 1), "--suite", _suite("scripts", 2))
    done, run_dir = _pipeline(
        tmp_path_factory.mktemp("contract") / "failed",
        "--sim-fault",
        "execution-error@scene-002",
        f"--publish-latest={app}",
        *suites,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"gemdirect published: {app / 'public' / 'artifacts' / 'latest-run.json'}" in done.stdout
    return run_dir, app


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scene-002 comes back with 12 of its 25 frames; no suites at all."""
    done, run_dir = _pipeline(tmp_path_factory.mktemp("contract") / "short", "--sim-fault", "short@scene-002")
    assert done.returncode == 1, done.stdout + done.stderr
    return run_dir


def _assert_valid(run_dir: Path) -> rules.Result:
    result = rules.check(run_dir)
    assert result.errors == [], "\n".join(f"{f.rule}: {f.message}" for f in result.errors)
    return result


# --- the runs pass the contract ---------------------------------------------------------------


def test_passing_run_speaks_the_contract_after_the_harness_summary(passing_run: Path) -> None:
    result = _assert_valid(passing_run)
    assert result.warnings == []
    text, meta = _texts(passing_run)
    assert text.startswith("gemdirect run ")  # people still read the harness's summary first
    assert text.index("steps:") < text.index("## gemDirect app contract") < text.index("## Artifact Index")
    assert meta["QueueConfig"] == {
        "SceneRetryBudget": 2,
        "HistoryMaxWaitSeconds": 120.0,
        "HistoryPollIntervalSeconds": 0.3,
        "HistoryMaxAttempts": 12,
        "PostExecutionTimeoutSeconds": 20.0,
    }
    assert (
        "Queue policy: sceneRetries=2, historyMaxWait=120s, historyPollInterval=0.3s, historyMaxAttempts=12,"
        in text
    )
    for scene in meta["Scenes"]:
        tele = scene["Telemetry"]
        assert (
            scene["Success"] and scene["MeetsFrameFloor"] and scene["FrameCount"] == scene["FrameFloor"] == 25
        )
        assert scene["FinalResolution"] == "1024x576"
        assert tele["HistoryExitReason"] == "success" and tele["HistoryAttempts"] >= 1
        assert tele["ExecutionSuccessDetected"] and tele["ExecutionSuccessAt"]
        assert "simulated" in tele["GPU"]["Name"].lower()  # main names a simulated device "simulated GPU, …"
        assert (tele["DoneMarkerDetected"], tele["DoneMarkerWaitSeconds"], tele["ForcedCopyTriggered"]) == (
            False,
            0,
            False,
        )
        assert tele["ForcedCopyDebugPath"] is None
    assert re.search(r"^Total frames copied: 50$", text, re.M)
    # the helper summaries, each a JSON and a log file under test-results/
    for entry in meta["HelperSummaries"].values():
        assert Path(entry["Summary"]).is_file() and Path(entry["Log"]).is_file()
    preflight = json.loads(
        Path(meta["HelperSummaries"]["MappingPreflight"]["Summary"]).read_text(encoding="utf-8")
    )
    assert preflight["Status"] == "ok" and preflight["Problems"] == []
    status = json.loads(Path(meta["HelperSummaries"]["ComfyUIStatus"]["Summary"]).read_text(encoding="utf-8"))
    assert status["Simulated"] is True and status["Version"] == "0.3.64"


def test_suites_in_any_letter_case_are_the_apps_three(passing_run: Path) -> None:
    text, meta = _texts(passing_run)
    for name in ("comfyUI", "e2e", "scripts"):
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] Vitest {name} exitCode=0 ", text, re.M), name
    vitest = json.loads((passing_run / "vitest-results.json").read_text(encoding="utf-8"))
    assert (vitest["comfyExit"], vitest["e2eExit"], vitest["scriptsExit"]) == (0, 0, 0)
    assert meta["VitestSummary"] == vitest
    assert Path(meta["VitestLogs"]["ComfyUI"]).name == "comfyui.log"
    assert "comfyui ran" in Path(meta["VitestLogs"]["ComfyUI"]).read_text(encoding="utf-8")
    assert "did not run" not in text  # no warning: all three ran


def test_failed_scene_run_passes_the_contract_with_its_error_and_exit_codes(
    failed_run: tuple[Path, Path],
) -> None:
    run_dir, _app = failed_run
    _assert_valid(run_dir)
    text, meta = _texts(run_dir)
    scene = _scenes(meta)["scene-002"]
    assert scene["Success"] is False and scene["FrameCount"] == 0
    assert scene["Telemetry"]["HistoryExitReason"] == "unknown"  # ComfyUI's execution error: no history limit
    assert re.search(r"\[Scene scene-002\] ERROR: .*OutOfMemoryError", text)
    # the suites' exit codes, in both places
    vitest = json.loads((run_dir / "vitest-results.json").read_text(encoding="utf-8"))
    assert (vitest["comfyExit"], vitest["e2eExit"], vitest["scriptsExit"]) == (0, 1, 2)
    for name, code in (("comfyUI", 0), ("e2e", 1), ("scripts", 2)):
        assert re.search(rf"Vitest {name} exitCode={code} ", text), name
    assert [s["ExitCode"] for s in vitest["suites"]] == [0, 1, 2]
    assert all(s["StartedAt"] and s["DurationMs"] >= 0 for s in vitest["suites"])
    assert Path(meta["VitestLogs"]["ResultsJson"]) == run_dir / "vitest-results.json"


def test_publish_latest_copies_the_metadata_into_the_app(failed_run: tuple[Path, Path]) -> None:
    run_dir, app = failed_run
    folder = app / "public" / "artifacts"
    assert (folder / "latest-run.json").read_bytes() == (run_dir / "artifact-metadata.json").read_bytes()
    assert [p.name for p in folder.iterdir()] == ["latest-run.json"]  # no temp file left behind


def test_scene_below_its_frame_floor_and_a_run_without_suites(short_run: Path) -> None:
    _assert_valid(short_run)
    text, meta = _texts(short_run)
    scene = _scenes(meta)["scene-002"]
    assert (scene["FrameCount"], scene["FrameFloor"], scene["MeetsFrameFloor"]) == (12, 25, False)
    assert "[Scene scene-002] WARNING: Frame count below floor (FrameCount=12, floor=25)" in text
    assert re.search(r"^Total frames copied: 37$", text, re.M)
    # no suites: the app's lines say so with -1, and the harness's own summary warns
    for name in ("comfyUI", "e2e", "scripts"):
        assert f"Vitest {name} exitCode=-1 (did not run: no suite named {name} in this run)" in text
    harness_part = text.split("## gemDirect app contract")[0]
    assert "app contract: the app's suite(s) comfyUI, e2e, scripts did not run" in harness_part
    summary = json.loads((short_run / "run-summary.json").read_text(encoding="utf-8"))
    assert any("comfyUI, e2e, scripts did not run" in w for w in summary["warnings"])
    assert not (short_run / "vitest-results.json").exists()
    assert meta["VitestSummary"] is None and set(meta["VitestLogs"].values()) == {None}


def test_interrupted_run_passes_the_contract(project: pytest.Pytester) -> None:
    proc, run_dir = start_stalled_run(project)
    wait_for_scene_002_attempt(proc, run_dir)
    output = interrupt(proc)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, output
    _assert_valid(run_dir)
    text, meta = _texts(run_dir)
    scenes = _scenes(meta)
    assert scenes["scene-001"]["Success"] and not scenes["scene-002"]["Success"]
    assert scenes["scene-002"]["Telemetry"]["HistoryExitReason"] == "unknown"
    assert "[Scene scene-002] ERROR: " in text


def test_app_contract_false_writes_none_of_it(project: pytest.Pytester) -> None:
    result = runpytest(
        project,
        "-p",
        "no:cacheprovider",
        f"--run-dir={project.path / 'run'}",
        "-m",
        "env",
        "--app-contract",
        "false",
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    run_dir = project.path / "run"
    assert (run_dir / "run-summary.json").is_file()
    assert not (run_dir / "artifact-metadata.json").exists() and not (run_dir / "test-results").exists()
    assert "gemDirect app contract" not in (run_dir / "run-summary.txt").read_text(encoding="utf-8")


# --- the validator is proven: each rule broken on a copy of the passing run ---------------------


def _edit_json(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(run_dir: Path) -> None:
        path = run_dir / name
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        atomic_write_json(path, data)

    return edit


def _meta(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return _edit_json("artifact-metadata.json", change)


def _scene0(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return _meta(lambda meta: change(meta["Scenes"][0]))


def _tele0(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return _scene0(lambda scene: change(scene["Telemetry"]))


def _text(change: Callable[[str], str]) -> Callable[[Path], None]:
    def edit(run_dir: Path) -> None:
        path = run_dir / "run-summary.txt"
        path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")

    return edit


def _drop_lines(needle: str) -> Callable[[Path], None]:
    return _text(lambda text: "\n".join(line for line in text.splitlines() if needle not in line) + "\n")


def _sub(pattern: str, replacement: str, *, count: int = 0) -> Callable[[Path], None]:
    return _text(lambda text: re.sub(pattern, replacement, text, count=count, flags=re.M))


def _telemetry_line(pattern: str, replacement: str) -> Callable[[Path], None]:
    """Change scene-001's Telemetry line only."""

    def change(text: str) -> str:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "[Scene scene-001] Telemetry:" in line:
                lines[i] = re.sub(pattern, replacement, line)
        return "\n".join(lines) + "\n"

    return _text(change)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.__setitem__(key, value)


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.pop(key)


BREAKERS: dict[str, Callable[[Path], None]] = {
    "txt-story-ready": _drop_lines("Story ready:"),
    "txt-story-logline": _drop_lines("Story logline:"),
    "txt-scene-line": _drop_lines("[Scene "),
    "txt-vitest-comfyui": _drop_lines("Vitest comfyUI exitCode="),
    "txt-vitest-e2e": _drop_lines("Vitest e2e exitCode="),
    "txt-vitest-scripts": _drop_lines("Vitest scripts exitCode="),
    "txt-artifact-index": _drop_lines("## Artifact Index"),
    "txt-total-frames": _sub(r"^Total frames copied: \d+", "Total frames copied: 0"),
    "txt-queue-policy": _sub(r"historyMaxWait=\S+s,", "historyMaxWait=999s,"),
    "txt-timestamps": _sub(r"^\[\d\d:\d\d:\d\d\] (Story ready:)", r"\1"),
    "meta-keys": _meta(_delete("Archive")),
    "meta-story": _meta(lambda meta: meta["Story"].pop("DirectorsVision")),
    "meta-scenes": _meta(_set("Scenes", [])),
    "meta-queue-config": _meta(lambda meta: meta["QueueConfig"].pop("HistoryMaxAttempts")),
    "meta-vitest-logs": _meta(lambda meta: meta["VitestLogs"].pop("ResultsJson")),
    "meta-helpers": _meta(lambda meta: meta["HelperSummaries"]["ComfyUIStatus"].__setitem__("Summary", None)),
    "scene-keys": _scene0(_delete("MeetsFrameFloor")),
    "scene-floor-warning": _scene0(_set("MeetsFrameFloor", False)),
    "scene-history-line": _tele0(_set("HistoryExitReason", "maxWait")),
    "scene-error-line": _scene0(_set("Success", False)),
    "scene-telemetry-line": _drop_lines("[Scene scene-001] Telemetry:"),
    "telemetry-non-null": _tele0(_set("HistoryAttempts", None)),
    "telemetry-exit-reason": _tele0(_set("HistoryExitReason", "timeout")),
    "telemetry-keys": _tele0(_delete("ForcedCopyDebugPath")),
    "telemetry-success-at": _tele0(_set("ExecutionSuccessAt", None)),
    "line-poll-limit": _telemetry_line(r"pollLimit=\d+", "pollLimit=7"),
    "line-retry-budget": _scene0(_set("SceneRetryBudget", 5)),
    "line-done-marker-wait": _telemetry_line(r"DoneMarkerWaitSeconds=0s", "DoneMarkerWaitSeconds=2s"),
    "line-done-marker-detected": _telemetry_line("DoneMarkerDetected=false", "DoneMarkerDetected=true"),
    "line-forced-copy": _telemetry_line("ForcedCopyTriggered=false", "ForcedCopyTriggered=true"),
    "line-vram": _telemetry_line(r" \| VRAMAfterMB=-?\d+MB", ""),
    "gpu": _tele0(lambda tele: tele["GPU"].__setitem__("Name", "")),
    "fallback-notes": _tele0(lambda tele: tele["System"]["FallbackNotes"].append("nvidia-smi used instead")),
    "scene-final-fps": _scene0(_set("FinalFPS", 0)),
    "scene-final-resolution": _scene0(_set("FinalResolution", "1280 by 544")),
    "scene-video": _scene0(lambda scene: scene["Video"].__setitem__("Path", "scene-001\\clip.mp4")),
    "vitest-results-shape": _edit_json("vitest-results.json", _delete("scriptsLog")),
    "vitest-exit-codes-agree": _edit_json("vitest-results.json", _set("comfyExit", 9)),
}


def test_every_rule_has_a_breaking_test() -> None:
    assert set(BREAKERS) == set(rules.RULES)


@pytest.mark.parametrize("rule", sorted(BREAKERS))
def test_the_validator_names_the_rule_a_broken_export_breaks(
    rule: str, passing_run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(passing_run, copy, ignore=shutil.ignore_patterns("generated-frames", "preview", "*.png"))
    assert rules.check(copy).errors == []  # the copy is good before the edit
    BREAKERS[rule](copy)
    found = rules.check(copy)
    assert rule in found.rules, f"{rule} not reported; found {found.errors}"


def test_a_missing_helper_file_only_warns(passing_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(passing_run, copy, ignore=shutil.ignore_patterns("generated-frames", "preview", "*.png"))
    (copy / "test-results" / "comfyui-status.json").unlink()
    meta = json.loads((copy / "artifact-metadata.json").read_text(encoding="utf-8"))
    meta["HelperSummaries"]["ComfyUIStatus"]["Summary"] = str(copy / "test-results" / "comfyui-status.json")
    atomic_write_json(copy / "artifact-metadata.json", meta)
    found = rules.check(copy)
    assert found.errors == [] and [w.rule for w in found.warnings] == ["meta-helpers"]


# --- the mapping, unit by unit ----------------------------------------------------------------

SETTINGS = {
    "max_scene_retries": 1,
    "scene_max_wait": 180.0,
    "history_poll_interval": 2.0,
    "history_max_attempts": 30,
    "completion_grace": 30.0,
}


@pytest.mark.parametrize(
    ("outcome", "reason", "post_execution"),
    [
        ("success", "success", False),
        ("scene_max_wait", "maxWait", False),
        ("history_max_attempts", "attemptLimit", False),
        ("completion_grace", "postExecution", True),
        ("execution_error", "unknown", False),
        ("server_gone", "unknown", False),
        ("interrupted", "unknown", False),
    ],
)
def test_history_exit_reason_comes_from_the_harness_outcome(
    outcome: str, reason: str, post_execution: bool, tmp_path: Path
) -> None:
    attempt = {
        "number": 1,
        "started_at": "2026-12-02T05:13:02.000+01:00",
        "ended_at": "2026-12-02T05:13:12.500+01:00",
        "outcome": outcome,
        "reason": None if outcome == "success" else f"the job ended: {outcome}",
        "prompt_id": "p1",
    }
    evidence = (
        None if outcome == "success" else {"prompt_id": "p1", "poll_attempts": 4, "completion_signal_s": 3.25}
    )
    scene = {
        "id": "scene-001",
        "status": "passed" if outcome == "success" else "failed",
        "attempts": [attempt],
        "frame_count": 0,
        "telemetry": {"history_polls": 2, "vram_free_before": 10240 * 2**20, "vram_free_after": 9664 * 2**20},
        "evidence": evidence,
        "notes": [],
    }
    entry = scene_entry({"settings": SETTINGS}, scene, tmp_path)
    tele = entry["Telemetry"]
    assert (tele["HistoryExitReason"], tele["HistoryPostExecutionTimeoutReached"]) == (reason, post_execution)
    assert tele["DurationSeconds"] == 10.5
    assert tele["HistoryAttempts"] == (2 if outcome == "success" else 4)
    assert tele["GPU"]["VramDeltaMB"] == -576
    if outcome in ("success", "completion_grace"):  # the completion was seen
        assert tele["ExecutionSuccessDetected"]
        assert tele["ExecutionSuccessAt"] == (
            attempt["ended_at"] if outcome == "success" else "2026-12-02T05:13:05.250+01:00"
        )
    assert set(EXIT_REASONS.values()) | {"unknown"} == set(rules.EXIT_REASONS)


def test_untrusted_text_is_one_visible_line(tmp_path: Path) -> None:
    from pytest_gemdirect.appcontract.lines import app_lines
    from pytest_gemdirect.appcontract.mapping import metadata

    data = {
        "settings": SETTINGS,
        "started_at": "2026-12-02T05:13:02+00:00",
        "story": {"logline": "a\x1b]0;pwned\x07 story\nsecond line", "metadata": {"story_hash": "ab" * 32}},
        "scenes": [{"id": "scene-001", "status": "failed", "message": "boom\r\n\u202eexe", "attempts": []}],
    }
    lines = app_lines(data, metadata(data, tmp_path, vitest=None))
    logline = next(line for line in lines if "Story logline:" in line)
    assert logline.endswith("a\\x1b]0;pwned\\x07 story\\x0asecond line")
    assert any(line.endswith("ERROR: boom\\x0d\\x0a\\u202eexe") for line in lines)
    assert all("\x1b" not in line and "\n" not in line for line in lines)


# --- publishing ---------------------------------------------------------------------------------


def test_publish_latest_is_never_seen_half_written(tmp_path: Path) -> None:
    from pytest_gemdirect.appcontract import publish_latest

    run_dir, app = tmp_path / "run", tmp_path / "app"
    run_dir.mkdir()
    big = {"RunId": "x", "Scenes": [{"SceneId": f"scene-{n:03d}", "Pad": "p" * 2000} for n in range(200)]}
    atomic_write_json(run_dir / "artifact-metadata.json", big)
    target = publish_latest(run_dir, app)
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads(target.read_text(encoding="utf-8"))["RunId"])
            except FileNotFoundError:
                seen.append("missing")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(100):
            atomic_write_json(run_dir / "artifact-metadata.json", {**big, "RunId": f"run-{n}"})
            publish_latest(run_dir, app)
    finally:
        done.set()
        reader.join()
    assert seen and "missing" not in seen  # every read parsed (json would raise on half a file)
    assert json.loads(target.read_text(encoding="utf-8"))["RunId"] == "run-99"


# --- the gemdirect preset and its Node check ------------------------------------------------------


def test_gemdirect_preset_runs_the_apps_three_suites_as_its_runner_does() -> None:
    specs = parse_suite_specs(["gemdirect"])
    assert [s.name for s in specs] == ["comfyUI", "e2e", "scripts"]
    paths = ["services/comfyUIService.test.ts", "services/e2e.test.ts", "scripts/__tests__"]
    for spec, path in zip(specs, paths, strict=True):
        assert spec.argv("J.xml") == [
            "node",
            "node_modules/vitest/vitest.mjs",
            "run",
            "--pool=vmThreads",
            path,
            "--reporter=default",
            "--reporter=junit",
            "--outputFile.junit=J.xml",
        ]


@pytest.mark.parametrize(
    ("answer", "accepted"),
    [
        ("v22.19.0", True),
        ("v23.1.0", True),
        ("v22.18.9", False),
        ("v20.20.2", False),
        (None, False),
        ("x", False),
    ],
)
def test_node_version_check(answer: str | None, accepted: bool) -> None:
    probe = lambda: (answer, "/opt/node/bin/node" if answer else "no 'node' program on PATH")  # noqa: E731
    if accepted:
        check_node("gemdirect", (22, 19), "from --suite", probe)
        return
    with pytest.raises(SettingError, match=r"suites \(from --suite\).*Node 22\.19 or newer") as caught:
        check_node("gemdirect", (22, 19), "from --suite", probe)
    assert (answer or "no 'node' program on PATH") in str(caught.value)


def test_gemdirect_preset_refuses_this_machines_older_node(project: pytest.Pytester) -> None:
    answer, _where = node_version()
    version = parse_version(answer) if answer else None
    if version is not None and version[:2] >= (22, 19):
        pytest.skip(f"this machine's Node is {answer}: new enough, nothing to refuse")
    result = runpytest(project, "-p", "no:cacheprovider", "--co", "--suite", "gemdirect")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*suites (from --suite)*'gemdirect' preset*Node 22.19 or newer*"])
    if answer:
        assert answer in result.stderr.str()


@pytest.mark.parametrize(("shown", "accepted"), [("v22.19.0", True), ("v22.18.0", False)])
def test_gemdirect_preset_takes_the_node_first_on_path(
    project: pytest.Pytester, tmp_path: Path, shown: str, accepted: bool
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "node.cmd").write_text(f"@echo {shown}\r\n", encoding="utf-8")  # Windows
    script = bin_dir / "node"
    script.write_text(f"#!/bin/sh\necho {shown}\n", encoding="utf-8")
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", env["PATH"])
        result = runpytest(project, "-p", "no:cacheprovider", "--co", "-q", "--suite", "gemdirect")
    if accepted:
        assert result.ret == pytest.ExitCode.OK, result.stderr.str()
        result.stdout.fnmatch_lines(["*test_suites[[]comfyUI[]]*", "*test_suites[[]scripts[]]*"])
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*{bin_dir}* is {shown}*"])


def test_publish_latest_needs_the_export(project: pytest.Pytester, tmp_path: Path) -> None:
    result = runpytest(
        project, "-p", "no:cacheprovider", "--co", f"--publish-latest={tmp_path}", "--app-contract", "false"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*publish_latest (from --publish-latest)*app_contract = false*"])
