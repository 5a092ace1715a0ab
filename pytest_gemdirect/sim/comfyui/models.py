"""The model files the simulated server has: whatever the workflows it is given or sent ask for.

A real ComfyUI lists the files in its model folders; the simulator has every model a workflow
names (told at start-up with ``models_from``, or learnt from each queued prompt), so any core graph
validates. A name with a subfolder matches with either separator, as on Windows
(``SVD\\svd_xt.safetensors`` and ``SVD/svd_xt.safetensors``). The ``missing-model`` fault takes
one name away: the first model the first workflow names (for every scene), or, for one scene, the
first model that scene's prompt names; that name is then refused as a real server refuses a file it
does not have (``value_not_in_list``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pytest_gemdirect.sim.comfyui.catalog import model_inputs
from pytest_gemdirect.sim.comfyui.constants import MODEL_FOLDERS


def same_name_key(name: str) -> str:
    """Names equal but for the separator share a key."""
    return name.replace("\\", "/")


def model_names_in(graph: Any) -> Iterator[tuple[str, str]]:
    """(folder, name) of every literal model choice in an API-format graph, in node order."""
    if not isinstance(graph, dict):
        return
    table = model_inputs()
    for node in graph.values():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs")
        wanted = table.get(str(node.get("class_type")), {})
        if not isinstance(inputs, dict):
            continue
        for name, folder in wanted.items():
            value = inputs.get(name)
            if isinstance(value, str) and value:
                yield folder, value


def graphs_in_document(document: Any) -> Iterator[dict[str, Any]]:
    """Every API-format graph inside a JSON document: the document itself, a ``prompt`` or ``nodes``
    wrapper, and graphs serialised as JSON strings (the app's settings file keeps them so)."""
    if isinstance(document, str):
        text = document.strip()
        if text.startswith("{"):
            try:
                yield from graphs_in_document(json.loads(text))
            except ValueError:
                return
        return
    if isinstance(document, list):
        for item in document:
            yield from graphs_in_document(item)
        return
    if not isinstance(document, dict):
        return
    values = list(document.values())
    if values and all(isinstance(v, dict) and "class_type" in v for v in values):
        yield document
        return
    for value in values:
        yield from graphs_in_document(value)


def model_names_in_file(path: Path) -> list[tuple[str, str]]:
    """(folder, name) of the models every graph in a JSON file names (a workflow, an app settings file)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the model names of {path}: {exc}") from None
    return [pair for graph in graphs_in_document(document) for pair in model_names_in(graph)]


class ModelShelf:
    """The names each model folder offers, in the order they were first asked for."""

    def __init__(self, models: Mapping[str, Iterable[str]] | None = None, *, withhold_first: bool = False):
        self._names: dict[str, list[str]] = {folder: [] for folder in MODEL_FOLDERS}
        self._withhold_first = withhold_first
        self.withheld: str | None = None  # missing-model (every scene): the name taken away
        for folder, names in (models or {}).items():
            for name in names:
                self._names.setdefault(folder, [])
                if name not in self._names[folder]:
                    self._names[folder].append(name)

    def offer(self, folder: str) -> list[str]:
        """What ``/models/<folder>`` and the loaders' choices list."""
        withheld = self.withheld
        names = self._names.get(folder, [])
        if withheld is None:
            return list(names)
        return [n for n in names if same_name_key(n) != same_name_key(withheld)]

    def has(self, folder: str, name: str) -> bool:
        key = same_name_key(name)
        return any(same_name_key(n) == key for n in self.offer(folder))

    def learn(self, pairs: Iterable[tuple[str, str]], *, except_names: Iterable[str] = ()) -> None:
        """Offer every (folder, name) from now on (the first one is withheld under missing-model)."""
        skipped = {same_name_key(n) for n in except_names}
        for folder, name in pairs:
            if self._withhold_first and self.withheld is None:
                self.withheld = name
            if same_name_key(name) in skipped:
                continue
            names = self._names.setdefault(folder, [])
            if not any(same_name_key(n) == same_name_key(name) for n in names):
                names.append(name)
