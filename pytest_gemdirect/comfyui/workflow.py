"""Load an API-format workflow, patch it by node class (never by node id), check it against /object_info."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

Workflow = dict[str, dict[str, Any]]

LOAD_IMAGE_CLASSES = ("LoadImage",)
SAVE_CLASSES = (
    "SaveImage",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveWEBM",
    "SaveVideo",
    "VHS_VideoCombine",
)
SEED_INPUTS = ("seed", "noise_seed")
TEXT_ENCODE_CLASSES = ("CLIPTextEncode",)
SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom")
LATENT_CLASSES = ("EmptyLatentImage", "EmptySD3LatentImage")


class WorkflowError(ValueError):
    """The workflow file cannot be used; the message names the file and the node."""


def default_workflow_path(name: str = "svd_img2vid.json") -> Path:
    """A workflow shipped inside the installed package."""
    return Path(str(resources.files("pytest_gemdirect.workflows").joinpath(name)))


def load_workflow(path: Path) -> Workflow:
    """Read an API-format workflow (``{id: {class_type, inputs}}``) and say plainly when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"workflow {path}: cannot be read as JSON: {exc}") from None
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"workflow {path}: this is the UI format; export it with 'Save (API Format)' in ComfyUI"
        )
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"workflow {path}: expected an object of nodes {{id: {{class_type, inputs}}}}")
    for node_id, node in data.items():
        if (
            not isinstance(node, dict)
            or "class_type" not in node
            or not isinstance(node.get("inputs", {}), dict)
        ):
            raise WorkflowError(f"workflow {path}: node {node_id} has no class_type/inputs")
    return data


def workflow_hash(workflow: Workflow) -> str:
    """sha256 of the canonical JSON, so two runs' workflows can be compared."""
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def nodes_of_class(workflow: Workflow, classes: tuple[str, ...], title: str | None = None) -> list[str]:
    """Node ids whose class_type is one of ``classes`` (and whose _meta.title matches, when given)."""
    found = []
    for node_id, node in workflow.items():
        if node.get("class_type") not in classes:
            continue
        if title is not None and node.get("_meta", {}).get("title") != title:
            continue
        found.append(node_id)
    return found


@dataclass(frozen=True)
class ScenePatch:
    """What the harness sets in a workflow for one scene."""

    image_name: str
    filename_prefix: str
    seed: int
    frames: int | None = None
    size: tuple[int, int] | None = None


def patch_workflow(workflow: Workflow, patch: ScenePatch, *, source: str = "workflow") -> Workflow:
    """A copy of ``workflow`` with the keyframe, the seed, the save prefix (and frames/size) set.

    Nodes are found by class, so a user's own graph with one LoadImage and at least one save
    node works without edits, whatever its node ids.
    """
    patched = copy.deepcopy(workflow)
    loaders = nodes_of_class(patched, LOAD_IMAGE_CLASSES)
    if len(loaders) != 1:
        raise WorkflowError(
            f"{source}: needs exactly one LoadImage node for the keyframe, found {len(loaders)}"
        )
    _set_prefix_and_seed(patched, patch.filename_prefix, patch.seed, source)
    patched[loaders[0]]["inputs"]["image"] = patch.image_name
    for node in patched.values():
        inputs = node.get("inputs", {})
        if (
            patch.frames is not None
            and "video_frames" in inputs
            and not isinstance(inputs["video_frames"], list)
        ):
            inputs["video_frames"] = patch.frames
        if patch.size is not None and node.get("class_type") == "SVD_img2vid_Conditioning":
            inputs["width"], inputs["height"] = patch.size
    return patched


@dataclass(frozen=True)
class KeyframePatch:
    """What the harness sets in a text-to-image workflow to draw one scene's keyframe."""

    text: str
    filename_prefix: str
    seed: int
    size: tuple[int, int]


def patch_keyframe_workflow(
    workflow: Workflow, patch: KeyframePatch, *, source: str = "keyframe workflow"
) -> Workflow:
    """A copy of a text-to-image ``workflow`` with the scene's prompt, seed, save prefix and size set.

    The prompt goes into the positive text-encode node: the one titled "Positive" (any case), else
    the one wired to a sampler's ``positive`` input, else the only one. Never chosen by node id.
    """
    patched = copy.deepcopy(workflow)
    encoder = _positive_encoder(patched, source)
    _set_prefix_and_seed(patched, patch.filename_prefix, patch.seed, source)
    patched[encoder]["inputs"]["text"] = patch.text
    for node_id in nodes_of_class(patched, LATENT_CLASSES):
        inputs = patched[node_id]["inputs"]
        inputs["width"], inputs["height"] = patch.size
        inputs["batch_size"] = 1
    return patched


def _set_prefix_and_seed(workflow: Workflow, prefix: str, seed: int, source: str) -> None:
    """Every save node writes under ``prefix``; every literal seed input becomes ``seed``."""
    saves = nodes_of_class(workflow, SAVE_CLASSES)
    if not saves:
        raise WorkflowError(f"{source}: needs at least one save node ({', '.join(SAVE_CLASSES)})")
    for node_id in saves:
        workflow[node_id]["inputs"]["filename_prefix"] = prefix
    for node in workflow.values():
        inputs = node.get("inputs", {})
        for key in SEED_INPUTS:
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = seed


def _positive_encoder(workflow: Workflow, source: str) -> str:
    encoders = nodes_of_class(workflow, TEXT_ENCODE_CLASSES)
    titled = [n for n in encoders if str(workflow[n].get("_meta", {}).get("title", "")).lower() == "positive"]
    if len(titled) == 1:
        return titled[0]
    wired = {
        str(link[0])
        for n in nodes_of_class(workflow, SAMPLER_CLASSES)
        if isinstance(link := workflow[n].get("inputs", {}).get("positive"), list) and link
    }
    wired &= set(encoders)
    if len(wired) == 1:
        return wired.pop()
    if len(encoders) == 1:
        return encoders[0]
    raise WorkflowError(
        f"{source}: cannot tell which of {len(encoders)} text-encode nodes"
        f" ({', '.join(TEXT_ENCODE_CLASSES)}) takes the scene's prompt;"
        ' title it "Positive" or wire it to a KSampler\'s positive input'
    )


def preflight(workflow: Workflow, object_info: dict[str, Any], *, keyframe_input: str = "image") -> list[str]:
    """Problems that would make ComfyUI reject or fail the graph, in plain words (empty when none).

    Checks every class exists and every combo value (the checkpoint name above all) is one the
    server offers. The LoadImage file is skipped: it is uploaded just before queueing.
    """
    problems: list[str] = []
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"node {node_id} ({class_type}): the server has no node class {class_type}")
            continue
        declared = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) or name not in declared:
                continue
            if class_type in LOAD_IMAGE_CLASSES and name == keyframe_input:
                continue
            options = declared[name][0] if declared[name] else None
            if isinstance(options, list) and value not in options:
                problems.append(_combo_problem(node_id, class_type, name, value, options))
    return problems


def _combo_problem(node_id: str, class_type: str, name: str, value: Any, options: list[Any]) -> str:
    offered = ", ".join(map(str, options[:20])) or "nothing"
    if name == "ckpt_name":
        return (
            f"checkpoint {value} is not in models/checkpoints (node {node_id}, {class_type});"
            f" the server offers: {offered}"
        )
    return f"node {node_id} ({class_type}): {name} = {value!r} is not one the server offers: {offered}"
