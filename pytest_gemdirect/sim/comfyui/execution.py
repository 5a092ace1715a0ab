"""Running a queued prompt the way ComfyUI 0.3.64 does: order, cache, messages, history entry.

``serve_queue`` is the worker; ``Run`` executes one prompt node by node, sending the WebSocket
messages in the recorded order, and is where the generation faults strike.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import traceback
from typing import Any

from aiohttp import web

from pytest_gemdirect.sim.comfyui.behaviours import implementation
from pytest_gemdirect.sim.comfyui.catalog import recorded_object_info
from pytest_gemdirect.sim.comfyui.errors import (
    Abandon,
    Crash,
    Interrupted,
    NodeFailure,
    sampler_traceback,
)
from pytest_gemdirect.sim.comfyui.graph import ExecutionList, is_link, scene_of, signatures
from pytest_gemdirect.sim.comfyui.latents import SAMPLER_CLASSES
from pytest_gemdirect.sim.comfyui.state import STATE_KEY, CacheEntry, ComfyUIState
from pytest_gemdirect.sim.comfyui.stats import said_execution
from pytest_gemdirect.sim.comfyui.values import describe

log = logging.getLogger("pytest_gemdirect.sim.comfyui")


def now_ms() -> int:
    return int(time.time() * 1000)


async def serve_queue(state: ComfyUIState) -> None:
    """The worker: run queued prompts one at a time, in queue order, until cancelled."""
    assert state.wakeup is not None
    while True:
        while not state.queue:
            state.wakeup.clear()
            await state.wakeup.wait()
        if state.free_memory_pending:
            state.cache.clear()
            state.free_memory_pending = False
        _, _, item = heapq.heappop(state.queue)
        task_id = state.task_counter
        state.task_counter += 1
        state.currently_running[task_id] = item
        said_execution("start", item[1], state.requests)
        await state.queue_updated()
        try:
            await _process(state, task_id, item)
        except asyncio.CancelledError:
            raise
        except Crash:
            return
        except Exception:
            log.exception("gemdirect ComfyUI simulator: internal error while running %s", item[1])
            state.currently_running.pop(task_id, None)
            state.unsilence(item[1])
            state.job_running = False
        said_execution("end", item[1], state.requests)


async def _process(state: ComfyUIState, task_id: int, item: tuple[Any, ...]) -> None:
    prompt_id = item[1]
    run = Run(state, item)
    state.client_id = item[3].get("client_id")
    state.interrupt_flag = False
    if state.interrupt_event is not None:
        state.interrupt_event.clear()
    state.job_running = True
    try:
        outcome = await run.execute()
    except Abandon:
        # history-never: the prompt simply vanishes after `executed` (the 2025-11-11 hang).
        state.currently_running.pop(task_id, None)
        state.last_node_id = None
        state.unsilence(prompt_id)
        return
    finally:
        state.job_running = False
    state.last_node_id = None
    entry = run.history_entry(outcome)
    state.currently_running.pop(task_id, None)
    late = run.fault("history-late")
    if not late:
        state.store_history(prompt_id, entry)
    await state.queue_updated()
    if state.client_id is not None:
        await state.send("executing", {"node": None, "prompt_id": prompt_id}, state.client_id)
    if late:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(state.history_late_seconds, state.store_history, prompt_id, entry)
        state.late_handles = [h for h in state.late_handles if not h.cancelled()]
        state.late_handles.append(handle)
    state.unsilence(prompt_id)


async def start_worker(app: web.Application) -> None:
    """aiohttp on_startup hook (after the state's): the worker runs for the application's life."""
    state = app[STATE_KEY]
    state.worker_task = asyncio.get_running_loop().create_task(serve_queue(state))


class Run:
    """One execution of one queued prompt."""

    def __init__(self, state: ComfyUIState, item: tuple[Any, ...]) -> None:
        self.state = state
        self.item = item
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item[:5]
        self.client_id: str | None = self.extra_data.get("client_id")
        self.scene = scene_of(self.prompt)
        self.messages: list[list[Any]] = []
        self.progress_nodes: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.values: dict[str, tuple[Any, ...]] = {}
        self.info = recorded_object_info()
        self.has_sampler = any(
            isinstance(n, dict) and n.get("class_type") in SAMPLER_CLASSES for n in self.prompt.values()
        )
        self.midpoint_done = False
        self.fail_this = False
        self.current_node: str | None = None
        self.sigs: dict[str, str] = {}

    def resolve(self, value: Any) -> Any:
        """An input value: a link resolves to the linked node's output (this run's, or the cache's)."""
        if not is_link(value):
            return value
        from_id, slot = value
        outputs = self.values.get(from_id)
        if outputs is None:
            cached = self.state.cache.get(self.sigs.get(from_id, ""))
            outputs = cached.outputs if cached is not None else None
        if outputs is None:
            return value
        try:
            return outputs[slot]
        except (IndexError, TypeError):
            return value

    def fault(self, name: str) -> bool:
        return self.state.faults.active(name, self.scene)

    def is_output(self, node_id: str) -> bool:
        class_type = self.prompt[node_id].get("class_type")
        return bool(self.info.get(class_type, {}).get("output_node"))

    # ------------------------------------------------------------------ messages
    async def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            await self.state.send(event, data, self.client_id)

    def progress_entry(self, node_id: str, value: Any, max_: Any, state: str) -> dict[str, Any]:
        return {
            "value": value,
            "max": max_,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def send_progress_state(self) -> None:
        nodes = {k: dict(v) for k, v in self.progress_nodes.items()}
        await self.state.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    async def start_progress(self, node_id: str) -> None:
        self.progress_nodes[node_id] = self.progress_entry(node_id, 0.0, 1.0, "running")
        await self.send_progress_state()

    async def progress(self, node_id: str, value: int, max_: int) -> None:
        """A progress-bar tick: progress_state, then the legacy ``progress`` message."""
        entry = self.progress_nodes.setdefault(node_id, self.progress_entry(node_id, 0, 1, "running"))
        entry.update(value=value, max=max_, state="running")
        await self.send_progress_state()
        await self.state.send(
            "progress",
            {"value": value, "max": max_, "prompt_id": self.prompt_id, "node": node_id},
            self.client_id,
        )

    async def finish_progress(self, node_id: str) -> None:
        entry = self.progress_nodes.setdefault(node_id, self.progress_entry(node_id, 0, 1, "running"))
        entry.update(value=entry["max"], state="finished")
        await self.send_progress_state()

    def check_interrupt(self) -> None:
        if self.state.interrupt_flag:
            raise Interrupted()

    async def stall(self) -> None:
        """stall: never finish until interrupted (or the server stops)."""
        event = self.state.interrupt_event
        assert event is not None
        while not self.state.interrupt_flag:
            await event.wait()
        raise Interrupted()

    async def midpoint(self) -> None:
        """Mid-generation: where ws-drop and crash strike."""
        if self.midpoint_done:
            return
        self.midpoint_done = True
        if self.fault("ws-drop"):
            await self.state.drop_client(self.client_id)
        if self.fault("crash"):
            await self.state.crash()

    def simulated_failure(self, node_id: str) -> NodeFailure:
        name = "execution-error" if self.fault("execution-error") else "flaky"
        return NodeFailure(
            "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
            f"[gemdirect-sim: simulated failure, fault '{name}'"
            + (f" for {self.scene}" if self.scene else "")
            + "]",
            "torch.OutOfMemoryError",
            sampler_traceback(),
        )

    # ------------------------------------------------------------------ execute
    async def execute(self) -> str:
        state = self.state
        key = self.scene
        state.attempts[key] = state.attempts.get(key, 0) + 1
        self.fail_this = self.fault("execution-error") or (self.fault("flaky") and state.attempts[key] == 1)
        await self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        sigs = await state.offload(signatures, self.prompt, state.annotated_filepath)
        self.sigs = sigs
        wanted = set(sigs.values())
        state.cache = {k: v for k, v in state.cache.items() if k in wanted}
        cached_nodes = [n for n in self.prompt if sigs[n] in state.cache]
        await self.add_message(
            "execution_cached", {"nodes": cached_nodes, "prompt_id": self.prompt_id}, False
        )
        current_outputs = list(self.prompt)
        elist = ExecutionList(self.prompt, lambda n: sigs.get(n) in state.cache, self.is_output)
        for node_id in self.outputs:
            elist.add_node(node_id)
        while not elist.is_empty():
            node_id = elist.stage()
            self.current_node = node_id
            try:
                await self.execute_node(node_id)
            except Interrupted:
                mes = {
                    "prompt_id": self.prompt_id,
                    "node_id": node_id,
                    "node_type": self.prompt[node_id]["class_type"],
                    "executed": list(self.executed),
                }
                await self.add_message("execution_interrupted", mes, broadcast=True)
                return "error"
            except NodeFailure as failure:
                await self._execution_error(node_id, failure, current_outputs)
                return "error"
            elist.complete(node_id)
        await self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)
        return "success"

    async def _execution_error(self, node_id: str, failure: NodeFailure, current_outputs: list[str]) -> None:
        current_inputs: dict[str, list[str]] = {}
        for name, value in (self.prompt[node_id].get("inputs") or {}).items():
            current_inputs[name] = [describe(self.resolve(value))]
        tb = failure.tb if failure.tb is not None else traceback.format_tb(failure.__traceback__)
        mes = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
            "exception_message": failure.message,
            "exception_type": failure.exception_type,
            "traceback": tb,
            "current_inputs": current_inputs,
            "current_outputs": current_outputs,
        }
        await self.add_message("execution_error", mes, broadcast=False)

    async def execute_node(self, node_id: str) -> None:
        state = self.state
        node = self.prompt[node_id]
        class_type = node["class_type"]
        cached = state.cache.get(self.sigs[node_id])
        if cached is not None:
            if self.client_id is not None:
                output = cached.ui.get("output") if cached.ui else None
                await state.send(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": output, "prompt_id": self.prompt_id},
                    self.client_id,
                )
                if cached.ui is not None:
                    self.ui_outputs[node_id] = cached.ui
            if self.fault("history-never") and self.is_output(node_id):
                raise Abandon()
            await self.finish_progress(node_id)
            self.values[node_id] = cached.outputs
            return
        await self.start_progress(node_id)
        if self.client_id is not None:
            state.last_node_id = node_id
            await state.send(
                "executing",
                {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                self.client_id,
            )
        self.check_interrupt()
        if not self.has_sampler and self.is_output(node_id):
            # No sampler in the graph: the save node is where the generation "happens".
            await self.midpoint()
            if self.fault("stall"):
                await self.stall()
            if self.fail_this:
                raise self.simulated_failure(node_id)
        inputs = {name: self.resolve(value) for name, value in (node.get("inputs") or {}).items()}
        outputs, ui = await implementation(class_type)(self, node_id, inputs)
        self.values[node_id] = outputs
        ui_entry = None
        if ui:
            ui_entry = {
                "meta": {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                },
                "output": ui,
            }
            self.ui_outputs[node_id] = ui_entry
        state.cache[self.sigs[node_id]] = CacheEntry(outputs, ui_entry)
        self.executed.append(node_id)
        if ui and self.client_id is not None:
            await state.send(
                "executed",
                {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
                self.client_id,
            )
        if self.fault("history-never") and self.is_output(node_id):
            raise Abandon()
        await self.finish_progress(node_id)

    def history_entry(self, outcome: str) -> dict[str, Any]:
        success = outcome == "success"
        return {
            "prompt": list(self.item[:5]),
            "outputs": {k: v["output"] for k, v in self.ui_outputs.items()},
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": self.messages,
            },
            "meta": {k: v["meta"] for k, v in self.ui_outputs.items()},
        }
