"""The node table: ComfyUI 0.3.64's full ``/object_info`` as recorded, and what the simulator reads from it.

``object_info_0.3.64.json.gz`` is ``GET /object_info`` of a real ComfyUI 0.3.64 (478 classes: every
core node, the API nodes, and SaveImageWebsocket from ``custom_nodes/``), recorded with no model
files installed. Everything the simulator knows about a class (its inputs, their types, ranges and
choices, its outputs, whether it is an output node) comes from this table; the model folders its
loaders list and the input files its LoadImage-like nodes list are filled in per server.
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from typing import Any

OBJECT_INFO_FILE = "object_info_0.3.64.json.gz"

# The model folder each model input of a loader lists (ComfyUI's folder_paths names).
MODEL_FOLDER_BY_INPUT = {
    "ckpt_name": "checkpoints",
    "unet_name": "diffusion_models",
    "vae_name": "vae",
    "lora_name": "loras",
    "control_net_name": "controlnet",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "style_model_name": "style_models",
    "model_path": "diffusers",
    "photomaker_model_name": "photomaker",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
}
MODEL_FOLDER_BY_CLASS_INPUT = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ModelPatchLoader", "name"): "model_patches",
}
# Classes whose file input is checked by the node itself (VALIDATE_INPUTS): the file must exist in
# the input folder (or the folder its " [output]" annotation names); the choice list is not checked.
FILE_CHECKED_INPUTS = {
    ("LoadImage", "image"): "Invalid image file",
    ("LoadImageMask", "image"): "Invalid image file",
    ("LoadImageOutput", "image"): "Invalid image file",
    ("WebcamCapture", "image"): "Invalid image file",
    ("LoadVideo", "file"): "Invalid video file",
}
# Combos that list files of the input folder (a subfolder, the suffixes), as the real nodes list them.
INPUT_FILE_LISTS = {
    ("LoadLatent", "latent"): ("", (".latent",)),
    ("LoadVideo", "file"): ("", (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp")),
    ("Load3D", "model_file"): ("3d", (".gltf", ".glb", ".obj", ".fbx", ".stl")),
    ("Load3DAnimation", "model_file"): ("3d", (".gltf", ".glb", ".fbx")),
    ("GeminiInputFiles", "file"): ("", (".txt", ".pdf")),
    ("OpenAIInputFiles", "file"): ("", (".txt", ".pdf")),
}


@functools.lru_cache(maxsize=1)
def recorded_object_info() -> dict[str, Any]:
    """The recorded table (read once; callers copy what they change)."""
    data = resources.files("pytest_gemdirect.sim.comfyui").joinpath(OBJECT_INFO_FILE).read_bytes()
    info: dict[str, Any] = json.loads(gzip.decompress(data))
    return info


def declared_inputs(class_info: dict[str, Any]) -> dict[str, list[Any]]:
    """The required and optional inputs of a class, ``{name: [type, options]}``."""
    inputs = class_info.get("input", {})
    return {**inputs.get("required", {}), **inputs.get("optional", {})}


def combo_options(definition: list[Any]) -> list[Any] | None:
    """The choices of a combo input (old style ``[[choices]]`` or ``["COMBO", {"options"}]``), else None."""
    if definition and isinstance(definition[0], list):
        return definition[0]
    if definition and definition[0] == "COMBO":
        extra = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
        options = extra.get("options", [])
        return options if isinstance(options, list) else []
    return None


def model_folder(class_type: str, input_name: str) -> str | None:
    """The model folder a loader's input lists, or None when the input is not a model choice."""
    folder = MODEL_FOLDER_BY_CLASS_INPUT.get((class_type, input_name))
    if folder is not None:
        return folder
    info = recorded_object_info().get(class_type)
    if info is None or input_name not in MODEL_FOLDER_BY_INPUT:
        return None
    if combo_options(declared_inputs(info).get(input_name, [])) is None:
        return None
    return MODEL_FOLDER_BY_INPUT[input_name]


@functools.lru_cache(maxsize=1)
def model_inputs() -> dict[str, dict[str, str]]:
    """``{class: {input: folder}}`` for every loader input that lists a model folder."""
    table: dict[str, dict[str, str]] = {}
    for class_type, info in recorded_object_info().items():
        for name in declared_inputs(info):
            folder = model_folder(class_type, name)
            if folder is not None:
                table.setdefault(class_type, {})[name] = folder
    return table


@functools.lru_cache(maxsize=1)
def input_file_inputs() -> list[tuple[str, str]]:
    """(class, input) of the combos that list the input folder's images (recorded as LoadImage's list)."""
    info = recorded_object_info()
    listed = combo_options(declared_inputs(info["LoadImage"])["image"])
    found = []
    for class_type, class_info in info.items():
        for name, definition in declared_inputs(class_info).items():
            if isinstance(definition[0], list) and definition[0] == listed:
                found.append((class_type, name))
    return found
