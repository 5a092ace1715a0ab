"""Scenes over a pool of ComfyUI servers: spread, pipelined (the GPU never waits), and a dead server
costing only the attempt on it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.outside import events, run_e2e, scenes, summary_of

NO_BENCHMARK = ("-p", "no:benchmark")  # pytest-benchmark, where installed, turns itself off under xdist


class Simulators:
    """Simulators started by the test itself, as a user's own servers would be."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def start(self, *faults: str) -> str:
        number = len(self.procs) + 1
        ready = self.folder / f"ready-{number}.json"
        args = [sys.executable, "-m", "pytest_gemdirect.sim", "--ready-file", str(ready)]
        args += ["--root", str(self.folder / f"sim-{number}"), "--step-seconds", "0.02"]
        for fault in faults:
            args += ["--fault", fault]
        log = open(self.folder / f"sim-{number}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        for _ in range(600):  # a ready file, or the process gone: at most 60 s
            if ready.exists() or proc.poll() is not None:
                break
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        assert ready.exists(), (self.folder / f"sim-{number}.log").read_text(errors="replace")
        url = json.loads(ready.read_text(encoding="utf-8"))["comfyui_url"]
        self.urls.append(url)
        return url

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def simulators(tmp_path: Path) -> Iterator[Simulators]:
    sims = Simulators(tmp_path)
    try:
        yield sims
    finally:
        sims.stop()


def servers_of(run_dir: Path) -> dict[str, str]:
    return {scene["id"]: scene["server"] for scene in summary_of(run_dir)["scenes"]}


def test_eight_scenes_over_four_simulators_and_four_workers(project: pytest.Pytester) -> None:
    result, run_dir, _ = run_e2e(project, *NO_BENCHMARK, "-n", "4", "--sim-servers", "4", "--scenes", "8")
    result.assert_outcomes(passed=21, skipped=1)
    data = summary_of(run_dir)
    assert data["status"] == "passed" and len(data["scenes"]) == 8
    pool = {server["url"] for server in data["comfyui"]["servers"]}
    assert len(pool) == 4
    assert set(servers_of(run_dir).values()) == pool  # every server ran scenes
    assert (run_dir / "report.html").is_file()


def test_scenes_spread_over_servers_given_as_urls(project: pytest.Pytester, simulators: Simulators) -> None:
    urls = [simulators.start() for _ in range(4)]
    result, run_dir, _ = run_e2e(project, "--scenes", "8", *(f"--comfyui-url={url}" for url in urls))
    result.assert_outcomes(passed=21, skipped=1)
    assert set(servers_of(run_dir).values()) == set(urls)
    assert summary_of(run_dir)["backends"]["comfyui"]["target"] == "attached"


def test_a_server_that_dies_mid_run_costs_only_its_attempt(
    project: pytest.Pytester, simulators: Simulators
) -> None:
    doomed = simulators.start("crash")  # dies during the first scene it runs
    urls = [doomed] + [simulators.start() for _ in range(3)]
    result, run_dir, _ = run_e2e(project, "--scenes", "8", *(f"--comfyui-url={url}" for url in urls))
    result.assert_outcomes(passed=21, skipped=1)
    data = summary_of(run_dir)
    assert all(scene["status"] == "passed" for scene in data["scenes"])
    moved = [scene for scene in data["scenes"] if len(scene["attempts"]) > 1]
    assert moved, "no scene was retried after the crash"
    for scene in moved:
        first, last = scene["attempts"][0], scene["attempts"][-1]
        assert first["server"] == doomed and first["outcome"] == "server_gone"
        assert last["server"] != doomed and last["outcome"] == "success" and scene["server"] == last["server"]
    assert any("went away" in warning for warning in data["warnings"])


def test_a_server_that_does_not_answer_at_start_up_is_left_out(
    project: pytest.Pytester, simulators: Simulators
) -> None:
    url = simulators.start()
    result, run_dir, _ = run_e2e(
        project, "--scenes", "2", f"--comfyui-url={url}", "--comfyui-url=http://127.0.0.1:9"
    )
    result.assert_outcomes(passed=9, skipped=1)
    data = summary_of(run_dir)
    assert set(servers_of(run_dir).values()) == {url}
    assert any("server-2 at http://127.0.0.1:9 was left out" in warning for warning in data["warnings"])


def test_the_next_scene_waits_in_comfyuis_queue_and_that_wait_is_not_its_deadline(
    project: pytest.Pytester,
) -> None:
    # 20 steps of 0.5 s: each scene runs ~10 s on the one server; scene-002 waits ~10 s behind
    # scene-001, so its queue-to-frames takes ~22 s: past a 15 s scene-max-wait, unless the wait
    # behind our own scene is not counted against it.
    slow = ("--sim-step-seconds", "0.5", "--scene-max-wait", "15")
    result, run_dir, _ = run_e2e(project, "--story-mode", "fallback", "--scenes", "2", *slow)
    result.assert_outcomes(passed=8, skipped=2)  # no LLM in fallback mode, no suites
    second = scenes(summary_of(run_dir))["scene-002"]
    assert second["telemetry"]["behind_own_s"] > 0
    queued_002 = next(e["t"] for e in events(run_dir, "scene-002") if e.get("event") == "queued")
    ended_001 = next(e["t"] for e in events(run_dir, "scene-001") if e.get("type") == "execution_success")
    assert queued_002 < ended_001  # queued before the first scene ended: the GPU did not wait for us


def test_the_report_names_each_scenes_server(project: pytest.Pytester) -> None:
    from bs4 import BeautifulSoup

    result, run_dir, _ = run_e2e(project, "--sim-servers", "2", "--scenes", "2")
    result.assert_outcomes(passed=9, skipped=1)
    soup = BeautifulSoup((run_dir / "report.html").read_text(encoding="utf-8"), "html.parser")
    for scene_id, server in servers_of(run_dir).items():
        card = soup.select_one(f'.gd-scene-card[data-scene="{scene_id}"]')
        assert card is not None and card.select_one(".gd-server").get_text() == f"ran on {server}"
