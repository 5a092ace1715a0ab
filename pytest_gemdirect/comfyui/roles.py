"""Where a scene's words and keyframes go in a graph: the app's role mapping, else detection by wiring.

The app's profiles map ``"NODE:INPUT"`` to a role (``human_readable_prompt``, ``keyframe_image``…).
Where a profile maps nothing (or a plain workflow file is used), the place is found from the graph
itself: the text encoder wired (through conditioning nodes) to a sampler's ``positive`` input, the
LoadImage nodes feeding a first-last-frame node's ``start_image``/``end_image``. Never by node id.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PROMPT = "human_readable_prompt"
NEGATIVE = "negative_prompt"
KEYFRAME = "keyframe_image"
START = "start_image"
END = "end_image"
KNOWN_ROLES = (PROMPT, NEGATIVE, KEYFRAME, START, END)
"""Roles the harness fills in."""

IGNORED_ROLES = (
    "ref_image",
    "control_video",
    "character_reference_image",
    "ipadapter_weight",
    "feta_weight",
    "input_video",
)
"""Roles of the app's mappings the harness has nothing for: left as the graph has them, with a note."""

PLACEHOLDER_IMAGE = "__KEYFRAME_IMAGE__"
PLACEHOLDER_PREFIX = "__SCENE_PREFIX__"
PLACEHOLDER_PROMPT = "__SCENE_PROMPT__"

TEXT_ENCODE_CLASSES = ("CLIPTextEncode",)
SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "CFGGuider", "BasicGuider")
LOAD_IMAGE_CLASSES = ("LoadImage",)
# Inputs a picture travels through on its way from a LoadImage to the node that uses it.
_IMAGE_CARRIERS = ("image", "images", "pixels", "image1", "start_image", "end_image")
_CONDITIONING_CARRIERS = ("conditioning", "conditioning_to", "conditioning_1")
_MAX_DEPTH = 50

Place = tuple[str, str]
"""(node id, input name)."""


class RoleError(ValueError):
    """A role the run needs has no place in the graph, or a mapping names what the graph lacks."""


@dataclass(frozen=True)
class RolePlan:
    """Where the harness writes each role in one graph, and what it leaves alone (notes)."""

    prompt: tuple[Place, ...] = ()
    negative: tuple[Place, ...] = ()
    keyframe: Place | None = None  # single mode
    start: Place | None = None  # bookend mode
    end: Place | None = None
    notes: tuple[str, ...] = field(default=())


def parse_mapping(mapping: Any, workflow: Mapping[str, Any], *, source: str) -> dict[Place, str]:
    """``{"NODE:INPUT": role}`` checked against the graph: every node and input it names must be there."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise RoleError(f'{source}: mapping must be an object of "NODE:INPUT": role')
    parsed: dict[Place, str] = {}
    for key, role in mapping.items():
        node_id, sep, name = str(key).rpartition(":")
        if not sep or not node_id or not name:
            raise RoleError(f'{source}: mapping key {key!r} is not "NODE:INPUT"')
        if not isinstance(role, str) or not role:
            raise RoleError(f"{source}: mapping {key} has no role (got {role!r})")
        node = workflow.get(node_id)
        if not isinstance(node, Mapping):
            raise RoleError(f"{source}: mapping {key} ({role}) names node {node_id}, which the graph lacks")
        if name not in (node.get("inputs") or {}):
            raise RoleError(
                f"{source}: mapping {key} ({role}) names input {name} of node {node_id}"
                f" ({node.get('class_type')}), which that node does not have"
            )
        parsed[(node_id, name)] = role
    return parsed


def plan_roles(
    workflow: Mapping[str, Any], mapping: Mapping[Place, str], *, bookend: bool, source: str
) -> RolePlan:
    """The places of every role this run fills; a keyframe input no mapping or detection finds is an error."""
    notes = [
        f"{source}: role {role} ({node}:{name}) is not filled by the harness; the graph's value stays"
        for (node, name), role in mapping.items()
        if role not in KNOWN_ROLES
    ]
    prompt = _mapped(mapping, PROMPT) or _detected(workflow, "positive")
    encoders = [n for n, node in workflow.items() if _class(node) in TEXT_ENCODE_CLASSES]
    if encoders and not prompt and not _marked(workflow):
        shown = ", ".join(f"{n}:text" for n in encoders)
        raise RoleError(
            f"{source}: no input takes the scene's prompt: map one of {shown} to {PROMPT},"
            " or wire the prompt's encoder to a sampler's positive input"
        )
    negative = _mapped(mapping, NEGATIVE) or _detected(workflow, "negative")
    if set(prompt) & set(negative):
        negative = tuple(p for p in negative if p not in prompt)
    if bookend:
        start = _one(_mapped(mapping, START), START, source) or _bookend_loader(workflow, START)
        end = _one(_mapped(mapping, END), END, source) or _bookend_loader(workflow, END)
        for role, place in ((START, start), (END, end)):
            if place is None:
                raise RoleError(
                    f'{source}: bookend mode needs a LoadImage for {role}: map one "NODE:image" to'
                    f" {role}, or feed a first-last-frame node's {role} input from a LoadImage"
                    f" ({_loaders_in_words(workflow)})"
                )
        if start == end:
            raise RoleError(f"{source}: {START} and {END} are the same input {start[0]}:{start[1]}")  # type: ignore[index]
        return RolePlan(prompt, negative, start=start, end=end, notes=tuple(notes))
    keyframe = (
        _one(_mapped(mapping, KEYFRAME), KEYFRAME, source)
        or _one(_mapped(mapping, START), START, source)
        or _placeholder_loader(workflow)
        or _only_loader(workflow, source)
    )
    return RolePlan(prompt, negative, keyframe=keyframe, notes=tuple(notes))


def _mapped(mapping: Mapping[Place, str], role: str) -> tuple[Place, ...]:
    return tuple(place for place, mapped in mapping.items() if mapped == role)


def _one(places: tuple[Place, ...], role: str, source: str) -> Place | None:
    if len(places) > 1:
        shown = ", ".join(f"{n}:{i}" for n, i in places)
        raise RoleError(f"{source}: role {role} is mapped to {len(places)} inputs ({shown}); map one")
    return places[0] if places else None


def _detected(workflow: Mapping[str, Any], side: str) -> tuple[Place, ...]:
    """The encoders found by wiring, unless the graph marks its prompt with ``__SCENE_PROMPT__`` itself."""
    return () if _marked(workflow) else prompt_encoders(workflow, side)


def _marked(workflow: Mapping[str, Any]) -> bool:
    """The graph marks the prompt's place itself with ``__SCENE_PROMPT__``."""
    return any(PLACEHOLDER_PROMPT in value for _, _, value in _strings(workflow))


def prompt_encoders(workflow: Mapping[str, Any], side: str) -> tuple[Place, ...]:
    """The text encoders that reach a sampler's ``side`` input, through conditioning nodes.

    With ``positive``, a single encoder titled "Positive" (any case) wins over the wiring, as the
    keyframe graphs have always been read.
    """
    encoders = [n for n, node in workflow.items() if _class(node) in TEXT_ENCODE_CLASSES]
    titled = [n for n in encoders if _title(workflow[n]).lower() == side]
    if len(titled) == 1:
        return ((titled[0], "text"),)
    found: list[str] = []
    carriers = (*_CONDITIONING_CARRIERS, side)
    for node in workflow.values():
        if _class(node) in SAMPLER_CLASSES:
            for origin in _upstream(workflow, _link(_inputs(node).get(side)), carriers):
                if _class(workflow.get(origin)) in TEXT_ENCODE_CLASSES and origin not in found:
                    found.append(origin)
    if not found and side == "positive" and len(encoders) == 1:
        found = encoders
    return tuple((n, "text") for n in found)


def _bookend_loader(workflow: Mapping[str, Any], role: str) -> Place | None:
    """The LoadImage that feeds some node's ``start_image``/``end_image`` input (through image nodes)."""
    loaders: list[str] = []
    for node in workflow.values():
        link = _link(_inputs(node).get(role))
        if link is None or _class(node) in LOAD_IMAGE_CLASSES:
            continue
        for origin in _upstream(workflow, link, _IMAGE_CARRIERS):
            if _class(workflow.get(origin)) in LOAD_IMAGE_CLASSES and origin not in loaders:
                loaders.append(origin)
    return (loaders[0], "image") if len(loaders) == 1 else None


def _placeholder_loader(workflow: Mapping[str, Any]) -> Place | None:
    marked = [
        n
        for n, node in workflow.items()
        if _class(node) in LOAD_IMAGE_CLASSES and _inputs(node).get("image") == PLACEHOLDER_IMAGE
    ]
    return (marked[0], "image") if len(marked) == 1 else None


def _only_loader(workflow: Mapping[str, Any], source: str) -> Place:
    loaders = [n for n, node in workflow.items() if _class(node) in LOAD_IMAGE_CLASSES]
    if len(loaders) != 1:
        raise RoleError(
            f"{source}: needs exactly one LoadImage node for the keyframe, found {len(loaders)};"
            f' map one "NODE:image" to {KEYFRAME}'
        )
    return (loaders[0], "image")


def _loaders_in_words(workflow: Mapping[str, Any]) -> str:
    loaders = [n for n, node in workflow.items() if _class(node) in LOAD_IMAGE_CLASSES]
    return f"LoadImage nodes: {', '.join(loaders)}" if loaders else "the graph has no LoadImage"


def _upstream(workflow: Mapping[str, Any], start: str | None, carriers: tuple[str, ...]) -> Iterator[str]:
    """Node ids reached from ``start`` going back through ``carriers`` inputs (breadth first, each once)."""
    if start is None:
        return
    queue, seen = [start], {start}
    while queue and len(seen) <= _MAX_DEPTH:
        node_id = queue.pop(0)
        yield node_id
        for name in carriers:
            origin = _link(_inputs(workflow.get(node_id)).get(name))
            if origin is not None and origin not in seen:
                seen.add(origin)
                queue.append(origin)


def _strings(workflow: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    for node_id, node in workflow.items():
        for name, value in _inputs(node).items():
            if isinstance(value, str):
                yield node_id, name, value


def _link(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
        return str(value[0])
    return None


def _inputs(node: Any) -> Mapping[str, Any]:
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    return inputs if isinstance(inputs, Mapping) else {}


def _class(node: Any) -> str | None:
    kind = node.get("class_type") if isinstance(node, Mapping) else None
    return kind if isinstance(kind, str) else None


def _title(node: Any) -> str:
    meta = node.get("_meta") if isinstance(node, Mapping) else None
    return str(meta.get("title", "")) if isinstance(meta, Mapping) else ""
