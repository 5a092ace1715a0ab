"""What a node implementation sees of the prompt it runs in, and where implementations register.

Node modules depend on this interface, not on ``execution``: the worker imports the nodes, the nodes
never import the worker (no import circle).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pytest_gemdirect.sim.comfyui.errors import NodeFailure
from pytest_gemdirect.sim.comfyui.state import ComfyUIState


class NodeRun(Protocol):
    """One prompt's execution, as a node implementation uses it (``execution.Run`` is one)."""

    state: ComfyUIState
    prompt: dict[str, Any]
    prompt_id: str
    extra_data: dict[str, Any]
    client_id: str | None
    progress_nodes: dict[str, dict[str, Any]]
    fail_this: bool

    def fault(self, name: str) -> bool: ...
    def check_interrupt(self) -> None: ...
    async def stall(self) -> None: ...
    async def midpoint(self) -> None: ...
    async def progress(self, node_id: str, value: int, max_: int) -> None: ...
    async def send_progress_state(self) -> None: ...
    def progress_entry(self, node_id: str, value: Any, max_: Any, state: str) -> dict[str, Any]: ...
    def simulated_failure(self, node_id: str) -> NodeFailure: ...


NodeResult = tuple[tuple[Any, ...], dict[str, Any] | None]
NodeImpl = Callable[[NodeRun, str, dict[str, Any]], Awaitable[NodeResult]]
NODE_IMPLS: dict[str, NodeImpl] = {}


def register_node(*names: str) -> Callable[[NodeImpl], NodeImpl]:
    """Make the decorated coroutine the implementation of the node classes ``names``."""

    def register(fn: NodeImpl) -> NodeImpl:
        for name in names:
            NODE_IMPLS[name] = fn
        return fn

    return register
