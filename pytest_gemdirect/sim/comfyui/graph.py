"""The prompt graph: links, the scene a prompt belongs to, execution order and cache keys."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from pytest_gemdirect.sim.comfyui.constants import SCENE_RE


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def scene_of(prompt: dict[str, Any]) -> str | None:
    """The scene a prompt belongs to: ``scene-NNN`` in a save node's filename_prefix (else any input)."""
    nodes = [n for n in prompt.values() if isinstance(n, dict)]
    for node in nodes:
        prefix = (node.get("inputs") or {}).get("filename_prefix")
        if isinstance(prefix, str):
            match = SCENE_RE.search(prefix)
            if match:
                return match.group(0)
    for node in nodes:
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, str):
                match = SCENE_RE.search(value)
                if match:
                    return match.group(0)
    return None


class ExecutionList:
    """ComfyUI's ExecutionList: pending nodes, blocking links, UX-friendly pick."""

    def __init__(
        self, prompt: dict[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ):
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}

    def add_node(self, node_unique_id: str) -> None:
        node_ids = [node_unique_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            unique_id = node_ids.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            for value in (self.prompt[unique_id].get("inputs") or {}).values():
                if is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, socket, unique_id))
        for from_id, socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def stage(self) -> str:
        available = [n for n in self.pending if self.block_count[n] == 0]
        if not available:
            raise RuntimeError("dependency cycle in prompt")
        for node_id in available:
            if self.is_output(node_id):
                return node_id
        for node_id in available:
            if any(self.is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in available:
            for blocked in self.blocking[node_id]:
                if any(self.is_output(b) for b in self.blocking.get(blocked, {})):
                    return node_id
        return available[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1


def signatures(
    prompt: dict[str, Any], annotated_filepath: Callable[[str], tuple[str, str]]
) -> dict[str, str]:
    """Structural cache keys (class, inputs, ancestors, IS_CHANGED) like ComfyUI's classic cache."""
    memo: dict[str, str] = {}

    def is_changed(node: dict[str, Any]) -> str:
        if node.get("class_type") == "LoadImage":
            name, folder = annotated_filepath(str((node.get("inputs") or {}).get("image", "")))
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as fh:
                    return hashlib.sha256(fh.read()).hexdigest()
            except OSError:
                return "missing"
        return ""

    def sig(node_id: str, stack: frozenset[str]) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        parts: list[Any] = [node.get("class_type"), is_changed(node)]
        inputs = node.get("inputs") or {}
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value) and value[0] in prompt and value[0] not in stack:
                parts.append([name, "link", sig(value[0], stack | {node_id}), value[1]])
            else:
                parts.append([name, json.dumps(value, sort_keys=True, default=str)])
        digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        memo[node_id] = digest
        return digest

    return {node_id: sig(node_id, frozenset()) for node_id in prompt}
