"""The embedded ComfyUI runs any graph of core ComfyUI 0.3.64 nodes (issue 20), over real sockets.

The node coverage is generated from the recorded ``/object_info`` (copied into the package): for
every class, a minimal graph built from the inputs it declares is accepted and runs to completion,
and the same graph with one wrong value is refused with the error the real server gives. The app's
graphs (tests/data/graphs/) run to completion with the frames, size and rate they ask for.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
import requests
import websocket
from PIL import Image, ImageChops, ImageStat

from pytest_gemdirect.sim.comfyui import ComfyUISimulator
from pytest_gemdirect.sim.comfyui.catalog import FILE_CHECKED_INPUTS, model_inputs, recorded_object_info
from pytest_gemdirect.sim.faults import FaultPlan

GRAPHS = Path(__file__).parent / "data" / "graphs"
REFERENCE_CLASS_COUNT = 478  # GET /object_info of the recorded ComfyUI 0.3.64
PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN")
# A provider for each link type the generated graphs need: (class, output slot). Other types are
# found in the table (the first class that outputs the type and can itself be built).
PROVIDERS = {
    "IMAGE": ("LoadImage", 0),
    "MASK": ("LoadImage", 1),
    "LATENT": ("EmptyLatentImage", 0),
    "MODEL": ("CheckpointLoaderSimple", 0),
    "CLIP": ("CheckpointLoaderSimple", 1),
    "VAE": ("CheckpointLoaderSimple", 2),
    "CONDITIONING": ("CLIPTextEncode", 0),
    "CLIP_VISION": ("CLIPVisionLoader", 0),
    "CLIP_VISION_OUTPUT": ("CLIPVisionEncode", 0),
    "VIDEO": ("CreateVideo", 0),
    "SIGMAS": ("BasicScheduler", 0),
    "SAMPLER": ("KSamplerSelect", 0),
    "NOISE": ("RandomNoise", 0),
    "GUIDER": ("BasicGuider", 0),
    "CONTROL_NET": ("ControlNetLoader", 0),
    "AUDIO": ("GetVideoComponents", 1),
}
KEYFRAME = "keyframe.png"


def png_bytes(size: tuple[int, int] = (96, 64), shift: int = 0) -> bytes:
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 7 + shift) % 256, (y * 11) % 256, ((x + y) * 3 + shift) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class Server:
    """A simulator and a requests session to it."""

    def __init__(self, sim: ComfyUISimulator) -> None:
        self.sim = sim
        self.url = sim.url
        self.http = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=30, **kw)

    def upload(self, name: str, data: bytes) -> None:
        response = self.post("/upload/image", files={"image": (name, data, "image/png")})
        assert response.status_code == 200, response.text

    def queue(self, graph: dict[str, Any], client_id: str | None = None) -> requests.Response:
        body: dict[str, Any] = {"prompt": graph}
        if client_id is not None:
            body["client_id"] = client_id
        return self.post("/prompt", json=body)

    def wait_history(self, prompt_ids: list[str], timeout: float = 120.0) -> dict[str, Any]:
        """Poll /history until every prompt has an entry (a client's poll, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            history = self.get("/history").json()
            if all(p in history for p in prompt_ids):
                return history
            if time.monotonic() > deadline:
                missing = [p for p in prompt_ids if p not in history]
                raise TimeoutError(f"{len(missing)} prompts without a history entry")
            time.sleep(0.05)

    def view(self, item: dict[str, str]) -> bytes:
        response = self.get("/view", params=item)
        assert response.status_code == 200, item
        return response.content


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(*faults: str, **kw: Any) -> Server:
        kw.setdefault("step_seconds", 0.0)
        sim = ComfyUISimulator(root_dir=tmp_path / f"sim{len(started)}", faults=FaultPlan.parse(faults), **kw)
        server = Server(sim.start())
        started.append(server)
        return server

    yield make
    for server in started:
        server.http.close()
        server.sim.stop()


# ------------------------------------------------------------------ graphs generated from the table
class GraphBuilder:
    """A minimal valid graph around one class, built from the inputs the table declares."""

    def __init__(self, info: dict[str, Any], files: dict[str, str]) -> None:
        self.info = info
        self.files = files  # (class, input) -> a file the server has
        self.graph: dict[str, Any] = {}
        self.made: dict[str, list[Any]] = {}

    def value(self, class_type: str, name: str, definition: list[Any]) -> Any:
        kind = definition[0]
        extra = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
        if (class_type, name) in self.files:
            return self.files[(class_type, name)]
        if isinstance(kind, list) or kind == "COMBO":
            options = kind if isinstance(kind, list) else extra.get("options", [])
            return options[0] if options else f"sim-test/{class_type}-{name}.safetensors"
        if kind in ("INT", "FLOAT"):
            number = extra.get("default", 0)
            if not isinstance(number, (int, float)):
                number = 0
            number = max(number, extra.get("min", number))
            number = min(number, extra.get("max", number))
            return int(number) if kind == "INT" else float(number)
        if kind == "STRING":
            default = extra.get("default")
            return default if isinstance(default, str) and default else "a lighthouse at dusk"
        if kind == "BOOLEAN":
            return bool(extra.get("default", False))
        kind = kind.split(",")[0] if kind != "*" else "IMAGE"
        if kind not in PROVIDERS and self._find_provider(kind) is None:
            return 0  # no class makes this type: a widget's literal value (FLOATS, WEBCAM…) is all there is
        return self.link(kind)

    def link(self, kind: str, depth: int = 0) -> list[Any]:
        if kind in self.made:
            return self.made[kind]
        provider = PROVIDERS.get(kind) or self._find_provider(kind)
        if provider is None or depth > 4:
            raise LookupError(f"no class outputs {kind}")
        class_type, slot = provider
        node_id = self.node(class_type, depth + 1)
        self.made[kind] = [node_id, slot]
        return self.made[kind]

    def _find_provider(self, kind: str) -> tuple[str, int] | None:
        for class_type, info in sorted(self.info.items()):
            if kind in info["output"] and not info.get("api_node"):
                return class_type, info["output"].index(kind)
        return None

    def node(self, class_type: str, depth: int = 0) -> str:
        inputs = {}
        for name, definition in self.info[class_type]["input"].get("required", {}).items():
            inputs[name] = self.value(class_type, name, definition)
        node_id = str(len(self.graph) + 1)
        self.graph[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def wrong_value(info: dict[str, Any], class_type: str) -> tuple[str, Any, str] | None:
    """One required input set to a value the real server refuses, and the error type it gives."""
    required = info[class_type]["input"].get("required", {})
    for name, definition in required.items():
        kind = definition[0]
        extra = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
        if kind in ("INT", "FLOAT") and isinstance(extra.get("min"), (int, float)):
            return name, extra["min"] - 1, "value_smaller_than_min"
        if kind in ("INT", "FLOAT") and isinstance(extra.get("max"), (int, float)):
            return name, extra["max"] + 1, "value_bigger_than_max"
        if kind in ("INT", "FLOAT"):
            return name, "not a number", "invalid_input_type"
    for name, definition in required.items():
        # a model choice is never wrong here: the simulator has whatever model a prompt names
        if (isinstance(definition[0], list) or definition[0] == "COMBO") and name not in model_inputs().get(
            class_type, {}
        ):
            checked = (class_type, name) in FILE_CHECKED_INPUTS  # the node checks the file itself
            return name, "no such choice", "custom_validation_failed" if checked else "value_not_in_list"
    for name, definition in required.items():
        if definition[0] not in PRIMITIVES and definition[0] != "*":
            return name, None, "return_type_mismatch"  # linked to a node of another type
    for name in required:
        return name, None, "required_input_missing"
    return None


def coverage_graph(info: dict[str, Any], class_type: str) -> tuple[dict[str, Any], str]:
    builder = GraphBuilder(info, {(c, n): f for (c, n), f in FILES.items()})
    node_id = builder.node(class_type)
    if not info[class_type]["output_node"]:
        builder.graph["sink"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    return builder.graph, node_id


FILES = {
    ("LoadImage", "image"): KEYFRAME,
    ("LoadImageMask", "image"): KEYFRAME,
    ("WebcamCapture", "image"): KEYFRAME,
    ("LoadImageOutput", "image"): KEYFRAME + " [input]",
}


def test_every_recorded_class_is_accepted_runs_and_is_refused_with_a_wrong_value(make_server) -> None:
    server = make_server()
    server.upload(KEYFRAME, png_bytes())
    for name in ("clip.mp4", "scene.latent", "notes.txt"):  # files the file-listing loaders offer
        server.upload(name, b"\x00\x00\x00\x18ftypmp42")
    response = server.post("/upload/image", files={"image": ("model.glb", b"glTF")}, data={"subfolder": "3d"})
    assert response.status_code == 200
    info = server.get("/object_info").json()
    recorded = recorded_object_info()
    assert len(recorded) == REFERENCE_CLASS_COUNT and set(info) == set(recorded)
    queued: dict[str, str] = {}
    refused: dict[str, Any] = {}
    nothing_wrong: list[str] = []
    for class_type in sorted(recorded):
        graph, node_id = coverage_graph(info, class_type)
        response = server.queue(graph)
        if response.status_code != 200:
            refused[class_type] = response.json()
            continue
        queued[response.json()["prompt_id"]] = class_type
        wrong = wrong_value(info, class_type)
        if wrong is None:
            nothing_wrong.append(class_type)
            continue
        name, value, expected = wrong
        bad = json.loads(json.dumps(graph))
        if expected == "return_type_mismatch":
            other = "STRING" if bad[node_id]["inputs"][name] != "STRING" else "INT"
            bad["str"] = {"class_type": "PrimitiveString", "inputs": {"value": "x"}}
            value = ["str", 0] if other == "STRING" else value
        if expected == "required_input_missing":
            del bad[node_id]["inputs"][name]
        else:
            bad[node_id]["inputs"][name] = value
        answer = server.queue(bad)
        assert answer.status_code == 400, (class_type, name, value)
        errors = answer.json()["node_errors"][node_id]["errors"]
        assert [e["type"] for e in errors] == [expected], (class_type, errors)
        assert errors[0]["extra_info"]["input_name"] == name
    assert refused == {}, sorted(refused)
    # only a class without required inputs has no value a server refuses (CombineHooks2, DisableNoise…)
    assert all(not recorded[c]["input"].get("required") for c in nothing_wrong), nothing_wrong
    history = server.wait_history(list(queued), timeout=300)
    failed = {
        queued[p]: [m for m in history[p]["status"]["messages"] if m[0] == "execution_error"]
        for p in queued
        if history[p]["status"]["status_str"] != "success"
    }
    assert failed == {}
    assert len(queued) == REFERENCE_CLASS_COUNT


# ------------------------------------------------------------------ the app's graphs
def load_graph(name: str, **replace: str) -> dict[str, Any]:
    text = (GRAPHS / name).read_text(encoding="utf-8")
    for placeholder, value in replace.items():
        text = text.replace(placeholder, value)
    graph: dict[str, Any] = json.loads(text)
    return graph.get("nodes", graph)


def set_input(graph: dict[str, Any], class_type: str, **values: Any) -> None:
    for node in graph.values():
        if node["class_type"] == class_type:
            node["inputs"].update(values)


def run_with_socket(server: Server, graph: dict[str, Any], timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Queue over a socket opened first, as the harness does; (history entry, the messages)."""
    client_id = str(uuid.uuid4())
    ws = websocket.create_connection(server.url.replace("http://", "ws://") + f"/ws?clientId={client_id}")
    messages: list[dict] = []
    try:
        response = server.queue(graph, client_id)
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while True:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            opcode, data = ws.recv_data()
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = json.loads(data)
            messages.append(message)
            if message["type"] == "executing" and message["data"] == {"node": None, "prompt_id": prompt_id}:
                break
    finally:
        ws.close()
    return server.get(f"/history/{prompt_id}").json()[prompt_id], messages


def decode(data: bytes) -> tuple[list[Image.Image], Fraction | None]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = [frame.to_image() for frame in container.decode(stream)]
    return frames, Fraction(rate) if rate is not None else None


def differs(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute grey-level difference of two pictures (0: the same)."""
    return float(ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L"))).mean[0])


def progress_of(messages: list[dict], node: str) -> list[tuple[int, int]]:
    return [
        (m["data"]["value"], m["data"]["max"])
        for m in messages
        if m["type"] == "progress" and m["data"]["node"] == node
    ]


def test_wan22_image_to_video_gives_49_frames_at_1280x544_and_24_fps(make_server) -> None:
    server = make_server()
    server.upload("keyframe.png", png_bytes((320, 136)))
    graph = load_graph("wan22_i2v.json")
    set_input(graph, "KSampler", steps=5)
    entry, messages = run_with_socket(server, graph)
    assert entry["status"]["status_str"] == "success"
    (item,) = entry["outputs"]["12"]["images"]
    assert entry["outputs"]["12"]["animated"] == [True]  # SaveVideo as 0.3.64 lists it (c3)
    assert item["subfolder"] == "video" and item["filename"].startswith("gemdirect_wan22_")
    assert item["filename"].endswith(".mp4") and item["type"] == "output"
    frames, rate = decode(server.view(item))
    assert len(frames) == 49 and {f.size for f in frames} == {(1280, 544)} and rate == 24
    assert differs(frames[0], frames[-1]) > 2  # the camera moves
    assert ImageStat.Stat(frames[24].convert("L")).stddev[0] > 10  # not black, not flat
    assert progress_of(messages, "9") == [(step, 5) for step in range(1, 6)]  # one tick per step
    # the models the graph names are on the server now, listed as 0.3.64 lists folders
    assert "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors" in server.get("/models/diffusion_models").json()
    assert "umt5_xxl_fp8_e4m3fn_scaled.safetensors" in server.get("/models/text_encoders").json()
    assert server.get("/models/vae").json() == ["wan_2.1_vae.safetensors"]


def test_first_last_frame_graph_goes_from_the_start_keyframe_to_the_end_one(make_server) -> None:
    server = make_server()
    server.upload("start.png", solid_png((832, 480), (200, 40, 40)))
    server.upload("end.png", solid_png((832, 480), (40, 40, 200)))
    graph = load_graph("wan22_flf.json")
    set_input(graph, "KSampler", steps=3)
    entry, _ = run_with_socket(server, graph)
    (item,) = entry["outputs"]["13"]["images"]
    frames, rate = decode(server.view(item))
    assert len(frames) == 49 and {f.size for f in frames} == {(832, 480)} and rate == 16
    first, last = (
        f.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        for f in (frames[0], frames[-1])
    )
    assert first[0] > first[2] + 80 and last[2] > last[0] + 80  # red start keyframe, blue end keyframe


def solid_png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", size, colour)
    Image.Image.paste(image, (255, 255, 255), (size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_flux_keyframe_graph_draws_one_1280x720_picture_of_its_prompt(make_server) -> None:
    server = make_server(models_from=[GRAPHS / "flux_t2i.json"])
    # named at start-up, so a check made before queueing (the harness's preflight) finds them
    assert "t5\\t5xxl_fp8_e4m3fn.safetensors" in server.get("/models/text_encoders").json()
    dual = server.get("/object_info/DualCLIPLoader").json()["DualCLIPLoader"]["input"]["required"]
    assert "t5\\t5xxl_fp8_e4m3fn.safetensors" in dual["clip_name1"][0]
    graph = load_graph("flux_t2i.json")
    set_input(graph, "KSampler", steps=4)
    entry, messages = run_with_socket(server, graph)
    (item,) = entry["outputs"]["9"]["images"]
    assert item["filename"] == "gemdirect_keyframe_00001_.png" and item["subfolder"] == ""
    picture = Image.open(io.BytesIO(server.view(item)))
    assert picture.size == (1280, 720)
    assert progress_of(messages, "7")[-1] == (4, 4)
    other = load_graph("flux_t2i.json")
    set_input(other, "KSampler", steps=1)
    set_input(other, "CLIPTextEncode", text="a different scene")
    entry2, _ = run_with_socket(server, other)
    picture2 = Image.open(io.BytesIO(server.view(entry2["outputs"]["9"]["images"][0])))
    assert differs(picture, picture2) > 2  # the picture follows the prompt


def test_the_app_svd_file_with_a_backslash_subfolder_runs_25_portrait_frames(make_server) -> None:
    server = make_server()
    server.upload("scene-001-keyframe.png", png_bytes((288, 512)))
    graph = load_graph(
        "svd_app_nodes_dict.json",
        __KEYFRAME_IMAGE__="scene-001-keyframe.png",
        __SCENE_PREFIX__="gemdirect/scene-001/frame",
        __SCENE_PROMPT__="a portrait of the lighthouse keeper",
    )
    set_input(graph, "KSampler", steps=2)
    entry, _ = run_with_socket(server, graph)
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 25 and images[0] == {
        "filename": "frame_00001_.png",
        "subfolder": "gemdirect/scene-001",
        "type": "output",
    }
    assert {Image.open(io.BytesIO(server.view(i))).size for i in (images[0], images[-1])} == {(576, 1024)}
    # either separator names the same file, as ComfyUI on Windows lists it
    assert "SVD\\svd_xt.safetensors" in server.get("/models/checkpoints").json()
    set_input(graph, "ImageOnlyCheckpointLoader", ckpt_name="SVD/svd_xt.safetensors")
    set_input(graph, "SaveImage", filename_prefix="gemdirect/scene-002/frame")
    assert server.queue(graph).status_code == 200
    assert server.get("/models/checkpoints").json().count("SVD\\svd_xt.safetensors") == 1
    assert "SVD/svd_xt.safetensors" not in server.get("/models/checkpoints").json()


def test_a_graph_with_a_custom_class_is_refused_naming_it(make_server) -> None:
    server = make_server()
    server.upload("keyframe.png", png_bytes())
    response = server.queue(load_graph("custom_vhs.json"))
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node VHS_VideoCombine does not exist.",
            "details": "Node ID '#11'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    assert server.get("/object_info/VHS_VideoCombine").json() == {}
    assert "VHS_VideoCombine" not in server.get("/object_info").json()
    assert server.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_advanced_sampler_ticks_its_own_steps_and_scheduler_steps_drive_custom_samplers(make_server) -> None:
    server = make_server()
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {
            "class_type": "KSamplerAdvanced",
            "inputs": {
                "model": ["1", 0],
                "add_noise": "enable",
                "noise_seed": 1,
                "steps": 8,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "start_at_step": 2,
                "end_at_step": 5,
                "return_with_leftover_noise": "disable",
            },
        },
        "5": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 6, "denoise": 1.0},
        },
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {
            "class_type": "SamplerCustom",
            "inputs": {
                "model": ["1", 0],
                "add_noise": True,
                "noise_seed": 1,
                "cfg": 1.0,
                "positive": ["2", 0],
                "negative": ["2", 0],
                "sampler": ["6", 0],
                "sigmas": ["5", 0],
                "latent_image": ["4", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "adv"}},
    }
    entry, messages = run_with_socket(server, graph)
    assert entry["status"]["status_str"] == "success"
    assert progress_of(messages, "4") == [(1, 3), (2, 3), (3, 3)]  # start 2 .. end 5 of 8
    assert progress_of(messages, "7") == [(step, 6) for step in range(1, 7)]  # the scheduler's 6 steps
    assert Image.open(io.BytesIO(server.view(entry["outputs"]["9"]["images"][0]))).size == (64, 64)


def test_missing_model_takes_the_first_model_away_and_the_prompt_is_refused(make_server) -> None:
    server = make_server("missing-model", models_from=[GRAPHS / "svd_app.json"])
    assert "SVD\\svd_xt.safetensors" not in server.get("/models/checkpoints").json()
    loader = server.get("/object_info/ImageOnlyCheckpointLoader").json()["ImageOnlyCheckpointLoader"]
    assert "SVD\\svd_xt.safetensors" not in loader["input"]["required"]["ckpt_name"][0]
    server.upload("k.png", png_bytes())
    graph = load_graph("svd_app.json", __KEYFRAME_IMAGE__="k.png", __SCENE_PREFIX__="x/scene-001")
    response = server.queue(graph)
    assert response.status_code == 400
    (error,) = response.json()["node_errors"]["1"]["errors"]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "ckpt_name"
    assert "SVD\\svd_xt.safetensors" in error["details"]
    # for one scene: that scene's prompt is refused, the others run
    scene = make_server("missing-model@scene-002")
    scene.upload("k.png", png_bytes())
    ok = load_graph("svd_app.json", __KEYFRAME_IMAGE__="k.png", __SCENE_PREFIX__="x/scene-001")
    bad = load_graph("svd_app.json", __KEYFRAME_IMAGE__="k.png", __SCENE_PREFIX__="x/scene-002")
    assert scene.queue(ok).status_code == 200
    assert scene.queue(bad).status_code == 400


# ------------------------------------------------------------------ the embedded simulator is told the models
def test_the_runner_offers_the_models_of_the_workflows_the_harness_names(tmp_path: Path) -> None:
    from pytest_gemdirect.services.embedded import model_sources
    from pytest_gemdirect.settings import resolve

    settings = resolve(
        {"workflow": str(GRAPHS / "wan22_i2v.json"), "keyframe_workflow": str(GRAPHS / "flux_t2i.json")},
        {},
        environ={},
    )
    sources = model_sources(settings)
    assert sources == [GRAPHS / "wan22_i2v.json", GRAPHS / "flux_t2i.json"]
    ready = tmp_path / "ready.json"
    args = [
        sys.executable,
        "-m",
        "pytest_gemdirect.sim",
        "--root",
        str(tmp_path / "root"),
        "--ready-file",
        str(ready),
    ]
    for path in sources:
        args += ["--models-from", str(path)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.02)
        url = json.loads(ready.read_text(encoding="utf-8"))["comfyui_url"]
        assert requests.get(url + "/models/diffusion_models", timeout=10).json() == [
            "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            "flux1-dev-fp8.safetensors",
        ]
        assert (
            "t5\\t5xxl_fp8_e4m3fn.safetensors"
            in requests.get(url + "/models/text_encoders", timeout=10).json()
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    bad = subprocess.run(
        [sys.executable, "-m", "pytest_gemdirect.sim", "--models-from", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "nope.json" in bad.stderr


def test_image_from_batch_keeps_its_frames_inside_the_batch(make_server) -> None:
    server = make_server()
    server.upload("k.png", png_bytes((40, 30)))
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "k.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 10}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 8, "length": 5}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "last"}},
    }
    entry, _ = run_with_socket(server, graph)
    assert [i["filename"] for i in entry["outputs"]["4"]["images"]] == ["last_00001_.png", "last_00002_.png"]
