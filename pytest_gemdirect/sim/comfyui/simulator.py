"""``ComfyUISimulator``: the simulated ComfyUI server on a real port, in a background thread."""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pytest_gemdirect.sim.comfyui.constants import DEFAULT_CHECKPOINTS
from pytest_gemdirect.sim.comfyui.http import create_comfyui_app
from pytest_gemdirect.sim.comfyui.state import ComfyUIState
from pytest_gemdirect.sim.faults import FaultPlan
from pytest_gemdirect.sim.server import ServerThread


class ComfyUISimulator:
    """The embedded ComfyUI simulator on a real port, in a background thread.

    >>> with ComfyUISimulator(faults=FaultPlan.parse(["stall@scene-002"])) as sim:
    ...     requests.get(sim.url + "/system_stats").json()
    """

    def __init__(  # noqa: PLR0913 - the simulator's knobs, each with a default (host, port, faults, pace, models…)
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        root_dir: Path | None = None,
        step_seconds: float = 0.01,
        faults: FaultPlan | None = None,
        history_late_seconds: float = 3.0,
        checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
        models: Mapping[str, Iterable[str]] | None = None,
        models_from: Iterable[Path | str] = (),
        crash_exits_process: bool = False,
        restart_exits_process: bool = False,
    ) -> None:
        """``models``: ``{folder: names}`` the server has besides ``checkpoints``; ``models_from``:
        JSON files (workflows, an app settings file) whose graphs' model names it has too. Any
        prompt's model names are added as it is queued, so these matter for a check made before."""
        self._own_root = root_dir is None
        root = Path(tempfile.mkdtemp(prefix="gemdirect-comfyui-")) if root_dir is None else Path(root_dir)
        self._make_state = functools.partial(
            ComfyUIState,
            step_seconds=step_seconds,
            faults=faults,
            history_late_seconds=history_late_seconds,
            checkpoints=checkpoints,
            models=models,
            models_from=models_from,
            crash_exits_process=crash_exits_process,
            restart_exits_process=restart_exits_process,
        )
        self._host = host
        self.state = self._new_state(root)
        self.crashed = threading.Event()
        self.restarts = 0  # times the supervisor started the server again (crash-restart, restart-between)
        self._stopping = threading.Event()
        self._server = self._new_server(port)
        self._finalizer = weakref.finalize(self, _cleanup_root, root, self._own_root)

    def _new_state(self, root: Path) -> ComfyUIState:
        state = self._make_state(root)
        state.on_crash = self._on_crash
        return state

    def _new_server(self, port: int) -> ServerThread:
        state = self.state
        return ServerThread(lambda: create_comfyui_app(state), self._host, port, name="gemdirect-comfyui-sim")

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def faults(self) -> FaultPlan:
        return self.state.faults

    @property
    def root_dir(self) -> Path:
        return self.state.root_dir

    @property
    def input_dir(self) -> Path:
        return self.state.input_dir

    @property
    def output_dir(self) -> Path:
        return self.state.output_dir

    def start(self, timeout: float = 15.0) -> ComfyUISimulator:
        self._server.start(timeout)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        self._server.stop(timeout)
        if self._own_root:
            self._finalizer()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once the server thread has ended (after stop() or a simulated crash)."""
        return self._server.wait_stopped(timeout)

    def _on_crash(self, restart_after: float | None = None) -> None:
        self.crashed.set()
        self._server.stop()
        if restart_after is not None:
            sys.stderr.write(f"gemdirect simulator: ComfyUI goes down now, back in {restart_after:g} s\n")
            sys.stderr.flush()
        if restart_after is not None and not self._stopping.is_set():
            threading.Thread(
                target=self._restart, args=(restart_after,), name="gemdirect-comfyui-supervisor", daemon=True
            ).start()

    def _restart(self, delay: float) -> None:
        """The supervisor: the same port and folders after ``delay`` s, a fresh server (an empty
        queue and history, new sessions), the outputs on disk still served."""
        old, port = self._server, self._server.port or 0
        old.wait_stopped(10.0)
        if self._stopping.wait(delay):
            return
        requests = self.state.requests
        self.state = self._new_state(self.state.root_dir)
        self.state.requests = requests  # the counts cover the whole run
        self._server = self._new_server(port)
        self._server.start()
        self.restarts += 1
        self.crashed.clear()
        sys.stderr.write(f"gemdirect simulator: ComfyUI started again on port {port} ({self.restarts})\n")
        sys.stderr.flush()

    def __enter__(self) -> ComfyUISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cleanup_root(root: Path, own: bool) -> None:
    if own:
        shutil.rmtree(root, ignore_errors=True)
