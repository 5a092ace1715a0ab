"""Workflow patching by node class and the preflight against /object_info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gemdirect.comfyui.workflow import (
    KeyframePatch,
    ScenePatch,
    WorkflowError,
    default_workflow_path,
    load_workflow,
    patch_keyframe_workflow,
    patch_workflow,
    preflight,
    workflow_hash,
)

# Recorded from a real ComfyUI 0.3.64 (no model files installed), kept in the repository
REFERENCE = Path(__file__).resolve().parent / "data" / "comfyui-0.3.64"
PATCH = ScenePatch(
    image_name="gemdirect-x-scene-002.png", filename_prefix="gemdirect/run/scene-002/frame", seed=7
)


def _recorded_object_info() -> dict:
    path = REFERENCE / "a_object_info_subset.json"
    return json.loads(path.read_text(encoding="utf-8"))["body_subset"]


@pytest.mark.parametrize("name", ["svd_img2vid.json", "smoke.json"])
def test_shipped_workflows_are_patched_by_class(name: str) -> None:
    workflow = load_workflow(default_workflow_path(name))
    patched = patch_workflow(workflow, PATCH)
    loads = [n for n in patched.values() if n["class_type"] == "LoadImage"]
    saves = [n for n in patched.values() if n["class_type"] == "SaveImage"]
    assert [n["inputs"]["image"] for n in loads] == [PATCH.image_name]
    assert [n["inputs"]["filename_prefix"] for n in saves] == [PATCH.filename_prefix]
    assert workflow != patched, "the loaded workflow must not be changed in place"


def test_svd_seed_frames_and_size_are_set() -> None:
    workflow = load_workflow(default_workflow_path())
    patched = patch_workflow(
        workflow, ScenePatch("k.png", "p/scene-001/frame", seed=99, frames=14, size=(512, 288))
    )
    sampler = next(n for n in patched.values() if n["class_type"] == "KSampler")
    cond = next(n for n in patched.values() if n["class_type"] == "SVD_img2vid_Conditioning")
    assert sampler["inputs"]["seed"] == 99
    assert (cond["inputs"]["video_frames"], cond["inputs"]["width"], cond["inputs"]["height"]) == (
        14,
        512,
        288,
    )


def test_user_graph_with_unusual_node_ids(tmp_path: Path) -> None:
    graph = {
        "load-keyframe": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "900": {"class_type": "ImageInvert", "inputs": {"image": ["load-keyframe", 0]}},
        "save_a": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {"images": ["900", 0], "filename_prefix": "a"},
        },
        "save_b": {"class_type": "SaveImage", "inputs": {"images": ["900", 0], "filename_prefix": "b"}},
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(graph), encoding="utf-8")
    patched = patch_workflow(load_workflow(path), PATCH)
    assert patched["load-keyframe"]["inputs"]["image"] == PATCH.image_name
    assert {patched[k]["inputs"]["filename_prefix"] for k in ("save_a", "save_b")} == {PATCH.filename_prefix}


def test_graph_without_loader_names_the_problem() -> None:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}
    with pytest.raises(WorkflowError, match="exactly one LoadImage"):
        patch_workflow(graph, PATCH, source="mine.json")


def test_ui_format_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"nodes": [], "links": []}), encoding="utf-8")
    with pytest.raises(WorkflowError, match="API Format"):
        load_workflow(path)


def test_preflight_names_missing_checkpoint_and_class() -> None:
    object_info = _recorded_object_info()  # recorded with no model files: ckpt combo is empty
    workflow = load_workflow(default_workflow_path())
    workflow["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    problems = preflight(workflow, object_info)
    assert any("checkpoint svd_xt.safetensors is not in models/checkpoints" in p for p in problems)
    assert any("the server has no node class NoSuchNode: NoSuchNode (node 99)" in p for p in problems)


def test_preflight_passes_smoke_graph_on_recorded_server() -> None:
    _, object_info = _real_node_classes()
    assert preflight(load_workflow(default_workflow_path("smoke.json")), object_info) == []


def _real_node_classes() -> tuple[set[str], dict]:
    """Every node class of a real ComfyUI 0.3.64, and the entries of those the shipped workflows use."""
    recorded = json.loads((REFERENCE / "a_object_info_shipped_nodes.json").read_text(encoding="utf-8"))
    return set(recorded["node_classes"]), recorded["body_subset"]


@pytest.mark.parametrize("name", ["smoke.json", "smoke_video.json", "smoke_webm.json"])
def test_smoke_workflows_run_on_a_real_comfyui_with_no_model_file(name: str) -> None:
    classes, object_info = _real_node_classes()
    workflow = load_workflow(default_workflow_path(name))
    assert {node["class_type"] for node in workflow.values()} <= classes
    assert preflight(workflow, object_info) == []  # recorded with no model files installed


@pytest.mark.parametrize("name", ["svd_img2vid.json", "keyframe_txt2img.json"])
def test_model_workflows_need_only_their_model_files(name: str) -> None:
    classes, object_info = _real_node_classes()
    workflow = load_workflow(default_workflow_path(name))
    assert {node["class_type"] for node in workflow.values()} <= classes
    problems = preflight(workflow, object_info)
    assert problems and all("is not in models/checkpoints" in p for p in problems), problems


def test_the_smoke_frames_move_and_keep_their_size() -> None:
    # eight crops at shifting offsets of the scaled keyframe, joined into one batch: a camera move
    from pytest_gemdirect.video import expected_output

    for name in ("smoke.json", "smoke_video.json", "smoke_webm.json"):
        workflow = load_workflow(default_workflow_path(name))
        crops = [n["inputs"] for n in workflow.values() if n["class_type"] == "ImageCrop"]
        assert len({(c["x"], c["y"]) for c in crops}) == len(crops) == 8
        assert "RepeatImageBatch" not in {n["class_type"] for n in workflow.values()}
        expected = expected_output(workflow)
        assert (expected.frames, expected.width, expected.height) == (8, 256, 144)


def test_hash_ignores_key_order() -> None:
    assert workflow_hash({"a": {"x": 1, "y": 2}}) == workflow_hash({"a": {"y": 2, "x": 1}})


KEYFRAME = KeyframePatch(
    text="a lighthouse at dusk", filename_prefix="gemdirect/scene-002/run/keyframe", seed=7, size=(512, 288)
)


def test_shipped_keyframe_graph_gets_prompt_seed_prefix_and_size() -> None:
    workflow = load_workflow(default_workflow_path("keyframe_txt2img.json"))
    patched = patch_keyframe_workflow(workflow, KEYFRAME)
    texts = {
        n["_meta"]["title"]: n["inputs"]["text"]
        for n in patched.values()
        if n["class_type"] == "CLIPTextEncode"
    }
    assert texts["Positive"] == KEYFRAME.text
    assert texts["Negative"] == workflow["7"]["inputs"]["text"], "the negative prompt must stay as it was"
    latent = next(n for n in patched.values() if n["class_type"] == "EmptyLatentImage")
    assert (latent["inputs"]["width"], latent["inputs"]["height"], latent["inputs"]["batch_size"]) == (
        512,
        288,
        1,
    )
    assert next(n for n in patched.values() if n["class_type"] == "KSampler")["inputs"]["seed"] == 7
    save = next(n for n in patched.values() if n["class_type"] == "SaveImage")
    assert save["inputs"]["filename_prefix"] == KEYFRAME.filename_prefix


def test_keyframe_prompt_follows_the_sampler_wiring_in_an_untitled_user_graph() -> None:
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["ckpt", 1]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "k": {
            "class_type": "KSampler",
            "inputs": {"positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "seed": 1},
        },
        "out": {"class_type": "SaveImage", "inputs": {"images": ["k", 0], "filename_prefix": "x"}},
    }
    patched = patch_keyframe_workflow(graph, KEYFRAME)
    assert patched["pos"]["inputs"]["text"] == KEYFRAME.text
    assert patched["neg"]["inputs"]["text"] == "ugly"
    assert patched["lat"]["inputs"]["batch_size"] == 1


def test_keyframe_graph_with_no_way_to_tell_the_positive_prompt_names_the_problem() -> None:
    graph = {
        "a": {"class_type": "CLIPTextEncode", "inputs": {"text": "one"}},
        "b": {"class_type": "CLIPTextEncode", "inputs": {"text": "two"}},
        "s": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
    }
    with pytest.raises(
        WorkflowError, match='mine.json: cannot tell which of 2 text-encode nodes.*"Positive"'
    ):
        patch_keyframe_workflow(graph, KEYFRAME, source="mine.json")
