"""Reading ComfyUI's WebSocket messages (0.3.64): what each one means for our prompt.

:func:`read_message` records a message in the :class:`JobState` and returns an :class:`Effect`
that tells the follower what to do next; it decides nothing about time. Facts it relies on
(see ``shared/reference/comfyui``): ``executed`` is a per-node output event, never completion;
``executing`` with ``node: null`` is sent after the history entry is stored; messages of other
prompts (broadcast when a prompt was queued without a client id) are counted and ignored;
``executing`` without a prompt id comes after a reconnect and names the running node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_gemdirect.comfyui.outputs import list_outputs
from pytest_gemdirect.comfyui.state import JobState
from pytest_gemdirect.net import one_line

FAILURES = ("execution_error", "execution_interrupted")


@dataclass
class Effect:
    """What a message asks of the follower.

    ``event`` holds the fields of its ``ws`` job event, ``t`` when it came (job seconds);
    ``ours`` is false for a message that names no prompt id (legacy or broadcast);
    ``completion`` names the completion signal; ``stored`` means the history entry is stored
    (look now); ``executed`` means outputs were announced (look once if nothing follows);
    ``failure`` is ``execution_error`` / ``execution_interrupted`` with its ``data``;
    ``progress`` is (value, max) of a sampler.
    """

    event: dict[str, Any]
    t: float = 0.0
    ours: bool = True
    look_now: bool = False
    completion: str | None = None
    stored: bool = False
    executed: bool = False
    failure: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    progress: tuple[int, int] | None = None


def _brief(kind: str, data: dict[str, Any], t: float) -> dict[str, Any]:
    """The message as kept in ``last_messages`` (small: type, node, a few figures)."""
    brief: dict[str, Any] = {"t": t, "type": kind}
    if "node" in data:
        brief["node"] = data.get("node")
    if kind == "status":
        remaining = ((data.get("status") or {}).get("exec_info") or {}).get("queue_remaining")
        brief["queue_remaining"] = remaining
    elif kind == "progress":
        brief.update(value=data.get("value"), max=data.get("max"))
    elif kind in FAILURES:
        brief.update(node=data.get("node_id"), node_type=data.get("node_type"))
    return brief


def _event(kind: str, data: dict[str, Any], brief: dict[str, Any]) -> dict[str, Any]:
    """The fields of the ``ws`` job event: small enough for an events.jsonl line."""
    if kind == "progress_state":  # carries every node of the graph: keep the running ones
        nodes = data.get("nodes")
        nodes = nodes if isinstance(nodes, dict) else {}
        running = [k for k, v in nodes.items() if isinstance(v, dict) and v.get("state") == "running"]
        return {"type": kind, "running": running}
    if kind == "execution_error":
        return {
            "type": kind,
            "node": data.get("node_id"),
            "node_type": data.get("node_type"),
            "exception_type": data.get("exception_type"),
            "exception_message": one_line(data.get("exception_message"), 300),
        }
    return {k: v for k, v in brief.items() if k != "t"}


def _progress(state: JobState, data: dict[str, Any], t: float) -> tuple[int, int] | None:
    try:
        value, maximum = int(data.get("value", 0)), int(data.get("max", 0))
    except (TypeError, ValueError):
        return None
    state.progress.append((t, value, maximum))
    state.progress_node = str(data.get("node")) if data.get("node") is not None else state.progress_node
    if state.started_s is None:
        state.started_s = t
    return value, maximum


def _executing(state: JobState, effect: Effect, node: Any, t: float) -> None:
    if node is None:
        effect.completion = "executing{node: null}"
        effect.stored = True
        state.stored_signal_s = state.stored_signal_s if state.stored_signal_s is not None else t
        return
    state.current_node = str(node)
    state.executing_nodes.append(str(node))
    if state.started_s is None:
        state.started_s = t


def _apply(state: JobState, effect: Effect, kind: str, data: dict[str, Any], t: float) -> None:
    """Record a message about our prompt in the state and fill in its effect."""
    if kind == "execution_start":
        state.started_s = state.started_s if state.started_s is not None else t
    elif kind == "execution_cached":
        state.cached_nodes = {str(n) for n in data.get("nodes") or []}
    elif kind == "executing":
        _executing(state, effect, data.get("node"), t)
    elif kind == "progress":
        effect.progress = _progress(state, data, t)
    elif kind == "executed":
        state.announced[str(data.get("node"))] = data.get("output")
        if state.announced_s is None and list_outputs(
            {"outputs": {"n": data.get("output")}}, include_temp=True
        ):
            state.announced_s = t
        effect.executed = True
    elif kind == "execution_success":
        effect.completion = "execution_success"
    elif kind in FAILURES:
        effect.failure = kind
        effect.data = data


def read_message(state: JobState, message: dict[str, Any]) -> Effect | None:
    """Record one text message; None when it is about another prompt (counted, then ignored)."""
    kind = str(message.get("type", "?"))
    raw = message.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    pid = data.get("prompt_id")
    if pid is not None and pid != state.prompt_id:
        state.counts["other_prompt"] += 1
        return None
    state.counts[kind] += 1
    t = state.s()
    brief = _brief(kind, data, t)
    if kind != "progress_state":
        state.last_messages.append(brief)
    effect = Effect(event=_event(kind, data, brief), t=t, ours=pid is not None)
    if pid is None:
        if kind == "executing" and data.get("node") is None:
            effect.look_now = True  # a legacy end-of-prompt without id: look now
        elif kind == "executing":
            state.current_node = str(data.get("node"))  # after a reconnect: the node running now
        return effect
    _apply(state, effect, kind, data, t)
    return effect


__all__ = ["Effect", "read_message"]
