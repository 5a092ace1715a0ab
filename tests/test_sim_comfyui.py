"""The embedded ComfyUI simulator against the recorded real ComfyUI 0.3.64 protocol.

Everything goes over real sockets (requests + websocket-client). The expected WebSocket type
sequences, error bodies and status codes are copied from ``shared/reference/comfyui`` (the
recorder's ``_run_summary.json`` and the recorded responses). No sleeps: every wait is on a
message, a process or a file, with a deadline.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from PIL import Image, ImageChops

from pytest_gemdirect.sim.comfyui import (
    DEFAULT_CHECKPOINTS,
    DEVICE_NAME,
    VRAM_IDLE_FREE,
    VRAM_JOB,
    VRAM_TOTAL,
    ComfyUISimulator,
    scene_of,
)
from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.server import ServerThread

# ------------------------------------------------------------------ recorded sequences (_run_summary.json)
C1_TYPES = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "progress_state",
    "progress_state",
    "executing",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
D_CACHED_TYPES = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
D2_PARTIAL_TYPES = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "executed",
    "progress_state",
    "execution_success",
    "status",
    "executing",
]
F1_ERROR_TYPES = [
    "status",
    "status",
    "status",
    "execution_start",
    "execution_cached",
    "progress_state",
    "executing",
    "execution_error",
    "status",
    "executing",
]
EXECUTION_ERROR_KEYS = [
    "prompt_id",
    "node_id",
    "node_type",
    "executed",
    "exception_message",
    "exception_type",
    "traceback",
    "current_inputs",
    "current_outputs",
    "timestamp",
]

SMOKE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "reftrace_input.png"}},
    "2": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "bilinear",
            "width": 128,
            "height": 96,
            "crop": "disabled",
        },
    },
    "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 8}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "reftrace/frames"}},
}


def svd_graph(
    image: str, prefix: str, *, steps: int = 6, frames: int = 6, size: tuple[int, int] = (256, 144)
):
    graph = json.loads(
        (Path(__file__).resolve().parents[1] / "fixtures/workflows/svd_img2vid.json").read_text()
    )
    graph["2"]["inputs"]["image"] = image
    graph["3"]["inputs"].update(width=size[0], height=size[1], video_frames=frames)
    graph["5"]["inputs"]["steps"] = steps
    graph["7"]["inputs"]["filename_prefix"] = prefix
    return graph


def smoke(prefix: str = "reftrace/frames", image: str = "reftrace_input.png") -> dict[str, Any]:
    graph = copy.deepcopy(SMOKE)
    graph["1"]["inputs"]["image"] = image
    graph["4"]["inputs"]["filename_prefix"] = prefix
    return graph


# ------------------------------------------------------------------ helpers
def png_bytes(size: tuple[int, int] = (160, 90), seed: int = 0) -> bytes:
    image = Image.new("RGB", size)
    pixels = image.load()
    for x in range(size[0]):
        for y in range(size[1]):
            pixels[x, y] = ((x * 5 + seed) % 256, (y * 7) % 256, ((x + y) * 3) % 256)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class WS:
    """A websocket-client connection with deadline-bounded receives."""

    def __init__(self, base_url: str, client_id: str | None = None, *, first: dict | None = None) -> None:
        self.client_id = client_id if client_id is not None else str(uuid.uuid4())
        url = base_url.replace("http://", "ws://") + "/ws"
        if client_id != "":
            url += f"?clientId={self.client_id}"
        self.ws = websocket.create_connection(url, timeout=5)
        if first is not None:
            self.ws.send(json.dumps(first))
        self.messages: list[Any] = []

    def recv(self, timeout: float = 10.0) -> Any:
        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException("closed by server")
        msg = json.loads(data) if opcode == websocket.ABNF.OPCODE_TEXT else bytes(data)
        self.messages.append(msg)
        return msg

    def until(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message; got {[_type(m) for m in got]}")
            msg = self.recv(left)
            got.append(msg)
            if pred(msg):
                return got

    def until_done(self, prompt_id: str, timeout: float = 10.0) -> list[Any]:
        return self.until(
            lambda m: is_type(m, "executing") and m["data"] == {"node": None, "prompt_id": prompt_id}, timeout
        )

    def silent_for(self, seconds: float) -> bool:
        """True when nothing arrives within ``seconds`` (a bounded wait for an expected absence)."""
        try:
            self.recv(seconds)
        except websocket.WebSocketTimeoutException:
            return True
        return False

    def types(self) -> list[str]:
        return [_type(m) for m in self.messages if not isinstance(m, bytes)]

    def close(self) -> None:
        self.ws.close()


def _type(msg: Any) -> str:
    return "binary" if isinstance(msg, bytes) else msg["type"]


def is_type(msg: Any, kind: str) -> bool:
    return not isinstance(msg, bytes) and msg.get("type") == kind


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an HTTP condition (the way a client polls /history) until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=10, **kw)

    def upload(self, name: str = "reftrace_input.png", data: bytes | None = None, **fields: str) -> dict:
        files = {"image": (name, data if data is not None else png_bytes(), "image/png")}
        response = self.post("/upload/image", files=files, data=fields)
        assert response.status_code == 200, response.text
        return response.json()

    def queue(self, prompt: dict, client_id: str | None, **extra: Any) -> dict:
        body = {"prompt": prompt, **extra}
        if client_id is not None:
            body["client_id"] = client_id
        response = self.post("/prompt", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").json()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., tuple[ComfyUISimulator, Api]]]:
    started: list[tuple[ComfyUISimulator, Api]] = []

    def make(*faults: str, **kw: Any) -> tuple[ComfyUISimulator, Api]:
        root = tmp_path / f"sim{len(started)}"
        kw.setdefault("step_seconds", 0.005)
        sim = ComfyUISimulator(root_dir=root, faults=FaultPlan.parse(faults), **kw).start()
        api = Api(sim.url)
        started.append((sim, api))
        return sim, api

    yield make
    for sim, api in started:
        api.close()
        sim.stop()
        assert sim.wait_stopped(0), "stop() returned with the server thread still running"


@pytest.fixture
def sim_api(make_sim) -> tuple[ComfyUISimulator, Api]:
    sim, api = make_sim()
    api.upload()
    return sim, api


def output_files(sim: ComfyUISimulator) -> set[str]:
    return {p.relative_to(sim.output_dir).as_posix() for p in sim.output_dir.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ ServerThread
def test_server_thread_binds_free_port_and_stops_with_open_connections() -> None:
    from aiohttp import web

    async def slow(request: web.Request) -> web.Response:
        await __import__("asyncio").sleep(60)
        return web.Response(text="late")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws_handler)
    server = ServerThread(app, "127.0.0.1", 0).start()
    assert server.port and server.url == f"http://127.0.0.1:{server.port}"
    client = websocket.create_connection(server.url.replace("http", "ws") + "/ws", timeout=5)
    answers: list[str] = []
    pending = threading.Thread(
        target=lambda: _swallow(lambda: answers.append(requests.get(server.url + "/slow", timeout=10).text))
    )
    pending.start()
    server.stop()
    assert server.wait_stopped(0), "stop() returned with the server thread still running"
    pending.join(10)
    assert "late" not in answers  # the pending request was cut, not served after stop()
    client.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass


def _swallow(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except requests.RequestException:
        pass


# ------------------------------------------------------------------ read-only routes
def test_system_stats_models_object_info_and_api_prefix(sim_api) -> None:
    sim, api = sim_api
    for prefix in ("", "/api"):
        stats = api.get(prefix + "/system_stats").json()
        assert stats["system"]["comfyui_version"] == "0.3.64"
        assert stats["system"]["argv"][0] == "gemdirect-sim"
        assert str(sim.port) in stats["system"]["argv"]
        (device,) = stats["devices"]
        assert device["name"] == DEVICE_NAME and device["type"] == "cuda" and device["index"] == 0
        assert device["vram_total"] == VRAM_TOTAL == 24 * 1024**3
        assert device["vram_free"] == VRAM_IDLE_FREE
    assert api.get("/models/checkpoints").json() == list(DEFAULT_CHECKPOINTS)
    assert api.get("/api/models/vae").json() == []
    assert "checkpoints" in api.get("/models").json()
    assert api.get("/models/no_such_folder").status_code == 404
    info = api.get("/object_info").json()
    for cls in (
        "LoadImage",
        "ImageScale",
        "RepeatImageBatch",
        "SaveImage",
        "ImageOnlyCheckpointLoader",
        "SVD_img2vid_Conditioning",
        "VideoLinearCFGGuidance",
        "KSampler",
        "VAEDecode",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveImageWebsocket",
    ):
        assert cls in info
    assert info["ImageOnlyCheckpointLoader"]["input"]["required"]["ckpt_name"][0] == list(DEFAULT_CHECKPOINTS)
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["reftrace_input.png"]
    assert list(api.get("/api/object_info/KSampler").json()) == ["KSampler"]
    assert api.get("/object_info/NoSuchNode").json() == {}
    assert api.get("/history/no-such-prompt-id").json() == {}
    assert api.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert api.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert api.get("/features").json() == {"supports_preview_metadata": True, "max_upload_size": 104857600}


def test_ws_first_frame_is_status_with_sid(sim_api) -> None:
    sim, api = sim_api
    named = WS(sim.url, "my-client")
    anonymous = WS(sim.url, "")
    try:
        assert named.recv() == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "my-client"},
        }
        first = anonymous.recv()
        assert first["type"] == "status" and len(first["data"]["sid"]) == 32
        int(first["data"]["sid"], 16)
    finally:
        named.close()
        anonymous.close()


def test_feature_flags_reply_only_when_first_frame(sim_api) -> None:
    sim, api = sim_api
    modern = WS(sim.url, first={"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    legacy = WS(sim.url)
    try:
        assert [_type(m) for m in modern.until(lambda m: is_type(m, "feature_flags"))] == [
            "status",
            "feature_flags",
        ]
        assert modern.messages[-1]["data"] == {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600,
        }
        assert is_type(legacy.recv(), "status")
        legacy.ws.send(json.dumps({"type": "hello"}))
        legacy.ws.send(json.dumps({"type": "feature_flags", "data": {}}))  # not the first frame: ignored
        pid = api.queue(smoke(), legacy.client_id)["prompt_id"]
        legacy.until_done(pid)
        assert "feature_flags" not in legacy.types()
    finally:
        modern.close()
        legacy.close()


# ------------------------------------------------------------------ success, history, cache
def test_smoke_success_matches_recorded_c1_then_cached_and_partial(sim_api) -> None:
    sim, api = sim_api
    ws = WS(sim.url)
    try:
        response = api.queue(smoke(), ws.client_id)
        assert set(response) == {"prompt_id", "number", "node_errors"} and response["node_errors"] == {}
        pid = response["prompt_id"]
        ws.until_done(pid)
        assert ws.types() == C1_TYPES
        executed = [m for m in ws.messages if is_type(m, "executed")][0]["data"]
        assert list(executed) == ["node", "display_node", "output", "prompt_id"]
        names = [img["filename"] for img in executed["output"]["images"]]
        assert names == [f"frames_{i:05}_.png" for i in range(1, 9)]
        assert {img["subfolder"] for img in executed["output"]["images"]} == {"reftrace"}
        progress = [m for m in ws.messages if is_type(m, "progress_state")]
        assert progress[0]["data"]["nodes"]["1"] == {
            "value": 0.0,
            "max": 1.0,
            "state": "running",
            "node_id": "1",
            "prompt_id": pid,
            "display_node_id": "1",
            "parent_node_id": None,
            "real_node_id": "1",
        }
        assert set(progress[-1]["data"]["nodes"]) == {"1", "2", "3", "4"}

        entry = api.history(pid)[pid]
        assert list(entry) == ["prompt", "outputs", "status", "meta"]
        assert entry["prompt"][0] == response["number"] and entry["prompt"][1] == pid
        assert entry["prompt"][3] == {"client_id": ws.client_id} and entry["prompt"][4] == ["4"]
        assert entry["outputs"] == {"4": executed["output"]}
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert [m[0] for m in entry["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_success",
        ]
        assert entry["meta"] == {
            "4": {"node_id": "4", "display_node": "4", "parent_node": None, "real_node_id": "4"}
        }
        first = executed["output"]["images"][0]
        view = api.get("/view", params=first)
        assert view.status_code == 200 and view.headers["Content-Type"] == "image/png"
        assert view.headers["Content-Disposition"] == 'filename="frames_00001_.png"'
        assert Image.open(io.BytesIO(view.content)).size == (128, 96)

        # d_cached_requeue: identical prompt, everything cached, OLD names re-sent, no new files
        before = output_files(sim)
        ws.close()
        ws = WS(sim.url)
        pid2 = api.queue(smoke(), ws.client_id)["prompt_id"]
        ws.until_done(pid2)
        assert ws.types() == D_CACHED_TYPES
        assert [m for m in ws.messages if is_type(m, "execution_cached")][0]["data"]["nodes"] == [
            "1",
            "2",
            "3",
            "4",
        ]
        assert [m for m in ws.messages if is_type(m, "executed")][0]["data"]["output"] == executed["output"]
        assert output_files(sim) == before
        assert api.history(pid2)[pid2]["outputs"] == {"4": executed["output"]}

        # d2_partial_cache: only the prefix changes -> nodes 1-3 cached, node 4 runs
        ws.close()
        ws = WS(sim.url)
        pid3 = api.queue(smoke("reftrace/frames_b"), ws.client_id)["prompt_id"]
        ws.until_done(pid3)
        assert ws.types() == D2_PARTIAL_TYPES
        assert [m for m in ws.messages if is_type(m, "execution_cached")][0]["data"]["nodes"] == [
            "1",
            "2",
            "3",
        ]
        assert len(output_files(sim)) == len(before) + 8

        # f1: SaveImage outside the output folder fails at run time
        ws.close()
        ws = WS(sim.url)
        pid4 = api.queue(smoke("../escape"), ws.client_id)["prompt_id"]
        ws.until_done(pid4)
        assert ws.types() == F1_ERROR_TYPES
        error = [m for m in ws.messages if is_type(m, "execution_error")][0]["data"]
        assert list(error) == EXECUTION_ERROR_KEYS
        assert error["node_id"] == "4" and error["node_type"] == "SaveImage" and error["executed"] == []
        assert error["exception_message"].startswith("**** ERROR: Saving image outside the output folder")
        assert error["current_outputs"] == ["1", "2", "3", "4"]
        assert error["current_inputs"]["filename_prefix"] == ["../escape"]
        failed = api.history(pid4)[pid4]
        assert failed["status"]["status_str"] == "error" and failed["status"]["completed"] is False
        assert failed["outputs"] == {} and failed["status"]["messages"][-1][0] == "execution_error"
    finally:
        ws.close()


def test_svd_graph_progress_and_moving_frames(make_sim) -> None:
    sim, api = make_sim()
    api.upload("keyframe.png", png_bytes((320, 180)))
    ws = WS(sim.url)
    try:
        pid = api.queue(
            svd_graph("keyframe.png", "gemdirect/run/scene-001/frame", steps=8, frames=5), ws.client_id
        )["prompt_id"]
        ws.until_done(pid)
        progress = [m["data"] for m in ws.messages if is_type(m, "progress")]
        assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
            (v, 8, "5", pid) for v in range(1, 9)
        ]
        executing = [m["data"]["node"] for m in ws.messages if is_type(m, "executing")]
        assert executing == ["1", "2", "3", "4", "5", "6", "7", None]
        assert ws.types()[-3:] == ["execution_success", "status", "executing"]
        images = api.history(pid)[pid]["outputs"]["7"]["images"]
        assert [i["filename"] for i in images] == [f"frame_{k:05}_.png" for k in range(1, 6)]
        assert {i["subfolder"] for i in images} == {os.path.normpath("gemdirect/run/scene-001")}
        frames = [Image.open(io.BytesIO(api.get("/view", params=i).content)).convert("RGB") for i in images]
        assert {f.size for f in frames} == {(256, 144)}
        for previous, current in zip(frames, frames[1:], strict=False):
            assert ImageChops.difference(previous, current).getbbox() is not None
    finally:
        ws.close()


def test_svd_default_size_makes_25_full_size_frames(make_sim) -> None:
    sim, api = make_sim(step_seconds=0.0)
    api.upload("keyframe.png", png_bytes((320, 180)))
    ws = WS(sim.url)
    try:
        pid = api.queue(
            svd_graph("keyframe.png", "run/scene-001/f", steps=2, frames=25, size=(1024, 576)), ws.client_id
        )["prompt_id"]
        ws.until_done(pid, timeout=20)
        images = api.history(pid)[pid]["outputs"]["7"]["images"]
        assert len(images) == 25
        last = Image.open(io.BytesIO(api.get("/view", params=images[-1]).content))
        assert last.size == (1024, 576) and last.format == "PNG"
    finally:
        ws.close()


def test_animated_webp_output(sim_api) -> None:
    sim, api = sim_api
    graph = smoke()
    graph["4"] = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "images": ["3", 0],
            "filename_prefix": "reftrace/anim",
            "fps": 8.0,
            "lossless": False,
            "quality": 80,
            "method": "default",
        },
    }
    ws = WS(sim.url)
    try:
        pid = api.queue(graph, ws.client_id)["prompt_id"]
        ws.until_done(pid)
        output = api.history(pid)[pid]["outputs"]["4"]
        assert output == {
            "images": [{"filename": "anim_00001_.webp", "subfolder": "reftrace", "type": "output"}],
            "animated": [True],
        }
        view = api.get("/view", params=output["images"][0])
        assert view.headers["Content-Type"] == "image/webp"
        assert view.content[:4] == b"RIFF" and view.content[8:12] == b"WEBP"
        assert Image.open(io.BytesIO(view.content)).size == (128, 96)
    finally:
        ws.close()


def test_save_image_websocket_previews(sim_api) -> None:
    sim, api = sim_api
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16746496},
        },
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 4}},
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
    }
    ws = WS(sim.url)
    try:
        pid = api.queue(graph, ws.client_id)["prompt_id"]
        got = ws.until_done(pid)
        kinds = [_type(m) for m in got if _type(m) in ("progress", "binary")]
        assert kinds == ["progress", "binary"] * 4  # legacy client: progress, then a type-1 PNG preview
        assert [m["data"]["value"] for m in got if is_type(m, "progress")] == [0, 1, 2, 3]
        assert all(m[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" for m in got if isinstance(m, bytes))
    finally:
        ws.close()


def test_history_paging_and_post_history(sim_api) -> None:
    sim, api = sim_api
    ws = WS(sim.url)
    try:
        pids = []
        for n in range(3):
            pids.append(api.queue(smoke(f"page/p{n}"), ws.client_id)["prompt_id"])
            ws.until_done(pids[-1])
    finally:
        ws.close()
    assert list(api.get("/history").json()) == pids
    assert list(api.get("/history", params={"max_items": 5}).json()) == pids
    assert list(api.get("/history", params={"max_items": 2}).json()) == pids[1:]
    assert list(api.get("/api/history", params={"max_items": 2, "offset": 1}).json()) == pids[1:]
    assert list(api.get("/history", params={"max_items": 1, "offset": 0}).json()) == pids[:1]
    assert api.post("/history", json={"delete": [pids[0]]}).status_code == 200
    assert list(api.get("/history").json()) == pids[1:]
    assert api.post("/history", json={"clear": True}).status_code == 200
    assert api.get("/history").json() == {}


# ------------------------------------------------------------------ validation (e_validation_errors.json)
def _bad(mutate: Callable[[dict], None]) -> dict:
    graph = smoke()
    mutate(graph)
    return {"prompt": graph, "client_id": "validation-test"}


VALIDATION_CASES = {
    "missing required input": (
        _bad(lambda g: g["2"]["inputs"].pop("width")),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "2": {
                    "errors": [
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": "width",
                            "extra_info": {"input_name": "width"},
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "ImageScale",
                }
            },
        },
    ),
    "nonexistent node class": (
        _bad(lambda g: g.update({"5": {"class_type": "NoSuchNodeClass", "inputs": {}}})),
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because node NoSuchNodeClass does not exist.",
                "details": "Node ID '#5'",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "bad image filename": (
        _bad(lambda g: g["1"]["inputs"].update(image="no_such_file.png")),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "1": {
                    "errors": [
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": "image - Invalid image file: no_such_file.png",
                            "extra_info": {"input_name": "image"},
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "LoadImage",
                }
            },
        },
    ),
    "value below min": (
        _bad(lambda g: g["3"]["inputs"].update(amount=0)),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "3": {
                    "errors": [
                        {
                            "type": "value_smaller_than_min",
                            "message": "Value 0 smaller than min of 1",
                            "details": "amount",
                            "extra_info": {
                                "input_name": "amount",
                                "input_config": ["INT", {"default": 1, "min": 1, "max": 4096}],
                                "received_value": 0,
                            },
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "RepeatImageBatch",
                }
            },
        },
    ),
    "combo value not in list": (
        _bad(lambda g: g["2"]["inputs"].update(upscale_method="sinc")),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "2": {
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": "upscale_method: 'sinc' not in ['nearest-exact', 'bilinear', "
                            "'area', 'bicubic', 'lanczos']",
                            "extra_info": {
                                "input_name": "upscale_method",
                                "input_config": [
                                    ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
                                    {},
                                ],
                                "received_value": "sinc",
                            },
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "ImageScale",
                }
            },
        },
    ),
    "non-numeric INT": (
        _bad(lambda g: g["2"]["inputs"].update(width="wide")),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "2": {
                    "errors": [
                        {
                            "type": "invalid_input_type",
                            "message": "Failed to convert an input value to a INT value",
                            "details": "width, wide, invalid literal for int() with base 10: 'wide'",
                            "extra_info": {
                                "input_name": "width",
                                "input_config": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                                "received_value": "wide",
                                "exception_message": "invalid literal for int() with base 10: 'wide'",
                            },
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "ImageScale",
                }
            },
        },
    ),
    "MASK into IMAGE": (
        _bad(lambda g: g["3"]["inputs"].update(image=["1", 1])),
        {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "3": {
                    "errors": [
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": "image, received_type(MASK) mismatch input_type(IMAGE)",
                            "extra_info": {
                                "input_name": "image",
                                "input_config": ["IMAGE", {}],
                                "received_type": "MASK",
                                "linked_node": ["1", 1],
                            },
                        }
                    ],
                    "dependent_outputs": ["4"],
                    "class_type": "RepeatImageBatch",
                }
            },
        },
    ),
    "no output node": (
        _bad(lambda g: g.pop("4")),
        {
            "error": {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "no prompt key": (
        {"client_id": "x"},
        {
            "error": {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
    "no class_type": (
        _bad(lambda g: g["2"].pop("class_type")),
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because a node is missing the class_type property.",
                "details": "Node ID '#2'",
                "extra_info": {},
            },
            "node_errors": {},
        },
    ),
}


def test_validation_errors_match_recorded_bodies(sim_api) -> None:
    sim, api = sim_api
    ws = WS(sim.url)
    try:
        assert is_type(ws.recv(), "status")
        for case, (body, expected) in VALIDATION_CASES.items():
            response = api.post("/prompt", json=body)
            assert response.status_code == 400, case
            assert response.headers["Content-Type"].startswith("application/json"), case
            assert response.json() == expected, case
        # link to a node that does not exist: the real server blames the linked node with the caller's input
        response = api.post("/prompt", json=_bad(lambda g: g["3"]["inputs"].update(image=["99", 0])))
        body = response.json()
        assert response.status_code == 400 and list(body["node_errors"]) == ["3"]
        (error,) = body["node_errors"]["3"]["errors"]
        assert error["type"] == "exception_during_inner_validation" and error["details"] == "'99'"
        assert error["extra_info"]["exception_type"] == "KeyError" and error["extra_info"]["linked_node"] == [
            "3",
            0,
        ]
        assert error["extra_info"]["input_name"] == "images"
        malformed = api.post("/prompt", data=b"{not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 500 and malformed.headers["Content-Type"].startswith("text/plain")
        assert malformed.text == "500 Internal Server Error\n\nServer got itself in trouble"
        # validation never touches the socket and queues nothing
        assert ws.silent_for(0.2)
        assert api.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    finally:
        ws.close()


def test_prompt_id_and_partial_good_outputs(sim_api) -> None:
    sim, api = sim_api
    graph = smoke()
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}}
    graph["6"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 0}}
    ws = WS(sim.url)
    try:
        response = api.queue(graph, ws.client_id, prompt_id="my-own-id")
        assert response["prompt_id"] == "my-own-id"
        assert list(response["node_errors"]) == ["6"]  # accepted: one output is good
        ws.until_done("my-own-id")
        assert api.history("my-own-id")["my-own-id"]["prompt"][4] == ["4"]
    finally:
        ws.close()


# ------------------------------------------------------------------ /view and /upload/image
def test_view_status_codes(sim_api) -> None:
    sim, api = sim_api
    ws = WS(sim.url)
    try:
        pid = api.queue(smoke(), ws.client_id)["prompt_id"]
        ws.until_done(pid)
    finally:
        ws.close()
    cases = [
        ({"filename": "frames_00001_.png", "subfolder": "reftrace", "type": "output"}, 200),
        ({"filename": "reftrace_input.png", "subfolder": "", "type": "input"}, 200),
        ({"filename": "frames_00001_.png [output]", "subfolder": "reftrace", "type": "input"}, 200),
        ({"filename": "does_not_exist.png", "subfolder": "", "type": "output"}, 404),
        ({"filename": "../comfyui.log", "subfolder": "", "type": "output"}, 400),
        ({"filename": "../input/reftrace_input.png", "subfolder": "", "type": "output"}, 400),
        ({"filename": "/etc/passwd", "type": "output"}, 400),
        ({"filename": "reftrace_input.png", "subfolder": "../input", "type": "output"}, 403),
        ({"filename": "frames_00001_.png", "subfolder": "reftrace", "type": "bogus"}, 400),
        ({"type": "output"}, 404),
    ]
    for params, status in cases:
        response = api.get("/view", params=params)
        assert response.status_code == status, params
        if status != 200:
            assert response.content == b"", params
        else:
            assert response.headers["Content-Type"] == "image/png"
    preview = api.get(
        "/view", params={"filename": "frames_00001_.png", "subfolder": "reftrace", "preview": "webp;50"}
    )
    assert preview.headers["Content-Type"] == "image/webp" and preview.content[:4] == b"RIFF"


def test_upload_cases_as_recorded(make_sim) -> None:
    sim, api = make_sim()
    first = png_bytes(seed=1)
    assert api.upload("reftrace_input.png", first, overwrite="true") == {
        "name": "reftrace_input.png",
        "subfolder": "",
        "type": "input",
    }
    assert api.upload("reftrace_input.png", first)["name"] == "reftrace_input.png"  # duplicate by hash
    assert api.upload("reftrace_input.png", png_bytes(seed=2))["name"] == "reftrace_input (1).png"
    assert api.upload("reftrace_sub.png", first, subfolder="reftrace_sub", overwrite="1") == {
        "name": "reftrace_sub.png",
        "subfolder": "reftrace_sub",
        "type": "input",
    }
    assert (sim.input_dir / "reftrace_sub" / "reftrace_sub.png").read_bytes() == first
    escape = api.post(
        "/upload/image", files={"image": ("evil.png", first, "image/png")}, data={"subfolder": "../.."}
    )
    assert escape.status_code == 400 and escape.content == b""
    missing = api.post(
        "/upload/image", files={"notimage": ("x.txt", b"x", "text/plain")}, data={"foo": "bar"}
    )
    assert missing.status_code == 400 and missing.content == b""
    assert not (sim.root_dir.parent / "evil.png").exists()
    combo = api.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    assert combo == ["reftrace_input (1).png", "reftrace_input.png"]
    assert (
        api.upload("reftrace_input.png", png_bytes(seed=3), overwrite="true")["name"] == "reftrace_input.png"
    )


# ------------------------------------------------------------------ queue, interrupt, VRAM (g_interrupt)
def test_queue_order_delete_clear_interrupt_and_vram(make_sim) -> None:
    sim, api = make_sim("stall@scene-009")
    api.upload()
    ws = WS(sim.url)
    try:
        slow = api.queue(smoke("run/scene-009/frame"), ws.client_id)
        ws.until(
            lambda m: is_type(m, "executing") and m["data"].get("node") == "4"
        )  # stalled in the save node
        a = api.queue(smoke("run/scene-010/a"), ws.client_id)
        b = api.queue(smoke("run/scene-011/b"), ws.client_id)
        c = api.queue(smoke("run/scene-012/c"), ws.client_id, front=True)
        assert (slow["number"], a["number"], b["number"], c["number"]) == (0, 1, 2, -3)
        queue = api.get("/queue").json()
        assert [item[1] for item in queue["queue_running"]] == [slow["prompt_id"]]
        running = queue["queue_running"][0]
        assert running[3] == {"client_id": ws.client_id} and running[4] == ["4"] and len(running) == 5
        # heap order as recorded ([-52, 51, 50]); sorted by number the front prompt comes first
        assert [item[0] for item in queue["queue_pending"]] == [-3, 2, 1]
        assert api.get("/prompt").json() == {"exec_info": {"queue_remaining": 4}}

        stats = api.get("/system_stats").json()["devices"][0]
        assert stats["vram_free"] == VRAM_IDLE_FREE - VRAM_JOB  # a job holds ~8 GiB while it runs

        api.post("/queue", json={"delete": [a["prompt_id"]]})
        assert [item[1] for item in api.get("/queue").json()["queue_pending"]] == [
            c["prompt_id"],
            b["prompt_id"],
        ]
        api.post("/queue", json={"delete": [slow["prompt_id"]]})  # deleting the running prompt does nothing
        api.post("/queue", json={"clear": True})
        queue = api.get("/queue").json()
        assert queue["queue_pending"] == [] and [i[1] for i in queue["queue_running"]] == [slow["prompt_id"]]

        assert (
            api.post("/interrupt", json={"prompt_id": b["prompt_id"]}).status_code == 200
        )  # not running: no effect
        assert api.get("/history").json() == {}
        assert api.post("/interrupt", json={"prompt_id": slow["prompt_id"]}).status_code == 200
        ws.until_done(slow["prompt_id"])
        tail = ws.types()[-3:]
        assert tail == ["execution_interrupted", "status", "executing"]
        interrupted = [m for m in ws.messages if is_type(m, "execution_interrupted")][0]["data"]
        assert list(interrupted) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"]
        assert interrupted["node_id"] == "4" and interrupted["node_type"] == "SaveImage"
        entry = api.history(slow["prompt_id"])[slow["prompt_id"]]
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        assert entry["outputs"] == {} and entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert api.history(a["prompt_id"]) == {}
        assert api.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        assert api.get("/system_stats").json()["devices"][0]["vram_free"] == VRAM_IDLE_FREE
        assert api.post("/interrupt").status_code == 200  # idle
        assert api.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200
        # an idle interrupt does not poison the next prompt
        pid = api.queue(smoke("run/scene-013/after"), ws.client_id)["prompt_id"]
        ws.until_done(pid)
        assert api.history(pid)[pid]["status"]["status_str"] == "success"
    finally:
        ws.close()


def test_stall_on_sampler_stops_at_steps_minus_one_until_interrupted(make_sim) -> None:
    sim, api = make_sim("stall@scene-002")
    api.upload("k.png", png_bytes())
    ws = WS(sim.url)
    try:
        pid = api.queue(svd_graph("k.png", "run/scene-002/frame", steps=6), ws.client_id)["prompt_id"]
        ws.until(lambda m: is_type(m, "progress") and m["data"]["value"] == 5)
        assert ws.silent_for(0.3)  # stalled at 5 of 6
        assert api.history(pid) == {}
        api.post("/interrupt", json={"prompt_id": pid})
        ws.until_done(pid)
        interrupted = [m for m in ws.messages if is_type(m, "execution_interrupted")][0]["data"]
        assert interrupted["node_id"] == "5" and interrupted["node_type"] == "KSampler"
        assert api.history(pid)[pid]["status"]["status_str"] == "error"
    finally:
        ws.close()


# ------------------------------------------------------------------ faults
def test_history_never_sends_executed_then_nothing_and_does_not_block(make_sim) -> None:
    sim, api = make_sim("history-never@scene-001")
    api.upload()
    ws = WS(sim.url)
    try:
        lost = api.queue(smoke("run/scene-001/frame"), ws.client_id)["prompt_id"]
        ws.until(lambda m: is_type(m, "executed"))
        ok = api.queue(smoke("run/scene-002/frame"), ws.client_id)["prompt_id"]
        ws.until_done(ok)
        after_executed = ws.messages[[_type(m) for m in ws.messages].index("executed") + 1 :]
        assert not any(isinstance(m, dict) and m["data"].get("prompt_id") == lost for m in after_executed)
        assert api.history(lost) == {}
        assert api.history(ok)[ok]["status"]["status_str"] == "success"
        assert lost not in json.dumps(api.get("/queue").json())
        # the files named in `executed` were written: the frames exist, only the history is missing
        assert any(name.startswith("run/scene-001/") for name in output_files(sim))
    finally:
        ws.close()


def test_history_late_stores_the_entry_after_completion(make_sim) -> None:
    sim, api = make_sim("history-late", history_late_seconds=1.0)
    api.upload()
    ws = WS(sim.url)
    try:
        pid = api.queue(smoke("run/scene-001/frame"), ws.client_id)["prompt_id"]
        ws.until_done(pid)
        completed_at = time.monotonic()
        assert "execution_success" in ws.types()
        assert api.history(pid) == {}
        entry = wait_for(lambda: api.history(pid).get(pid), timeout=5)
        assert time.monotonic() - completed_at >= 0.5
        assert entry["status"]["status_str"] == "success"
    finally:
        ws.close()


def test_ws_drop_closes_socket_mid_generation_and_job_completes(make_sim) -> None:
    sim, api = make_sim("ws-drop@scene-003")
    api.upload("k.png", png_bytes())
    ws = WS(sim.url)
    try:
        pid = api.queue(svd_graph("k.png", "run/scene-003/frame", steps=6), ws.client_id)["prompt_id"]
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.until_done(pid)
        assert [m["data"]["value"] for m in ws.messages if is_type(m, "progress")][-1] == 3  # half of 6
        entry = wait_for(lambda: api.history(pid).get(pid))
        assert entry["status"]["status_str"] == "success" and len(entry["outputs"]["7"]["images"]) == 6
    finally:
        ws.close()


def test_ws_silent_accepts_sockets_and_never_speaks(make_sim) -> None:
    sim, api = make_sim("ws-silent")
    api.upload()
    ws = WS(sim.url)
    try:
        pid = api.queue(smoke("run/scene-001/frame"), ws.client_id)["prompt_id"]
        entry = wait_for(lambda: api.history(pid).get(pid))
        assert entry["status"]["status_str"] == "success"
        assert ws.silent_for(0.2) and ws.messages == []
    finally:
        ws.close()


def test_ws_silent_per_scene_silences_that_prompts_client(make_sim) -> None:
    sim, api = make_sim("ws-silent@scene-004")
    api.upload()
    ws = WS(sim.url)
    try:
        assert is_type(ws.recv(), "status")  # the connect frame comes before the scene is known
        pid = api.queue(smoke("run/scene-004/frame"), ws.client_id)["prompt_id"]
        wait_for(lambda: api.history(pid).get(pid))
        assert ws.silent_for(0.2)
        other = api.queue(smoke("run/scene-005/frame"), ws.client_id)["prompt_id"]
        ws.until_done(other)  # other scenes speak normally
    finally:
        ws.close()


def test_execution_error_fault_from_the_sampler(make_sim) -> None:
    sim, api = make_sim("execution-error@scene-002")
    api.upload("k.png", png_bytes())
    ws = WS(sim.url)
    try:
        pid = api.queue(svd_graph("k.png", "run/scene-002/frame"), ws.client_id)["prompt_id"]
        ws.until_done(pid)
        assert ws.types()[-3:] == ["execution_error", "status", "executing"]
        assert "execution_success" not in ws.types()
        error = [m for m in ws.messages if is_type(m, "execution_error")][0]["data"]
        assert list(error) == EXECUTION_ERROR_KEYS
        assert error["node_id"] == "5" and error["node_type"] == "KSampler" and error["prompt_id"] == pid
        assert error["executed"] == ["1", "2", "3", "4"]
        assert error["traceback"] and all(isinstance(line, str) for line in error["traceback"])
        assert error["current_inputs"]["steps"] == ["6"] and error["current_outputs"] == list("1234567")
        entry = api.history(pid)[pid]
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        assert entry["outputs"] == {}
        # every attempt fails
        again = api.queue(svd_graph("k.png", "run/scene-002/frame"), ws.client_id)["prompt_id"]
        ws.until_done(again)
        assert api.history(again)[again]["status"]["status_str"] == "error"
    finally:
        ws.close()


def test_flaky_fails_first_attempt_then_succeeds(make_sim) -> None:
    sim, api = make_sim("flaky@scene-002")
    api.upload("k.png", png_bytes())
    ws = WS(sim.url)
    try:
        results = []
        for _ in range(2):
            pid = api.queue(svd_graph("k.png", "run/scene-002/frame"), ws.client_id)["prompt_id"]
            ws.until_done(pid)
            results.append(api.history(pid)[pid]["status"]["status_str"])
        other = api.queue(svd_graph("k.png", "run/scene-003/frame"), ws.client_id)["prompt_id"]
        ws.until_done(other)
        assert results == ["error", "success"]
        assert api.history(other)[other]["status"]["status_str"] == "success"
    finally:
        ws.close()


def test_view_404_lists_files_that_do_not_download(make_sim) -> None:
    sim, api = make_sim("view-404")
    api.upload()
    ws = WS(sim.url)
    try:
        pid = api.queue(smoke("run/scene-001/frame"), ws.client_id)["prompt_id"]
        ws.until_done(pid)
        images = api.history(pid)[pid]["outputs"]["4"]["images"]
        assert len(images) == 8
        for image in images:
            response = api.get("/view", params=image)
            assert response.status_code == 404 and response.content == b""
    finally:
        ws.close()


def test_crash_in_thread_stops_the_server_abruptly(make_sim) -> None:
    sim, api = make_sim("crash@scene-002")
    api.upload("k.png", png_bytes())
    ws = WS(sim.url)
    try:
        api.queue(svd_graph("k.png", "run/scene-002/frame"), ws.client_id)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.until(lambda m: False, timeout=10)
        assert sim.crashed.wait(5)
        assert sim.wait_stopped(5)
        with pytest.raises(requests.ConnectionError):
            requests.get(sim.url + "/system_stats", timeout=2)
    finally:
        ws.close()


# ------------------------------------------------------------------ reconnects (i1, i2)
def test_reconnect_after_close_gets_current_node_and_the_rest(make_sim) -> None:
    sim, api = make_sim("stall@scene-007")
    api.upload()
    a = WS(sim.url)
    other = WS(sim.url)
    b = None
    try:
        pid = api.queue(smoke("run/scene-007/frame"), a.client_id)["prompt_id"]
        a.until(lambda m: is_type(m, "executing") and m["data"].get("node") == "4")
        a.close()
        b = WS(sim.url, a.client_id)
        assert b.recv() == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": a.client_id},
        }
        assert b.recv() == {"type": "executing", "data": {"node": "4"}}
        api.post("/interrupt", json={"prompt_id": pid})
        b.until_done(pid)
        assert "execution_interrupted" in b.types()
        assert "executing" not in [t for t in other.types()]  # an unrelated client sees only status
        other.until(
            lambda m: is_type(m, "status") and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
        )
        assert set(other.types()) == {"status"}
    finally:
        other.close()
        if b is not None:
            b.close()


def test_reconnect_while_old_socket_open_orphans_the_new_one(make_sim) -> None:
    sim, api = make_sim("stall@scene-008")
    api.upload()
    a = WS(sim.url)
    witness = WS(sim.url)
    b = None
    try:
        pid = api.queue(smoke("run/scene-008/frame"), a.client_id)["prompt_id"]
        a.until(lambda m: is_type(m, "executing") and m["data"].get("node") == "4")
        b = WS(sim.url, a.client_id)
        assert [_type(b.recv()), b.recv()] == ["status", {"type": "executing", "data": {"node": "4"}}]
        a.close()  # the server now forgets the client id: B gets nothing more
        # wait until the server has seen A go (B then misses even the broadcast status)
        wait_for(lambda: a.client_id not in sim.state.sockets)
        api.post("/interrupt", json={"prompt_id": pid})
        witness.until(
            lambda m: is_type(m, "status") and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
        )
        wait_for(lambda: api.history(pid).get(pid))
        assert b.silent_for(0.2)
    finally:
        witness.close()
        if b is not None:
            b.close()


# ------------------------------------------------------------------ misc
def test_scene_of_finds_the_scene_in_the_save_prefix() -> None:
    assert scene_of(smoke("gemdirect/20261128-120000/scene-002/frame")) == "scene-002"
    assert scene_of(smoke("x", image="gemdirect-run-scene-004.png")) == "scene-004"
    assert scene_of(smoke("x")) is None


def test_stop_is_prompt_with_stalled_job_and_open_sockets(make_sim) -> None:
    sim, api = make_sim("stall")
    api.upload()
    ws = WS(sim.url)
    try:
        api.queue(smoke("run/scene-001/frame"), ws.client_id)
        ws.until(lambda m: is_type(m, "executing") and m["data"].get("node") == "4")
        sim.stop()
        assert sim.wait_stopped(0), "stop() returned with the server thread still running"
        with pytest.raises(requests.ConnectionError):
            requests.get(sim.url + "/system_stats", timeout=2)
    finally:
        ws.close()


# ------------------------------------------------------------------ python -m pytest_gemdirect.sim
def _launch(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], dict]:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_gemdirect.sim",
            "--ready-file",
            str(ready),
            "--root",
            str(tmp_path / "root"),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(20)
    if not line or not line[0]:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"simulator did not become ready: {err}")
    info = json.loads(ready.read_text(encoding="utf-8"))
    assert (
        line[0].strip() == f"gemdirect simulator: comfyui {info['comfyui_url']} llm {info['llm_url'] or '-'}"
    )
    return proc, info


def test_runner_subprocess_ready_file_and_clean_end(tmp_path: Path) -> None:
    proc, info = _launch(tmp_path)
    try:
        assert info["pid"] == proc.pid and set(info) >= {"comfyui_url", "llm_url", "pid"}
        stats = requests.get(info["comfyui_url"] + "/system_stats", timeout=5).json()
        assert stats["system"]["argv"][0] == "gemdirect-sim"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    if os.name != "nt":
        assert proc.returncode == 0, err
        assert not (tmp_path / "ready.json").exists()


def test_runner_crash_fault_ends_the_process_with_code_3(tmp_path: Path) -> None:
    proc, info = _launch(tmp_path, "--fault", "crash@scene-002")
    api = Api(info["comfyui_url"])
    try:
        api.upload("k.png", png_bytes())
        api.queue(svd_graph("k.png", "run/scene-002/frame"), None)
        assert proc.wait(timeout=15) == 3
    finally:
        api.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# ------------------------------------------------------------------ hostile-server faults
DATA = Path(__file__).resolve().parent / "data" / "comfyui-0.3.64"


def tiny(prefix: str, size: tuple[int, int] = (24, 16), batch: int = 1) -> dict[str, Any]:
    """A graph without an upload: EmptyImage -> SaveImage (a PNG of a few hundred bytes)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size[0], "height": size[1], "batch_size": batch, "color": 0x3366CC},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def run_to_history(
    sim: ComfyUISimulator, api: Api, graph: dict[str, Any], **extra: Any
) -> tuple[str, dict[str, Any]]:
    ws = WS(sim.url)
    try:
        pid = api.queue(graph, ws.client_id, **extra)["prompt_id"]
        ws.until_done(pid, timeout=30)
    finally:
        ws.close()
    return pid, api.history(pid)[pid]


def test_view_trickle_sends_the_body_slowly_while_the_server_keeps_answering(make_sim) -> None:
    from pytest_gemdirect.sim.comfyui.faulty_http import TRICKLE_BYTES_PER_SECOND, TRICKLE_CHUNK

    sim, api = make_sim("view-trickle@scene-001")
    # The PNG carries extra_pnginfo as text: about 1.3 KB, a second or so at 1 KB/s.
    padding = {"extra_pnginfo": {"workflow": "w" * 1000}}
    _, slow_entry = run_to_history(sim, api, tiny("run/scene-001/frame"), extra_data=padding)
    _, fast_entry = run_to_history(sim, api, tiny("run/scene-002/frame"))
    slow = slow_entry["outputs"]["2"]["images"][0]
    on_disk = (sim.output_dir / slow["subfolder"] / slow["filename"]).read_bytes()
    assert len(on_disk) > 2 * TRICKLE_CHUNK

    events: list[str] = []
    arrivals: list[float] = []
    body = bytearray()

    def download() -> None:
        with requests.get(sim.url + "/view", params=slow, stream=True, timeout=30) as response:
            assert int(response.headers["Content-Length"]) == len(on_disk)
            began = time.monotonic()
            for chunk in response.iter_content(chunk_size=64):
                body.extend(chunk)
                arrivals.append(time.monotonic() - began)
        events.append("trickle done")

    reader = threading.Thread(target=download)
    reader.start()
    wait_for(lambda: len(body) > 0)
    assert api.get("/system_stats").status_code == 200
    other = api.get("/view", params=fast_entry["outputs"]["2"]["images"][0])
    assert other.status_code == 200 and other.content[:8] == b"\x89PNG\r\n\x1a\n"
    events.append("others answered")
    reader.join(30)
    assert events == ["others answered", "trickle done"]
    assert bytes(body) == on_disk
    pauses = sum(1 for a, b in zip(arrivals, arrivals[1:], strict=False) if b - a > 0.1)
    assert pauses >= 3  # written in pieces with waits between, not in one go
    assert arrivals[-1] >= 0.8 * (len(on_disk) - TRICKLE_CHUNK) / TRICKLE_BYTES_PER_SECOND


def test_history_huge_pads_history_and_object_info_with_tens_of_megabytes(make_sim) -> None:
    sim, api = make_sim("history-huge")
    pid, _ = run_to_history(sim, api, tiny("run/scene-001/frame"))
    answer = api.get(f"/history/{pid}")
    assert len(answer.content) >= 40 * 1024 * 1024
    entry = answer.json()[pid]
    assert list(entry)[:4] == ["prompt", "outputs", "status", "meta"]
    assert len(entry) > 4 and all(key.startswith("x_gemdirect_junk_") for key in list(entry)[4:])
    assert entry["outputs"]["2"]["images"][0]["filename"] == "frame_00001_.png"
    assert len(api.get("/history").content) >= 40 * 1024 * 1024
    info = api.get("/object_info")
    assert len(info.content) >= 40 * 1024 * 1024 and "SaveImage" in info.json()


def test_history_huge_for_one_scene_leaves_the_others_and_object_info_small(make_sim) -> None:
    sim, api = make_sim("history-huge@scene-002")
    calm, _ = run_to_history(sim, api, tiny("run/scene-001/frame"))
    huge, _ = run_to_history(sim, api, tiny("run/scene-002/frame"))
    assert len(api.get(f"/history/{calm}").content) < 100_000
    assert len(api.get(f"/history/{huge}").content) >= 40 * 1024 * 1024
    assert len(api.get("/object_info").content) < 1024 * 1024


def test_names_hostile_lists_hostile_names_and_view_serves_each(make_sim) -> None:
    from pytest_gemdirect.sim.comfyui.constants import HOSTILE_NAMES

    sim, api = make_sim("names-hostile@scene-003")
    _, entry = run_to_history(sim, api, tiny("run/scene-003/frame", batch=len(HOSTILE_NAMES) + 2))
    images = entry["outputs"]["2"]["images"]
    listed = [image["filename"] for image in images]
    assert listed[: len(HOSTILE_NAMES)] == list(HOSTILE_NAMES)
    assert listed[len(HOSTILE_NAMES) :] == ["frame_00011_.png", "frame_00012_.png"]
    for expected in (
        "../",
        "/etc/",
        "C:\\",
        "\x00",
        "CON",
        "aux.png",
        "\u202e",
        "\x1b[2J",
        "\x1b]0;pwned\x07",
    ):
        assert any(expected in name for name in listed), expected
    assert any("<script>" in name for name in listed)
    for image in images:
        view = api.get("/view", params=image)
        assert view.status_code == 200, repr(image["filename"])
        assert view.content[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = sorted(p.name for p in sim.output_dir.rglob("*") if p.is_file())
    assert on_disk == [f"frame_{n:05}_.png" for n in range(1, len(HOSTILE_NAMES) + 3)]
    # Other scenes keep ComfyUI's names, and /view still refuses such names outside the fault.
    _, calm = run_to_history(sim, api, tiny("run/scene-001/frame"))
    assert calm["outputs"]["2"]["images"][0]["filename"] == "frame_00001_.png"
    assert api.get("/view", params={"filename": "../../../escape_00001_.png"}).status_code == 400


def test_history_garbage_answers_non_json_three_times_then_the_entry(make_sim) -> None:
    sim, api = make_sim("history-garbage@scene-002")
    ws = WS(sim.url)
    try:
        pid = api.queue(tiny("run/scene-002/frame"), ws.client_id)["prompt_id"]
        ws.until_done(pid)
    finally:
        ws.close()
    for _ in range(3):
        answer = api.get(f"/history/{pid}")
        assert answer.status_code == 200
        with pytest.raises(ValueError):
            json.loads(answer.text)
    assert api.get(f"/history/{pid}").json()[pid]["status"]["status_str"] == "success"
    calm, _ = run_to_history(sim, api, tiny("run/scene-001/frame"))  # another scene: JSON at once
    assert api.get(f"/history/{calm}").json()[calm]["status"]["completed"] is True


def _frames_of_scene(sim: ComfyUISimulator, api: Api, scene: str) -> list[Image.Image]:
    graph = svd_graph("k.png", f"run/{scene}/frame", steps=2, frames=8, size=(128, 64))
    _, entry = run_to_history(sim, api, graph)
    images = entry["outputs"]["7"]["images"]
    return [Image.open(io.BytesIO(api.get("/view", params=i).content)).convert("RGB") for i in images]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


@pytest.mark.parametrize("fault", ["frozen", "black-frames", "short", "wrong-size"])
def test_video_faults_spoil_only_the_targeted_scene(make_sim, fault: str) -> None:
    sim, api = make_sim(f"{fault}@scene-002")
    api.upload("k.png", png_bytes((160, 90)))
    good = _frames_of_scene(sim, api, "scene-001")
    bad = _frames_of_scene(sim, api, "scene-002")
    assert len(good) == 8 and {f.size for f in good} == {(128, 64)}
    assert not any(_same(a, b) for a, b in zip(good, good[1:], strict=False))
    assert all(max(f.convert("L").getextrema()) > 50 for f in good)
    if fault == "frozen":
        assert len(bad) == 8 and all(_same(bad[0], f) for f in bad)
    elif fault == "black-frames":
        dark = [k for k, f in enumerate(bad) if max(f.convert("L").getextrema()) <= 8]
        assert dark == [1, 5] and len(bad) == 8
    elif fault == "short":
        assert 0 < len(bad) < 8 and {f.size for f in bad} == {(128, 64)}
    else:
        assert len(bad) == 8 and {f.size for f in bad} == {(64, 32)}


def test_save_video_and_webm_write_real_encodes_shaped_as_recorded_c3(sim_api) -> None:
    import av

    sim, api = sim_api
    recorded_ws = [
        json.loads(line) for line in (DATA / "c3_success_video_outputs.ws.jsonl").read_text().splitlines()
    ]
    recorded_types = [e["msg"]["type"] for e in recorded_ws if e["dir"] == "recv" and e["kind"] == "text"]
    recorded = json.loads((DATA / "c3_success_video_outputs.history.json").read_text())["body"]
    recorded_entry = next(iter(recorded.values()))
    workflow = json.loads((DATA / "c3_success_video_outputs.workflow_api.json").read_text())

    run_to_history(sim, api, smoke())  # as recorded: c1 ran first, so nodes 1-3 come from the cache
    ws = WS(sim.url)
    try:
        pid = api.queue(workflow, ws.client_id)["prompt_id"]
        ws.until_done(pid)
        assert ws.types() == recorded_types
    finally:
        ws.close()
    entry = api.history(pid)[pid]

    def shape(outputs: dict[str, Any]) -> dict[str, Any]:
        return json.loads(re.sub(r"_\d{5}_", "_N_", json.dumps(outputs)))

    # Compared as dicts: the real server's output order follows a Python set of node ids.
    assert shape(entry["outputs"]) == shape(recorded_entry["outputs"])
    assert entry["meta"] == recorded_entry["meta"]
    expected = {"5": ("video/mp4", "h264"), "6": ("video/webm", "vp9")}
    for node, (content_type, codec) in expected.items():
        image = entry["outputs"][node]["images"][0]
        view = api.get("/view", params=image)
        assert view.status_code == 200 and view.headers["Content-Type"] == content_type
        with av.open(io.BytesIO(view.content)) as container:
            stream = container.streams.video[0]
            decoded = [frame.to_image() for frame in container.decode(stream)]
            assert stream.codec_context.name == codec
            tags = {key.lower(): value for key, value in container.metadata.items()}  # Matroska: PROMPT
            assert json.loads(tags["prompt"]) == workflow
        assert len(decoded) == 8 and {f.size for f in decoded} == {(128, 96)}


# ------------------------------------------------------------------ ImageCrop and ImageBatch


def test_image_crop_and_image_batch_are_offered_as_comfyui_0_3_64_has_them(sim_api) -> None:
    _, api = sim_api
    recorded = json.loads(
        (Path(__file__).parent / "data" / "comfyui-0.3.64" / "a_object_info_shipped_nodes.json").read_text(
            encoding="utf-8"
        )
    )["body_subset"]
    info = api.get("/object_info").json()
    for name in ("ImageCrop", "ImageBatch"):
        assert info[name] == recorded[name]


def test_crops_at_shifting_offsets_batch_into_moving_frames(sim_api) -> None:
    sim, api = sim_api
    api.upload("k.png", png_bytes((160, 90)))
    graph: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": "k.png"}}}
    offsets = [(0, 0), (10, 5), (150, 85)]  # the last goes past the edge: cut there, as ComfyUI does
    for k, (x, y) in enumerate(offsets):
        graph[str(10 + k)] = {
            "class_type": "ImageCrop",
            "inputs": {"image": ["1", 0], "width": 64, "height": 32, "x": x, "y": y},
        }
    graph["20"] = {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}}
    graph["21"] = {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["12", 0]}}
    graph["30"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0], "filename_prefix": "crops/f"}}
    _, entry = run_to_history(sim, api, graph)
    frames = [
        Image.open(io.BytesIO(api.get("/view", params=i).content)).convert("RGB")
        for i in entry["outputs"]["30"]["images"]
    ]
    source = Image.open(io.BytesIO(png_bytes((160, 90)))).convert("RGB")
    assert len(frames) == 3 and {f.size for f in frames} == {(64, 32)}
    assert _same(frames[0], source.crop((0, 0, 64, 32)))
    assert _same(frames[1], source.crop((10, 5, 74, 37)))
    # the third crop (10x5 at the corner) was scaled to image1's size by ImageBatch
    assert not _same(frames[0], frames[1])
