"""The ComfyUI client, job follower and output retrieval against the embedded simulator.

Everything goes over real sockets (HTTP + WebSocket) to ``ComfyUISimulator`` running in a
thread. Each named fault of the simulator is shown to end the way the design asks: a success
by polling, or a failure of the right kind with plain-words evidence, well before the deadline
that would otherwise have been waited out. No sleeps: waits are on sockets, events and deadlines;
that a deadline did not have to be waited out is shown by the kind of the ending and the order
of the events, never by a wall-clock bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from PIL import Image

from pytest_gemdirect.comfyui.client import (
    ComfyClient,
    ComfyError,
    ComfyTimeout,
    OutputMissing,
    PromptRejected,
    ResponseTooLarge,
    ServerGone,
)
from pytest_gemdirect.comfyui.history import trim_history
from pytest_gemdirect.comfyui.job import JobFailed, JobResult, run_job
from pytest_gemdirect.comfyui.outputs import (
    OutputDownloadError,
    OutputFile,
    UnsafeOutputName,
    download_outputs,
    list_outputs,
    safe_output_path,
)
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.policy import QueuePolicy
from pytest_gemdirect.sim.comfyui import DEFAULT_CHECKPOINTS, ComfyUISimulator
from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.server import ServerThread

WORKFLOWS = Path(__file__).parents[1] / "fixtures" / "workflows"
GRACE = 1.5
POLICY = QueuePolicy(
    scene_max_wait=20.0,
    history_poll_interval=0.1,
    history_max_attempts=40,
    completion_grace=GRACE,
    ws_idle_timeout=0.5,
)
"""Short bounds, so that the faults that need them fire quickly."""

HEALTHY = replace(POLICY, ws_idle_timeout=10.0)
"""For a job whose notes must stay empty: the simulator saving 25 frames of 1024x576 keeps the
socket quiet for longer than POLICY's half second on a busy machine, and that silence is a note."""


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as es:
        yield es


@pytest.fixture
def make_sim(stack: ExitStack) -> Callable[..., ComfyUISimulator]:
    """A started simulator (stopped at teardown), faults by name: ``make_sim("stall@scene-001")``."""

    def make(*faults: str, **options: Any) -> ComfyUISimulator:
        return stack.enter_context(ComfyUISimulator(faults=FaultPlan.parse(faults), **options))

    return make


@pytest.fixture
def make_client(stack: ExitStack) -> Callable[..., ComfyClient]:
    def make(url: str, **options: Any) -> ComfyClient:
        return stack.enter_context(ComfyClient(url, **options))

    return make


@pytest.fixture
def keyframe(tmp_path: Path) -> Path:
    """A small keyframe with a gradient (a flat image would hide a broken render)."""
    image = Image.new("RGB", (96, 64))
    image.putdata([(x * 2, y * 3, (x + y) % 256) for y in range(64) for x in range(96)])
    path = tmp_path / "keyframe.png"
    image.save(path)
    return path


def workflow(name: str, image: str, scene: str = "scene-001", *, small: bool = False) -> dict[str, Any]:
    """A fixture workflow with the keyframe and a save prefix naming the scene (patched by class)."""
    prompt = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = image
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = f"gemdirect-test/{scene}/{uuid.uuid4().hex[:8]}/frame"
        if small and node["class_type"] == "SVD_img2vid_Conditioning":
            inputs.update(width=256, height=144, video_frames=4)
        if small and node["class_type"] == "KSampler":
            inputs["steps"] = 6
    return prompt


def upload(client: ComfyClient, keyframe: Path) -> str:
    answer = client.upload_image(keyframe, name=f"kf-{uuid.uuid4().hex[:8]}.png")
    assert answer["type"] == "input" and answer["subfolder"] == ""
    return answer["name"]


def follow(client: ComfyClient, prompt: dict[str, Any], policy: QueuePolicy = POLICY, **kw: Any) -> Any:
    """run_job that also collects its events; returns (result or JobFailed, events)."""
    events: list[dict[str, Any]] = []
    try:
        outcome: Any = run_job(client, prompt, policy=policy, on_event=events.append, **kw)
    except JobFailed as failure:
        outcome = failure
    return outcome, events


def expect_failure(outcome: Any, kind: str) -> JobFailed:
    assert isinstance(outcome, JobFailed), f"expected a {kind} failure, got {outcome!r}"
    assert outcome.kind == kind, f"{outcome.kind}: {outcome}"
    json.dumps(outcome.evidence)  # the evidence is JSON-serialisable as it is
    assert outcome.evidence["prompt_id"] and outcome.evidence["kind"] == kind
    return outcome


def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """A bounded wait for a server-side state (an Event wait between checks, never past ``seconds``)."""
    deadline = Deadline(seconds)
    pause = threading.Event()
    while not deadline.expired():
        if predicate():
            return True
        pause.wait(min(0.05, deadline.remaining()))
    return predicate()


# ---------------------------------------------------------------------------------------- success
def test_svd_workflow_runs_to_frames_with_progress_timings_and_decoded_downloads(
    make_sim, make_client, keyframe, tmp_path
):
    sim = make_sim()
    client = make_client(sim.url)
    prompt = workflow("svd_img2vid.json", upload(client, keyframe))
    progress: list[tuple[int, int]] = []
    result, events = follow(client, prompt, HEALTHY, on_progress=lambda v, m: progress.append((v, m)))
    assert isinstance(result, JobResult), result
    assert result.cached is False and result.notes == []
    assert result.completion_signal in ("execution_success", "executing{node: null}")
    assert len(result.outputs) == 25 and {o["node_id"] for o in result.outputs} == {"7"}
    assert result.outputs[0]["filename"].endswith(".png") and result.outputs[0]["animated"] is False
    assert progress == [(step, 20) for step in range(1, 21)]
    assert [(v, m) for _, v, m in result.progress] == progress
    assert result.seconds_per_step is not None and result.seconds_per_step > 0
    t = result.timings
    assert 0 <= t["queued_s"] <= t["started_s"] <= t["completed_s"] <= t["history_s"]
    assert result.history["status"]["status_str"] == "success"
    assert result.message_counts["progress"] == 20 and result.message_counts["executed"] == 1
    assert result.poll_attempts >= 1
    kinds = [e["event"] for e in events]
    assert kinds.index("ws_connected") < kinds.index("post_prompt") < kinds.index("queued")
    assert kinds[-1] == "finished" and "completion" in kinds
    ws_types = [e["type"] for e in events if e["event"] == "ws"]
    assert ws_types[0] == "status" and "executed" in ws_types and "execution_success" in ws_types
    assert ws_types.index("executed") < ws_types.index("execution_success")
    for event in events:
        assert len(json.dumps(event)) < 600, event  # small enough for events.jsonl, even progress_state
    times = [e["s"] for e in events]
    # seconds count from POST /prompt: the socket was connected before it, the prompt queued after it
    assert times == sorted(times)
    assert (
        times[kinds.index("ws_connected")]
        <= 0
        <= times[kinds.index("post_prompt")]
        <= times[kinds.index("queued")]
    )
    files = download_outputs(client, result.outputs, tmp_path / "frames", deadline=Deadline(30))
    assert len(files) == 25 and sum(f.frames for f in files) == 25
    for file in files:
        data = Path(file.path).read_bytes()
        assert Path(file.path).parent == tmp_path / "frames"
        assert hashlib.sha256(data).hexdigest() == file.sha256 and file.size == len(data)
        assert (file.width, file.height, file.format, file.decoded) == (1024, 576, "PNG", True)
    assert json.dumps([f.to_dict() for f in files])


def test_smoke_workflow_then_an_unchanged_rerun_is_recognised_as_cached(make_sim, make_client, keyframe):
    sim = make_sim()
    client = make_client(sim.url)
    prompt = workflow("smoke.json", upload(client, keyframe))
    first, _ = follow(client, prompt)
    assert isinstance(first, JobResult) and first.cached is False and len(first.outputs) == 8
    second, events = follow(client, prompt)
    assert isinstance(second, JobResult), second
    assert second.prompt_id != first.prompt_id
    # d_cached_requeue: everything cached, the old file names re-sent, no new files written
    assert second.cached is True
    assert [o["filename"] for o in second.outputs] == [o["filename"] for o in first.outputs]
    assert any("cache" in note and "no new files" in note for note in second.notes)
    assert not [e for e in events if e.get("type") == "executing" and e.get("node") is not None]


def test_validation_error_is_rejected_with_one_plain_line_per_node(make_sim, make_client, keyframe):
    sim = make_sim()
    client = make_client(sim.url)
    prompt = workflow("smoke.json", upload(client, keyframe))
    prompt["10"]["inputs"]["x"] = -1
    with pytest.raises(PromptRejected) as caught:
        client.queue_prompt(prompt, client_id=str(uuid.uuid4()))
    line = "node 10 (ImageCrop): Value -1 smaller than min of 0: x"
    assert caught.value.node_messages == [line]
    assert line in str(caught.value) and caught.value.status == 400
    assert caught.value.node_errors["10"]["class_type"] == "ImageCrop"
    outcome, events = follow(client, prompt)
    failure = expect_failure(outcome, "rejected")
    assert isinstance(failure, PromptRejected)  # callers may catch either
    assert failure.node_messages == [line] and line in str(failure)
    assert client.queue() == {"running": [], "pending": []}
    assert [e["event"] for e in events][-1] == "rejected"


def test_execution_error_ends_the_attempt_at_once_with_node_class_message_and_traceback(
    make_sim, make_client, keyframe
):
    sim = make_sim("execution-error")
    client = make_client(sim.url)
    outcome, events = follow(client, workflow("svd_img2vid.json", upload(client, keyframe), small=True))
    failure = expect_failure(outcome, "execution_error")
    error = failure.evidence["error"]
    assert error["node_id"] == "5" and error["node_type"] == "KSampler"
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert isinstance(error["traceback"], list) and error["traceback"]
    assert "node 5 (KSampler)" in str(failure) and "OutOfMemoryError" in str(failure)
    assert failure.evidence["last_progress"]["value"] == 3 and failure.evidence["interrupt_sent"] is False
    # ended by the server's message, not by a deadline: no setting bounds it, no clean-up was needed
    assert failure.evidence["setting"] is None and not [e for e in events if e["event"] == "interrupt"]
    kinds = [e.get("type", e["event"]) for e in events]
    assert kinds.index("execution_error") < kinds.index("failed") == len(kinds) - 1


# ---------------------------------------------------------------------------------------- faults
def test_history_never_fails_completion_grace_soon_after_executed_and_interrupts(
    make_sim, make_client, keyframe
):
    sim = make_sim("history-never@scene-001")
    client = make_client(sim.url)
    outcome, events = follow(client, workflow("smoke.json", upload(client, keyframe)))
    failure = expect_failure(outcome, "completion_grace")  # not scene_max_wait: the 20 s were not waited
    text = str(failure)
    assert "--completion-grace = 1.5 s" in text and "executed" in text and "last answer {}" in text
    assert "left /queue without a /history entry" in text
    assert failure.evidence["setting"] == "completion_grace"
    assert failure.evidence["interrupt_sent"] is True
    assert failure.evidence["announced_outputs"]  # executed named files that /history never listed
    assert failure.evidence["poll_attempts"] >= 3 and failure.evidence["last_poll_answer"] == "{}"
    assert "executed" in [m["type"] for m in failure.evidence["last_messages"]]
    kinds = [e["event"] for e in events]
    assert kinds.index("completion") < kinds.index("interrupt") < kinds.index("failed") == len(kinds) - 1
    assert events[kinds.index("completion")]["signal"] == "left /queue without a /history entry"


def test_history_never_with_few_attempts_fails_history_max_attempts(make_sim, make_client, keyframe):
    sim = make_sim("history-never")
    client = make_client(sim.url)
    policy = QueuePolicy(
        scene_max_wait=20,
        history_poll_interval=0.1,
        history_max_attempts=3,
        completion_grace=10,
        ws_idle_timeout=0.5,
    )
    outcome, _ = follow(client, workflow("smoke.json", upload(client, keyframe)), policy)
    failure = expect_failure(outcome, "history_max_attempts")  # before the 10 s grace and the 20 s wait
    assert "--history-max-attempts = 3" in str(failure) and failure.evidence["counted_poll_attempts"] == 3
    assert (
        failure.evidence["interrupt_sent"] is True and failure.evidence["setting"] == "history_max_attempts"
    )


def test_history_late_succeeds_and_notes_the_delay(make_sim, make_client, keyframe):
    sim = make_sim("history-late", history_late_seconds=0.6)
    client = make_client(sim.url)
    result, _ = follow(client, workflow("smoke.json", upload(client, keyframe)))
    assert isinstance(result, JobResult), result
    assert len(result.outputs) == 8
    assert result.timings["history_s"] - result.timings["completed_s"] >= 0.5
    assert any(note.startswith("history came ") and "after completion" in note for note in result.notes)
    assert result.poll_attempts >= 2


def test_ws_drop_completes_by_polling(make_sim, make_client, keyframe):
    sim = make_sim("ws-drop")
    client = make_client(sim.url)
    result, events = follow(client, workflow("svd_img2vid.json", upload(client, keyframe), small=True))
    assert isinstance(result, JobResult), result
    assert len(result.outputs) == 4 and result.poll_attempts >= 1
    assert any("websocket dropped" in note and "completed by polling" in note for note in result.notes)
    assert any(e["event"] == "fallback" and e["reason"] == "websocket dropped" for e in events)
    assert result.progress and result.progress[-1][1] < 6  # progress stopped with the socket


def test_ws_silent_completes_by_polling(make_sim, make_client, keyframe):
    sim = make_sim("ws-silent@scene-001")
    client = make_client(sim.url)
    result, events = follow(client, workflow("smoke.json", upload(client, keyframe)))
    assert isinstance(result, JobResult), result
    assert len(result.outputs) == 8 and result.poll_attempts >= 1
    assert any("websocket silent" in note and "completed by polling" in note for note in result.notes)
    kinds = [e["event"] for e in events]
    assert events[kinds.index("fallback")]["reason"] == "websocket silent"
    assert kinds.index("fallback") < kinds.index("poll") < kinds.index("finished")


def test_stall_fails_at_scene_max_wait_with_last_progress_and_interrupts_our_prompt(
    make_sim, make_client, keyframe
):
    sim = make_sim("stall")
    client = make_client(sim.url)
    policy = QueuePolicy(
        scene_max_wait=2.5,
        history_poll_interval=0.2,
        history_max_attempts=3,
        completion_grace=1,
        ws_idle_timeout=0.5,
    )
    outcome, events = follow(
        client, workflow("svd_img2vid.json", upload(client, keyframe), small=True), policy
    )
    failure = expect_failure(outcome, "scene_max_wait")
    text = str(failure)
    assert "last progress 5/6" in text and "--scene-max-wait = 2.5 s" in text
    assert failure.evidence["last_progress"]["value"] == 5 and failure.evidence["last_progress"]["max"] == 6
    assert failure.evidence["interrupt_sent"] is True and failure.evidence["queue"]["ours"] == "running"
    # polls that found the prompt running were proof of life, not history_max_attempts (3); only a
    # poll that could not read /queue in time counts (a busy machine, the deadline's last moment)
    polls = [e for e in events if e["event"] == "poll"]
    assert sum(1 for e in polls if e["queue"] == "running") > 3
    assert failure.evidence["counted_poll_attempts"] == sum(1 for e in polls if e["queue"] != "running")
    assert failure.evidence["setting"] == "scene_max_wait" and failure.evidence["deadline_s"] == 2.5
    # the interrupt reached the stuck prompt: it ends as interrupted, and the queue empties
    pid = failure.evidence["prompt_id"]
    assert wait_until(lambda: client.history(pid) is not None)
    assert client.history(pid)["status"]["status_str"] == "error"
    assert client.queue()["running"] == []


def test_view_404_names_every_missing_file(make_sim, make_client, keyframe, tmp_path):
    sim = make_sim("view-404")
    client = make_client(sim.url)
    result, _ = follow(client, workflow("smoke.json", upload(client, keyframe)))
    assert isinstance(result, JobResult) and len(result.outputs) == 8
    with pytest.raises(OutputDownloadError) as caught:
        download_outputs(client, result.outputs, tmp_path / "frames", deadline=Deadline(10))
    text = str(caught.value)
    assert "8 of 8" in text and "HTTP 404" in text
    for output in result.outputs:
        assert output["filename"] in text
    assert len(caught.value.missing) == 8 and caught.value.downloaded == []
    with pytest.raises(OutputMissing, match=result.outputs[0]["filename"]):
        client.view(result.outputs[0]["filename"], result.outputs[0]["subfolder"], "output")


@pytest.mark.parametrize("told", [True, False], ids=["process-death-reported", "connection-refused"])
def test_crash_fails_fast_with_server_gone(make_sim, make_client, keyframe, told):
    sim = make_sim("crash")
    client = make_client(sim.url)
    prompt = workflow("svd_img2vid.json", upload(client, keyframe), small=True)
    alive = (lambda: not sim.crashed.is_set()) if told else None
    outcome, _ = follow(client, prompt, is_server_alive=alive)
    failure = expect_failure(outcome, "server_gone")
    assert sim.url in str(failure)
    assert ("process has exited" in str(failure)) if told else ("connection refused" in str(failure))
    assert failure.evidence["interrupt_sent"] is False and failure.evidence["setting"] is None
    assert sim.wait_stopped(5)  # (the in-thread server may still be closing when death is reported)
    with pytest.raises(ServerGone):
        client.system_stats()


def test_a_deadline_never_touches_another_clients_prompt_and_their_interrupt_is_not_ours(
    make_sim, make_client, keyframe
):
    sim = make_sim("stall@scene-002")
    client = make_client(sim.url)
    image = upload(client, keyframe)
    # queued without a client id, like a script's: the server broadcasts its messages to every socket
    other = requests.post(
        sim.url + "/prompt",
        json={"prompt": workflow("svd_img2vid.json", image, "scene-002", small=True)},
        timeout=5,
    ).json()
    assert wait_until(lambda: [i["prompt_id"] for i in client.queue()["running"]] == [other["prompt_id"]])
    short = QueuePolicy(
        scene_max_wait=1.5,
        history_poll_interval=0.2,
        history_max_attempts=5,
        completion_grace=1,
        ws_idle_timeout=0.5,
    )
    outcome, _ = follow(client, workflow("smoke.json", image), short)
    failure = expect_failure(outcome, "scene_max_wait")
    assert failure.evidence["queue"]["ours"].startswith("pending")
    assert failure.evidence["interrupt_sent"] is False and failure.evidence["removed_from_queue"] is True
    queue = client.queue()
    assert [i["prompt_id"] for i in queue["running"]] == [other["prompt_id"]] and queue["pending"] == []

    # Ours waits behind theirs; their prompt is interrupted by someone else: the broadcast
    # execution_interrupted is theirs, not ours, and ours runs to its end.
    done: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: done.update(r=follow(client, workflow("smoke.json", image), HEALTHY))
    )
    worker.start()
    assert wait_until(lambda: len(client.queue()["pending"]) == 1)
    client.interrupt(other["prompt_id"])
    worker.join(timeout=15)
    assert not worker.is_alive()
    result = done["r"][0]
    assert isinstance(result, JobResult), result
    assert len(result.outputs) == 8 and result.notes == []
    assert result.message_counts.get("other_prompt", 0) >= 1  # their execution_interrupted, ignored


# ---------------------------------------------------------------------------------------- client
def test_client_routes_against_the_simulator(make_sim, make_client, keyframe):
    sim = make_sim("stall")
    client = make_client(sim.url.rstrip("/") + "/")
    assert client.system_stats()["system"]["comfyui_version"] == "0.3.64"
    assert "KSampler" in client.object_info() and client.object_info("NoSuchNode") == {}
    assert client.models("checkpoints") == list(DEFAULT_CHECKPOINTS)
    with pytest.raises(ComfyError, match="no model folder"):
        client.models("no-such-folder")
    image = upload(client, keyframe)
    again = client.upload_image(keyframe, name=image, overwrite=False)  # same bytes: same name
    assert again["name"] == image
    # a running (stalled) prompt, then three pending, one queued at the front: run order by number
    running = client.queue_prompt(workflow("smoke.json", image), client_id="a")
    assert wait_until(lambda: len(client.queue()["running"]) == 1)
    ids = [client.queue_prompt(workflow("smoke.json", image), client_id="a")["prompt_id"] for _ in range(2)]
    front = requests.post(
        sim.url + "/prompt",
        json={"prompt": workflow("smoke.json", image), "client_id": "a", "front": True},
        timeout=5,
    ).json()
    queue = client.queue()
    numbers = [item["number"] for item in queue["pending"]]
    assert numbers == sorted(numbers) and queue["pending"][0]["prompt_id"] == front["prompt_id"]
    assert queue["running"][0] == {
        "number": running["number"],
        "prompt_id": running["prompt_id"],
        "client_id": "a",
        "outputs_to_execute": ["4"],
    }
    client.delete_from_queue([ids[0]])
    assert ids[0] not in [i["prompt_id"] for i in client.queue()["pending"]]
    client.interrupt(ids[1])  # not running: no effect
    assert client.queue()["running"][0]["prompt_id"] == running["prompt_id"]
    client.delete_from_queue([ids[1], front["prompt_id"]])
    client.interrupt(running["prompt_id"])
    assert wait_until(lambda: client.queue()["running"] == [])
    assert client.history(running["prompt_id"])["status"]["status_str"] == "error"
    assert client.history("no-such-prompt-id") is None
    client.free(unload_models=True, free_memory=True)
    with pytest.raises(ComfyError, match=r"HTTP 400 .*'\.\.'"):
        client.view("../escape.png", "", "output")


def test_a_request_never_waits_longer_than_the_deadline_allows():
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = ComfyClient(f"http://127.0.0.1:{silent.getsockname()[1]}", request_timeout_s=10)
        try:
            with pytest.raises(ComfyTimeout, match=r"left of its deadline \(scene_max_wait = 0.3 s\)"):
                client.system_stats(deadline=Deadline(0.3, setting="scene_max_wait"))
            spent = Deadline(0.001)
            threading.Event().wait(0.01)
            with pytest.raises(ComfyTimeout, match="not sent"):
                client.history("x", deadline=spent)
        finally:
            client.close()


def test_connection_refused_is_server_gone():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ComfyClient(f"127.0.0.1:{port}") as client:  # scheme added
        for call in (client.system_stats, client.queue, lambda: client.history("x", deadline=Deadline(5))):
            with pytest.raises(ServerGone, match="connection refused"):
                call()
        outcome, _ = follow(client, {"1": {"class_type": "SaveImage", "inputs": {}}})
        failure = expect_failure(outcome, "server_gone")  # refused at once, not the 20 s scene deadline
        assert "refused" in str(failure) and failure.evidence["setting"] is None


# ---------------------------------------------------------------------------------------- outputs
HISTORY_OUTPUTS = {  # c1 + c3 of the recorded 0.3.64 traces, plus a custom node's "gifs" and a preview
    "7": {
        "images": [{"filename": "apng_00002_.png", "subfolder": "reftrace", "type": "output"}],
        "animated": [True],
    },
    "6": {
        "images": [{"filename": "webm_00002_.webm", "subfolder": "reftrace", "type": "output"}],
        "animated": [True],
    },
    "5": {
        "images": [{"filename": "video_00002_.mp4", "subfolder": "reftrace", "type": "output"}],
        "animated": [True],
    },
    "4": {
        "images": [
            {"filename": "frames_00017_.png", "subfolder": "reftrace", "type": "output"},
            {"filename": "frames_00018_.png", "subfolder": "reftrace", "type": "output"},
        ]
    },
    "12": {
        "gifs": [{"filename": "vhs_00001.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]
    },
    "13": {"images": [{"filename": "ComfyUI_temp_abc_00001_.png", "subfolder": "", "type": "temp"}]},
    "14": {"text": ["not a file"]},
}


def test_list_outputs_reads_every_kind_of_save_node():
    found = list_outputs({"outputs": HISTORY_OUTPUTS})
    assert [(o.node_id, o.filename, o.animated) for o in found] == [
        ("4", "frames_00017_.png", False),
        ("4", "frames_00018_.png", False),
        ("5", "video_00002_.mp4", True),
        ("6", "webm_00002_.webm", True),
        ("7", "apng_00002_.png", True),
        ("12", "vhs_00001.mp4", True),
    ]
    assert found[0].where() == "reftrace/frames_00017_.png" and found[0].type == "output"
    assert [o.type for o in list_outputs({"outputs": HISTORY_OUTPUTS}, include_temp=True)].count("temp") == 1
    assert list_outputs({"outputs": {}}) == [] and list_outputs(None) == []


@pytest.mark.parametrize(
    ("subfolder", "filename", "expected"),
    [
        ("", "frame_00001_.png", "frame_00001_.png"),
        ("gemdirect/scene-001", "frame.png", "gemdirect/scene-001/frame.png"),
        ("../../..", "frame.png", "frame.png"),
        ("/etc", "passwd", "etc/passwd"),
        ("C:\\Windows\\System32", "x.png", "Windows/System32/x.png"),
        ("a\\..\\..\\b", "x.png", "a/b/x.png"),
        ("", "../../outside.png", "outside.png"),
        ("", "C:evil.png", "evil.png"),
        ("", "CON", "_CON"),
        ("", "aux.png", "_aux.png"),
        ("", "lpt1.txt", "_lpt1.txt"),
        ("", 'a<b>c:d"e|f?g*.png', "a_b_c_d_e_f_g_.png"),
        ("", "trailing. . ", "trailing"),
        ("nul", "x.png", "_nul/x.png"),
    ],
)
def test_safe_output_path_keeps_untrusted_names_inside_the_folder(tmp_path, subfolder, filename, expected):
    path = safe_output_path(tmp_path, subfolder, filename)
    assert path == tmp_path.joinpath(*expected.split("/"))
    assert tmp_path.resolve() in path.resolve().parents


@pytest.mark.parametrize("filename", ["..", "", "a/..", "x\x00.png", ". ."])
def test_safe_output_path_refuses_names_with_nothing_usable(tmp_path, filename):
    with pytest.raises(UnsafeOutputName):
        safe_output_path(tmp_path, "", filename)


class FakeViewClient:
    """Only /view, answering from a dict; a missing name is a 404 like the server's."""

    base_url = "http://fake-comfyui"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def view(
        self, filename: str, subfolder: str = "", type: str = "output", *, deadline: Any = None
    ) -> bytes:
        key = f"{subfolder}/{filename}" if subfolder else filename
        if key not in self.files:
            raise OutputMissing(
                f"no file {key}", filename=filename, subfolder=subfolder, type=type, status=404
            )
        return self.files[key]


def _png(color: tuple[int, int, int], frames: int = 1, fmt: str = "PNG") -> bytes:
    import io

    images = [
        Image.new("RGB", (16, 8), (color[0], color[1], (color[2] + i * 40) % 256)) for i in range(frames)
    ]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=frames > 1, append_images=images[1:])
    return buf.getvalue()


def test_download_outputs_counts_animated_frames_and_names_every_problem(tmp_path):
    files = {
        "s/a.png": _png((10, 20, 30)),
        "s/anim.webp": _png((200, 10, 10), frames=5, fmt="WEBP"),
        "s/clip.mp4": b"\x00\x00\x00\x20ftypisom",
        "s/broken.png": b"\x89PNG\r\n\x1a\n not really",
        "other/a.png": _png((1, 2, 3)),
    }
    outputs = [
        OutputFile("1", "a.png", "s"),
        {"node_id": "2", "filename": "anim.webp", "subfolder": "s", "type": "output", "animated": True},
        OutputFile("3", "clip.mp4", "s", animated=True),
        OutputFile("4", "broken.png", "s"),
        OutputFile("4", "gone1.png", "s"),
        OutputFile("4", "gone2.png", "s"),
        OutputFile("5", "a.png", "other"),  # same name from another subfolder: kept apart
    ]
    with pytest.raises(OutputDownloadError) as caught:
        download_outputs(FakeViewClient(files), outputs, tmp_path, deadline=Deadline(10))
    error = caught.value
    assert error.missing == ["s/gone1.png", "s/gone2.png"]
    assert [name for name, _ in error.undecodable] == ["s/broken.png"]
    for name in ("s/gone1.png", "s/gone2.png", "s/broken.png"):
        assert name in str(error)
    got = {Path(f.path).name: f for f in error.downloaded}
    assert got["anim.webp"].frames == 5 and got["anim.webp"].animated is True
    assert got["a.png"].frames == 1 and got["a.png"].source == "s/a.png"
    assert got["clip.mp4"].decoded is False and got["clip.mp4"].frames == 1
    assert len(got) == 4 and all(Path(f.path).is_file() for f in error.downloaded)
    assert (tmp_path / "broken.png").is_file()  # kept for inspection
    assert not list(tmp_path.glob("*.part"))


def test_queue_policy_names_its_settings_and_refuses_nonsense():
    from pytest_gemdirect.policy import POLICY_NAMES
    from pytest_gemdirect.settings import SPECS_BY_NAME

    assert QueuePolicy().settings() == {name: SPECS_BY_NAME[name].default for name in POLICY_NAMES}
    assert QueuePolicy().settings()["scene_max_wait"] == 180.0
    with pytest.raises(ValueError, match="completion_grace"):
        QueuePolicy(completion_grace=0)
    with pytest.raises(ValueError, match="history_max_attempts"):
        QueuePolicy(history_max_attempts=0)


# ---------------------------------------------------------------------------------------- recorded traces
# The client against the real ComfyUI 0.3.64 server's own messages, replayed over a real socket in
# the recorded order, with the recorded gaps (capped). The traces are copies of
# shared/reference/comfyui (tests/data/comfyui-0.3.64/README.md); the recorded prompt id and client
# id become {P} and {C}, replaced by the ids of the run being followed.
TRACES = Path(__file__).parent / "data" / "comfyui-0.3.64"
TRACE_FILES = {
    "c1": "c1_success_saveimage",
    "d": "d_cached_requeue",
    "f1": "f1_runtime_error_save_outside",
    "g": "g_interrupt",
    "h1": "h1_progress_legacy_client",
}


def recorded(name: str) -> tuple[list[tuple[float, str, Any]], dict[str, Any]]:
    """(frames, history entry) of a recorded trace: frames are (t, "text", message) or
    (t, "binary", [length, event_type]); ids as {P} and {C}."""
    stem = TRACES / TRACE_FILES[name]
    answer = json.loads(stem.with_suffix(".history.json").read_text(encoding="utf-8"))["body"]
    [(prompt_id, entry)] = answer.items()
    rows = [
        json.loads(line) for line in stem.with_suffix(".ws.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    client_id = next(r["url"].split("clientId=", 1)[1] for r in rows if r.get("event") == "ws_connected")

    def placeholders(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(prompt_id, "{P}").replace(client_id, "{C}"))

    frames: list[tuple[float, str, Any]] = []
    for row in rows:
        if row["dir"] == "recv" and row.get("kind") == "text":
            frames.append((row["t"], "text", placeholders(row["msg"])))
        elif row["dir"] == "recv" and row.get("kind") == "binary":
            frames.append((row["t"], "binary", [row["length"], row["event_type"]]))
    assert frames and entry, name
    return frames, placeholders(entry)


class Replay:
    """A stand-in ComfyUI that plays one recorded WebSocket trace to the client that queues a prompt.

    The first frame (status with sid) goes out on connect, the rest after POST /prompt, paced by
    the recorded gaps (at most ``gap_cap``). Like the real server, the history entry is stored
    just before the final executing{node: null}. ``deliver_until`` cuts delivery after that many
    frames while the "server" goes on (an orphaned socket, as in the i2 trace).
    """

    def __init__(
        self, name: str, *, gap_cap: float = 0.15, deliver_until: int | None = None, garbled_history: int = 0
    ) -> None:
        self.frames, self.history = recorded(name)
        self.garbled_history = garbled_history  # this many /history answers are an HTML error page
        self.gap_cap = gap_cap
        self.deliver_until = deliver_until
        self.prompt_id: str | None = None
        self.client_id: str | None = None
        self.stored = False
        self.posted: Any = None
        self.interrupts: list[Any] = []
        self.server: Any = None

    def text(self, payload: Any) -> str:
        raw = json.dumps(payload)
        return raw.replace("{P}", self.prompt_id or "").replace("{C}", self.client_id or "")

    async def ws(self, request: Any) -> Any:
        import asyncio

        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.client_id = request.rel_url.query.get("clientId")
        await ws.send_str(self.text(self.frames[0][2]))
        await asyncio.wait_for(self.posted.wait(), 10)
        previous = self.frames[0][0]
        for index, (t, kind, payload) in enumerate(self.frames[1:], start=1):
            await asyncio.sleep(min(max(t - previous, 0.0), self.gap_cap))
            previous = t
            if index == len(self.frames) - 1:
                self.stored = True
            if self.deliver_until is not None and index >= self.deliver_until:
                continue
            if kind == "text":
                await ws.send_str(self.text(payload))
            else:
                length, event_type = payload
                await ws.send_bytes(
                    event_type.to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(length - 8)
                )
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
        return ws

    async def post_prompt(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        self.prompt_id = body["prompt_id"]
        self.posted.set()
        return web.json_response({"prompt_id": self.prompt_id, "number": 29, "node_errors": {}})

    async def history_item(self, request: Any) -> Any:
        from aiohttp import web

        pid = request.match_info["prompt_id"]
        if self.garbled_history > 0:
            self.garbled_history -= 1
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        if not self.stored or pid != self.prompt_id:
            return web.json_response({})
        return web.json_response({pid: json.loads(self.text(self.history))})

    async def queue(self, request: Any) -> Any:
        from aiohttp import web

        running = [] if self.stored else [[29, self.prompt_id, {}, {"client_id": self.client_id}, ["4"]]]
        return web.json_response({"queue_running": running, "queue_pending": []})

    async def ok(self, request: Any) -> Any:
        from aiohttp import web

        self.interrupts.append((request.path, await request.text()))
        return web.Response(status=200)

    def app(self) -> Any:
        import asyncio

        from aiohttp import web

        self.posted = asyncio.Event()
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/history/{prompt_id}", self.history_item)
        app.router.add_get("/queue", self.queue)
        app.router.add_post("/interrupt", self.ok)
        app.router.add_post("/queue", self.ok)
        return app

    def __enter__(self) -> Replay:
        from pytest_gemdirect.sim.server import ServerThread

        self.server = ServerThread(self.app, name="gemdirect-replay").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def recorded_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, kind, payload in self.frames[: self.deliver_until]:
            key = payload["type"] if kind == "text" else "binary"
            counts[key] = counts.get(key, 0) + 1
        return counts


def replay(name: str, policy: QueuePolicy = POLICY, **options: Any) -> tuple[Any, Replay]:
    with Replay(name, **options) as server, ComfyClient(server.url) as client:
        outcome, _ = follow(client, {"4": {"class_type": "SaveImage", "inputs": {}}}, policy)
    return outcome, server


def test_recorded_success_completes_on_the_real_message_sequence():
    result, server = replay("c1", HEALTHY)
    assert isinstance(result, JobResult), result
    assert result.message_counts == server.recorded_counts()  # every recorded message read, in order
    assert result.completion_signal == "execution_success" and result.cached is False
    assert [o["filename"] for o in result.outputs] == [f"frames_{n:05d}_.png" for n in range(17, 25)]
    assert {o["subfolder"] for o in result.outputs} == {"reftrace"} and result.notes == []
    assert result.timings["completed_s"] <= result.timings["history_s"]


def test_recorded_fully_cached_requeue_is_recognised():
    result, server = replay("d")
    assert isinstance(result, JobResult), result
    assert result.message_counts == server.recorded_counts()
    assert result.cached is True  # execution_cached listed every node, no node executed
    assert result.outputs[0]["filename"] == "frames_00025_.png"  # the old names, re-sent
    assert any("no new files" in note for note in result.notes)


def test_recorded_runtime_error_ends_with_node_class_and_message():
    outcome, _ = replay("f1")
    failure = expect_failure(outcome, "execution_error")
    assert (
        failure.evidence["error"]["node_id"] == "4" and failure.evidence["error"]["node_type"] == "SaveImage"
    )
    assert "Saving image outside the output folder is not allowed" in str(failure)
    assert failure.evidence["error"]["traceback"]


def test_recorded_interrupt_ends_the_attempt_as_interrupted():
    outcome, _ = replay("g")
    failure = expect_failure(outcome, "interrupted")
    assert "node 4 (ImageScale)" in str(failure)


def test_recorded_progress_and_binary_previews_are_followed():
    result, server = replay("h1")
    assert isinstance(result, JobResult), result
    assert [(v, m) for _, v, m in result.progress] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert result.message_counts["binary"] == 4 == server.recorded_counts()["binary"]
    assert result.seconds_per_step is not None


def test_an_orphaned_socket_falls_back_to_polling_and_completes():
    # i2: the socket stops receiving mid-run (a second socket took the client id) while the job goes on
    result, server = replay("c1", deliver_until=10, gap_cap=0.25)
    assert isinstance(result, JobResult), result
    assert result.message_counts == server.recorded_counts()
    assert any("websocket silent" in note and "completed by polling" in note for note in result.notes)
    assert result.completion_signal == "final /history entry" and len(result.outputs) == 8


# ---------------------------------------------------------------------------------------- bounded answers
@pytest.fixture
def serve(stack: ExitStack) -> Callable[[Callable[[], web.Application]], str]:
    """Start a small aiohttp app (built in the server's loop) for one test; returns its URL."""

    def start(app: Callable[[], web.Application]) -> str:
        return str(stack.enter_context(ServerThread(app, name="gemdirect-test")).url)

    return start


class Trickle:
    """Answers GET /history/<id> with a body that comes a little at a time (10 s for all of it)."""

    def __init__(self, total: int = 200_000, piece: int = 200, pause: float = 0.01) -> None:
        self.total, self.piece, self.pause = total, piece, pause
        self.sent = 0
        self.finished = False

    async def history(self, request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json", "Content-Length": str(self.total)}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            while self.sent < self.total:
                await response.write(b" " * self.piece)
                self.sent += self.piece
                await asyncio.sleep(self.pause)
            self.finished = True
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: that is the point
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/history/{prompt_id}", self.history)
        return app


def test_a_trickling_body_ends_at_its_deadline_naming_the_setting(serve):
    trickle = Trickle()
    url = serve(trickle.app)
    with ComfyClient(url) as client, pytest.raises(ComfyTimeout) as caught:
        client.history("p", deadline=Deadline(0.5, setting="scene_max_wait"))
    text = str(caught.value)
    assert "still arriving when the deadline of 0.5 s (scene_max_wait = 0.5 s) passed" in text
    received = int(re.search(r"\((\d+) bytes received\)", text).group(1))
    assert 0 < received < trickle.total
    assert not trickle.finished and trickle.sent < trickle.total  # the client did not wait for the rest


def test_without_a_deadline_the_request_timeout_bounds_the_body(serve):
    trickle = Trickle()
    url = serve(trickle.app)
    with ComfyClient(url, request_timeout_s=0.5) as client, pytest.raises(ComfyTimeout) as caught:
        client.history("p")
    assert "the client's request timeout of 0.5 s" in str(caught.value) and not trickle.finished


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=b"[" + b"0," * 2500 + b"0]", content_type="application/json")


async def _big_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for _ in range(10):
            await response.write(b" " * 500)
        await response.write(b"{}")
    except (ConnectionError, RuntimeError):
        pass
    return response


def _big_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/object_info", _big)
    app.router.add_get("/history/{prompt_id}", _big_chunked)
    return app


def test_an_answer_over_the_size_cap_fails_naming_the_cap(serve):
    url = serve(_big_app)
    assert ComfyClient(url).max_body_bytes == 64 * 1024 * 1024  # the default cap
    with ComfyClient(url, max_body_bytes=1000) as client:
        with pytest.raises(ResponseTooLarge) as declared:
            client.object_info()  # Content-Length says so: refused before reading
        with pytest.raises(ResponseTooLarge) as chunked:
            client.history("p")  # no length given: stopped once past the cap
    assert "declares 5003 bytes" in str(declared.value)
    assert re.search(r"the answer ran past (\d+) bytes, more than the cap", str(chunked.value))
    for caught in (declared, chunked):
        assert caught.value.kind == "too_large"
        assert "the cap of 1000 bytes (max_response_mb, --max-response-mb)" in str(caught.value)
    with ComfyClient(url, max_body_bytes=10_000) as roomy:
        assert roomy.history("p") is None  # under the cap the same answers are read


def test_a_garbled_history_answer_is_retried_as_a_transient_error():
    with Replay("c1", garbled_history=2) as server, ComfyClient(server.url) as client:
        result, events = follow(client, {"4": {"class_type": "SaveImage", "inputs": {}}})
    assert isinstance(result, JobResult), result
    polls = [e for e in events if e["event"] == "poll"]
    assert [p["history"].split(":")[0] for p in polls] == ["error", "error", "final"]
    assert "not JSON" in polls[0]["history"]
    assert [e["event"] for e in events][-1] == "finished"


class Vanishing:
    """Runs our prompt up to `executed`, then drops it: no completion message, no history entry
    (the 2025-11-11 hang, history-never). Records when it sent `executed` and each /history poll."""

    def __init__(self) -> None:
        self.prompt_id: str | None = None
        self.executed_at: float | None = None
        self.history_polls: list[float] = []
        self.posted: Any = None

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client_id = request.rel_url.query.get("clientId")
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}
        await ws.send_json({"type": "status", "data": status})
        await self.posted.wait()
        output = {"images": [{"filename": "f_00001_.png", "subfolder": "", "type": "output"}]}
        await ws.send_json(
            {"type": "executed", "data": {"node": "4", "output": output, "prompt_id": self.prompt_id}}
        )
        self.executed_at = time.monotonic()
        async for _ in ws:
            pass
        return ws

    async def post_prompt(self, request: web.Request) -> web.Response:
        self.prompt_id = (await request.json())["prompt_id"]
        self.posted.set()
        return web.json_response({"prompt_id": self.prompt_id, "number": 1, "node_errors": {}})

    async def history(self, request: web.Request) -> web.Response:
        self.history_polls.append(time.monotonic())
        return web.json_response({})

    async def queue(self, request: web.Request) -> web.Response:
        running = [] if self.executed_at else [[1, self.prompt_id, {}, {}, ["4"]]]
        return web.json_response({"queue_running": running, "queue_pending": []})

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    def app(self) -> web.Application:
        self.posted = asyncio.Event()
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/history/{prompt_id}", self.history)
        app.router.add_get("/queue", self.queue)
        app.router.add_post("/interrupt", self.ok)
        app.router.add_post("/queue", self.ok)
        return app


def test_completion_without_history_is_decided_when_the_grace_ends_not_a_poll_later(serve):
    server = Vanishing()
    url = serve(server.app)
    grace = 1.5
    policy = QueuePolicy(
        scene_max_wait=20,
        history_poll_interval=1.0,
        history_max_attempts=40,
        completion_grace=grace,
        ws_idle_timeout=10,
    )
    with ComfyClient(url) as client:
        outcome, events = follow(client, {"4": {"class_type": "SaveImage", "inputs": {}}}, policy)
    failure = expect_failure(outcome, "completion_grace")
    assert failure.evidence["setting"] == "completion_grace" and "--completion-grace = 1.5 s" in str(failure)
    # Two looks: the one that found the prompt gone from /queue, and the deciding one at the grace's end.
    assert len(server.history_polls) == 2
    noticed, decided = server.history_polls
    assert server.executed_at is not None and server.executed_at < noticed
    # The grace counts from the last sign of life (`executed`), not from the poll that noticed:
    assert decided >= server.executed_at + grace  # not before the grace ended
    assert decided < noticed + grace  # the old follower looked (and failed) one poll interval later
    kinds = [e["event"] for e in events]
    assert kinds.index("completion") < kinds.index("interrupt") < kinds.index("failed")


def test_history_json_keeps_what_the_harness_uses_and_bounds_the_rest():
    outputs = {"4": {"images": [{"filename": "f.png", "subfolder": "", "type": "output"}]}}
    status = {"status_str": "success", "completed": True, "messages": [["execution_success", {}]]}
    graph = {str(n): {"class_type": "X", "inputs": {"blob": "x" * 1000}} for n in range(200)}
    entry = {
        "prompt": [7, "pid", graph, {"client_id": "cid", "extra_pnginfo": "y" * 100_000}, ["4"]],
        "outputs": outputs,
        "status": status,
        "meta": {"4": {"node_id": "4"}},
        "custom_node_dump": "z" * 500_000,
        "small_extra": {"ok": True},
    }
    trimmed = trim_history(entry)
    assert trimmed["outputs"] == outputs and trimmed["status"] == status and trimmed["meta"] == entry["meta"]
    number, prompt_id, kept_graph, extra, to_execute = trimmed["prompt"]
    assert (number, prompt_id, extra["client_id"], to_execute) == (7, "pid", "cid", ["4"])
    assert kept_graph["trimmed"] is True and kept_graph["original_bytes"] > 200_000
    assert extra["extra_pnginfo"]["trimmed"] is True
    assert trimmed["custom_node_dump"]["original_bytes"] == 500_002
    assert trimmed["small_extra"] == {"ok": True}
    assert len(json.dumps(trimmed)) < 20_000  # from about 800 KB
    assert list_outputs(trimmed) == list_outputs(entry)
