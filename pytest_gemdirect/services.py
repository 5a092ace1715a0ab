"""Where ComfyUI and the LLM come from (design §3): attach to a URL, or boot the embedded simulator.

The embedded simulator runs as a child process (``python -m pytest_gemdirect.sim``), so a
simulated crash is a real dead process and the harness's handling of one is the real code path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_gemdirect.cmdline import split_args
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.launcher import ComfyLaunch, LaunchError
from pytest_gemdirect.processes import kill_tree, launch_logged, log_tail
from pytest_gemdirect.settings import Settings

EMBEDDED_BOOT_TIMEOUT_S = 30.0


class ServiceError(Exception):
    """A service could not be booted or reached; the message names the setting to change."""


@dataclass
class Backend:
    """One service as the run uses it."""

    name: str  # "comfyui" | "llm"
    target: str  # "embedded" | "attached" | "launched"
    url: str
    simulated: bool
    pid: int | None = None
    log: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Services:
    """Boots or attaches each service on first use, and ends what it started at close()."""

    def __init__(
        self,
        settings: Settings,
        run_root: Path,
        *,
        handed: dict[str, Any] | None = None,
        handed_error: str | None = None,
    ) -> None:
        self.settings = settings
        self.handed_error = handed_error  # the xdist controller could not boot the services
        self.run_root = run_root
        self._sim: subprocess.Popen[bytes] | None = None
        self._sim_urls: dict[str, Any] | None = None
        self._sim_tmp: Path | None = None  # the simulator's own files, removed at close()
        self._launch: ComfyLaunch | None = None
        # Under xdist the controller owns the services and hands each worker the backends it booted.
        self._backends: dict[str, Backend] = {name: Backend(**info) for name, info in (handed or {}).items()}

    # --- public --------------------------------------------------------------------------

    def comfyui(self) -> Backend:
        return self._backend("comfyui", self.settings.comfyui_url)

    def llm(self) -> Backend:
        return self._backend("llm", self.settings.llm_url)

    def comfyui_alive(self) -> bool:
        """False as soon as a ComfyUI process the harness started (simulator or launched) has died."""
        if self._launch is not None:
            return self._launch.alive()
        comfy = self._backends.get("comfyui")
        if self._sim is not None and comfy is not None and comfy.target == "embedded":
            return self._sim.poll() is None
        return True

    def comfyui_launched_locally(self) -> bool:
        return self._launch is not None and not self._launch.attached

    def boot_all(self) -> dict[str, dict[str, Any]]:
        """Boot or attach both services now; what the xdist controller hands its workers."""
        return {
            name: backend.to_dict() for name, backend in (("comfyui", self.comfyui()), ("llm", self.llm()))
        }

    def close(self) -> None:
        """End what the harness started, whole process trees (also after Ctrl-C)."""
        if self._launch is not None:
            self._launch.stop()
            self._launch = None
        if self._sim is not None:
            kill_tree(self._sim, grace_s=3.0)
            self._sim = None
        if self._sim_tmp is not None:
            shutil.rmtree(self._sim_tmp, ignore_errors=True)
            self._sim_tmp = None

    # --- internals -----------------------------------------------------------------------

    def _backend(self, name: str, url: str | None) -> Backend:
        if name in self._backends:
            return self._backends[name]
        if self.handed_error:
            raise ServiceError(self.handed_error)
        if url:
            backend = Backend(name, "attached", url, simulated=False)
        elif name == "comfyui" and self.settings.comfyui_dir:
            backend = self._launch_comfyui()
        else:
            if self.settings.require_real_backends:
                raise ServiceError(
                    f"{name} would be the embedded simulator, but require_real_backends is set;"
                    f" point --{name}-url at a real server"
                )
            urls = self._embedded()
            backend = Backend(
                name,
                "embedded",
                urls[f"{name}_url"],
                simulated=True,
                pid=urls.get("pid"),
                log=urls.get("log"),
            )
        self._backends[name] = backend
        return backend

    def _launch_comfyui(self) -> Backend:
        s = self.settings
        log_path = self.run_root / "comfyui.log"
        self._launch = ComfyLaunch(
            s.comfyui_dir,
            python=s.comfyui_python,
            port=s.comfyui_port,
            extra_args=split_args(s.comfyui_args, what="--comfyui-args"),
            log_path=log_path,
            boot_timeout_s=s.comfyui_boot_timeout,
        )
        try:
            url = self._launch.start()
        except LaunchError as exc:
            self._launch = None
            raise ServiceError(str(exc)) from None
        if self._launch.attached:
            return Backend("comfyui", "attached", url, simulated=False)
        return Backend("comfyui", "launched", url, simulated=False, pid=self._launch.pid, log=str(log_path))

    def _embedded(self) -> dict[str, Any]:
        if self._sim_urls is None:
            self._sim_urls = self._boot_simulator()
        return self._sim_urls

    def _simulator_root(self) -> Path:
        """Where the simulator keeps its inputs and outputs: a temporary folder, unless asked.

        Its outputs are the frames the harness downloads into the run directory anyway; kept,
        they would double a run directory's size (--sim-keep-files true keeps them).
        """
        if self.settings.sim_keep_files:
            return self.run_root / "simulator"
        self._sim_tmp = Path(tempfile.mkdtemp(prefix="gemdirect-sim-"))
        return self._sim_tmp

    def _boot_simulator(self) -> dict[str, Any]:
        sim_root = self._simulator_root()
        ready_file = sim_root / "ready.json"
        log_path = self.run_root / "simulator.log"
        sim_root.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "pytest_gemdirect.sim",
            "--root",
            str(sim_root),
            "--ready-file",
            str(ready_file),
            "--step-seconds",
            str(self.settings.sim_step_seconds),
            "--seed",
            str(self.settings.llm_seed),
            "--parent-pid",
            str(os.getpid()),
        ]
        for spec in self.settings.faults.specs():
            args += ["--fault", spec]
        self._sim = launch_logged(args, cwd=self.run_root, env_overrides={}, log_path=log_path)
        deadline = Deadline(EMBEDDED_BOOT_TIMEOUT_S)
        while not ready_file.exists():
            try:
                code = self._sim.wait(timeout=deadline.timeout(cap=0.05))
            except subprocess.TimeoutExpired:
                if deadline.expired():
                    self.close()
                    raise ServiceError(
                        f"the embedded simulator did not become ready within {EMBEDDED_BOOT_TIMEOUT_S:g} s;"
                        f" its log ({log_path}) ends:\n{log_tail(log_path)}"
                    ) from None
                continue
            raise ServiceError(
                f"the embedded simulator exited with code {code} while booting; its log ({log_path}) ends:\n"
                f"{log_tail(log_path)}"
            )
        urls: dict[str, Any] = json.loads(ready_file.read_text(encoding="utf-8"))
        urls["log"] = str(log_path)
        return urls
