"""``ComfyUISimulator``: the simulated ComfyUI server on a real port, in a background thread."""

from __future__ import annotations

import shutil
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
    ) -> None:
        """``models``: ``{folder: names}`` the server has besides ``checkpoints``; ``models_from``:
        JSON files (workflows, an app settings file) whose graphs' model names it has too. Any
        prompt's model names are added as it is queued, so these matter for a check made before."""
        self._own_root = root_dir is None
        root = Path(tempfile.mkdtemp(prefix="gemdirect-comfyui-")) if root_dir is None else Path(root_dir)
        self.state = ComfyUIState(
            root,
            step_seconds=step_seconds,
            faults=faults,
            history_late_seconds=history_late_seconds,
            checkpoints=checkpoints,
            models=models,
            models_from=models_from,
            crash_exits_process=crash_exits_process,
        )
        self.crashed = threading.Event()
        self.state.on_crash = self._on_crash
        state = self.state
        self._server = ServerThread(
            lambda: create_comfyui_app(state), host, port, name="gemdirect-comfyui-sim"
        )
        self._finalizer = weakref.finalize(self, _cleanup_root, root, self._own_root)

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
        self._server.stop(timeout)
        if self._own_root:
            self._finalizer()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once the server thread has ended (after stop() or a simulated crash)."""
        return self._server.wait_stopped(timeout)

    def _on_crash(self) -> None:
        self.crashed.set()
        self._server.stop()

    def __enter__(self) -> ComfyUISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cleanup_root(root: Path, own: bool) -> None:
    if own:
        shutil.rmtree(root, ignore_errors=True)
