"""Load a workflow (any of the app's shapes), patch it by role or class (never by node id), preflight it."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_gemdirect.comfyui.roles import (
    LOAD_IMAGE_CLASSES,
    PLACEHOLDER_IMAGE,
    PLACEHOLDER_PREFIX,
    PLACEHOLDER_PROMPT,
    TEXT_ENCODE_CLASSES,
    RoleError,
    RolePlan,
    plan_roles,
    prompt_encoders,
)

Workflow = dict[str, dict[str, Any]]

SAVE_CLASSES = (
    "SaveImage",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveWEBM",
    "SaveVideo",
    "VHS_VideoCombine",
)
SEED_INPUTS = ("seed", "noise_seed")
LATENT_CLASSES = ("EmptyLatentImage", "EmptySD3LatentImage")


class WorkflowError(ValueError):
    """The workflow file cannot be used; the message names the file and the node."""


def default_workflow_path(name: str = "svd_img2vid.json") -> Path:
    """A workflow shipped inside the installed package."""
    return Path(str(resources.files("pytest_gemdirect.workflows").joinpath(name)))


def load_workflow(path: Path) -> Workflow:
    """Read a workflow file in any shape the app keeps (see ``parse_workflow``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"workflow {path}: cannot be read as JSON: {exc}") from None
    return parse_workflow(data, source=f"workflow {path}")


def parse_workflow(data: Any, *, source: str) -> Workflow:
    """An API-format graph (``{id: {class_type, inputs}}``) from any of the shapes the app writes.

    Accepted: the API format itself, the ``{"prompt": …}`` wrapper ComfyUI's queue takes, and the
    nodes-dict shape ``{"id": …, "nodes": {ID: {class_type, inputs}}}``. The UI format (``nodes`` a
    list, with ``links``) is refused with how to export the API format.
    """
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise WorkflowError(
            f"{source}: this is ComfyUI's UI format (nodes and links), not the API format the server"
            " queues; in ComfyUI choose Workflow > Export (API) (or 'Save (API Format)' with dev mode"
            " on) and use that file"
        )
    if isinstance(data, dict) and isinstance(data.get("nodes"), dict):
        data = data["nodes"]
    if isinstance(data, dict) and not data:
        raise WorkflowError(f"{source}: the workflow is empty ({{}}): it has no nodes")
    if not isinstance(data, dict):
        raise WorkflowError(f"{source}: expected an object of nodes {{id: {{class_type, inputs}}}}")
    for node_id, node in data.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs", {}), dict)
        ):
            raise WorkflowError(f"{source}: node {node_id} has no class_type/inputs")
        node.setdefault("inputs", {})
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

    image_name: str  # the (start) keyframe as uploaded
    filename_prefix: str
    seed: int
    frames: int | None = None
    size: tuple[int, int] | None = None
    end_image_name: str | None = None  # bookend mode: the end keyframe as uploaded
    prompt: str | None = None  # the scene's visual prompt
    negative_prompt: str | None = None


def patch_workflow(
    workflow: Workflow,
    patch: ScenePatch,
    *,
    plan: RolePlan | None = None,
    source: str = "workflow",
) -> Workflow:
    """A copy of ``workflow`` with the keyframe(s), the words, the seed and the save prefix set.

    Where each goes comes from ``plan`` (the profile's mapping, see ``roles.plan_roles``), else from
    the graph's wiring; a graph with one LoadImage and a save node works without edits.
    """
    patched = copy.deepcopy(workflow)
    if plan is None:
        try:
            plan = plan_roles(patched, {}, bookend=patch.end_image_name is not None, source=source)
        except RoleError as exc:
            raise WorkflowError(str(exc)) from None
    _set_prefix_and_seed(patched, patch.filename_prefix, patch.seed, source)
    images = (
        [(plan.start, patch.image_name), (plan.end, patch.end_image_name)]
        if patch.end_image_name is not None
        else [(plan.keyframe or plan.start, patch.image_name)]
    )
    for place, name in images:
        if place is None:
            raise WorkflowError(f"{source}: no input takes the keyframe {name}")
        patched[place[0]]["inputs"][place[1]] = name
    _set_words(patched, plan, patch.prompt, patch.negative_prompt)
    replace_placeholders(patched, image=patch.image_name, prefix=patch.filename_prefix, prompt=patch.prompt)
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


def replace_placeholders(
    workflow: Workflow, *, image: str | None, prefix: str | None, prompt: str | None
) -> None:
    """``__KEYFRAME_IMAGE__``, ``__SCENE_PREFIX__``, ``__SCENE_PROMPT__`` replaced in every string input."""
    values = {PLACEHOLDER_IMAGE: image, PLACEHOLDER_PREFIX: prefix, PLACEHOLDER_PROMPT: prompt}
    for node in workflow.values():
        inputs = node.get("inputs", {})
        for name, value in inputs.items():
            if not isinstance(value, str) or "__" not in value:
                continue
            for placeholder, replacement in values.items():
                if replacement is not None:
                    value = value.replace(placeholder, replacement)
            inputs[name] = value


def _set_words(workflow: Workflow, plan: RolePlan, prompt: str | None, negative: str | None) -> None:
    for places, text in ((plan.prompt, prompt), (plan.negative, negative)):
        if text is None:
            continue
        for node_id, name in places:
            workflow[node_id]["inputs"][name] = text


@dataclass(frozen=True)
class KeyframePatch:
    """What the harness sets in a text-to-image workflow to draw one scene's keyframe."""

    text: str
    filename_prefix: str
    seed: int
    size: tuple[int, int]
    negative: str | None = None


def patch_keyframe_workflow(
    workflow: Workflow,
    patch: KeyframePatch,
    *,
    plan: RolePlan | None = None,
    source: str = "keyframe workflow",
) -> Workflow:
    """A copy of a text-to-image ``workflow`` with the scene's prompt, seed, save prefix and size set.

    The prompt goes where ``plan`` (the image profile's mapping) says, else into the positive
    text-encode node: the one titled "Positive" (any case), else the one wired to a sampler's
    ``positive`` input, else the only one. Never chosen by node id.
    """
    patched = copy.deepcopy(workflow)
    prompt_places = plan.prompt if plan is not None and plan.prompt else ()
    if not prompt_places:
        prompt_places = ((_positive_encoder(patched, source), "text"),)
    _set_prefix_and_seed(patched, patch.filename_prefix, patch.seed, source)
    _set_words(patched, RolePlan(prompt_places, plan.negative if plan else ()), patch.text, patch.negative)
    replace_placeholders(patched, image=None, prefix=patch.filename_prefix, prompt=patch.text)
    for node_id in nodes_of_class(patched, LATENT_CLASSES):
        inputs = patched[node_id]["inputs"]
        inputs["width"], inputs["height"] = patch.size
        inputs["batch_size"] = 1
    return patched


def _set_prefix_and_seed(workflow: Workflow, prefix: str, seed: int, source: str) -> None:
    """Every save node writes under ``prefix``; every literal ``seed`` and ``noise_seed`` is ``seed``."""
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
    found = prompt_encoders(workflow, "positive")
    if len(found) == 1:
        return found[0][0]
    encoders = nodes_of_class(workflow, TEXT_ENCODE_CLASSES)
    raise WorkflowError(
        f"{source}: cannot tell which of {len(encoders)} text-encode nodes"
        f" ({', '.join(TEXT_ENCODE_CLASSES)}) takes the scene's prompt;"
        ' title it "Positive" or wire it to a KSampler\'s positive input'
    )


def preflight(workflow: Workflow, object_info: dict[str, Any], *, keyframe_input: str = "image") -> list[str]:
    """Problems that would make ComfyUI reject or fail the graph, in plain words (empty when none).

    Checks every class exists (a custom node pack the server lacks is named by its classes) and
    every combo value (model names above all) is one the server offers; a model name that differs
    only by its folder separator counts as offered (``adapt_to_server`` sends the server's spelling).
    The LoadImage file is skipped: it is uploaded just before queueing.
    """
    problems: list[str] = []
    missing: dict[str, list[str]] = {}
    for node_id, node, name, value, options in _combo_values(workflow, object_info, missing):
        if class_of(workflow, node_id) in LOAD_IMAGE_CLASSES and name == keyframe_input:
            continue
        if value not in options and _offered_spelling(value, options) is None:
            problems.append(_combo_problem(node_id, node["class_type"], name, value, options))
    if missing:
        shown = ", ".join(f"{kind} (node {', '.join(ids)})" for kind, ids in missing.items())
        problems.insert(
            0,
            f"the server has no node class {', '.join(missing)}: {shown}; a custom node pack (or a newer"
            " ComfyUI) provides them: install it, or use a profile of core nodes",
        )
    return problems


def adapt_to_server(workflow: Workflow, object_info: dict[str, Any]) -> tuple[Workflow, list[str]]:
    """A copy whose model names use the server's spelling where they differ only by separator, and notes.

    ComfyUI on Windows lists ``SVD\\svd_xt.safetensors``, on Linux ``SVD/svd_xt.safetensors``; the
    app's files carry either.
    """
    adapted = copy.deepcopy(workflow)
    notes: list[str] = []
    for node_id, node, name, value, options in _combo_values(adapted, object_info, {}):
        spelling = None if value in options else _offered_spelling(value, options)
        if spelling is not None:
            adapted[node_id]["inputs"][name] = spelling
            notes.append(
                f"node {node_id} ({node['class_type']}): {name} {value} is offered by the server as"
                f" {spelling}; queued with the server's spelling"
            )
    return adapted, notes


def class_of(workflow: Workflow, node_id: str) -> str | None:
    node = workflow.get(node_id)
    kind = node.get("class_type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) else None


def _combo_values(
    workflow: Workflow, object_info: dict[str, Any], missing: dict[str, list[str]]
) -> list[tuple[str, dict[str, Any], str, Any, list[Any]]]:
    """Each literal combo input with the choices the server offers; unknown classes go to ``missing``."""
    found = []
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        info = object_info.get(class_type)
        if not isinstance(info, dict):
            missing.setdefault(class_type, []).append(node_id)
            continue
        declared = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) or name not in declared:
                continue
            options = _options(declared[name])
            if options is not None:
                found.append((node_id, node, name, value, options))
    return found


def _options(spec: Any) -> list[Any] | None:
    """The choices of an input spec: ``[[a, b], {…}]`` or, since 0.3.x, ``["COMBO", {"options": [a, b]}]``."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _unify(name: str) -> str:
    return name.replace("\\", "/")


def _offered_spelling(value: Any, options: list[Any]) -> str | None:
    """The offered name that is ``value`` written with the other folder separator, if any."""
    if not isinstance(value, str):
        return None
    wanted = _unify(value)
    return next((o for o in options if isinstance(o, str) and _unify(o) == wanted), None)


def _closest(value: Any, options: list[Any]) -> str | None:
    """An offered name with the same file name in another folder (or none), case aside."""
    if not isinstance(value, str):
        return None

    def base(name: str) -> str:
        return _unify(name).rsplit("/", 1)[-1].lower()

    return next((o for o in options if isinstance(o, str) and base(o) == base(value)), None)


def _combo_problem(node_id: str, class_type: str, name: str, value: Any, options: list[Any]) -> str:
    offered = ", ".join(map(str, options[:20])) or "nothing"
    closest = _closest(value, options)
    hint = f"; closest: {closest} (the same file in another folder)" if closest is not None else ""
    if name == "ckpt_name":
        return (
            f"checkpoint {value} is not in models/checkpoints (node {node_id}, {class_type}){hint};"
            f" the server offers: {offered}"
        )
    return f"node {node_id} ({class_type}): {name} = {value!r} is not one the server offers{hint}: {offered}"
