"""Where ComfyUI and the LLM come from (design §3): attach to URLs, launch, or the embedded simulators.

ComfyUI may be a pool of servers: several ``--comfyui-url``, one launched ComfyUI per GPU
(``--comfyui-dir`` with ``--comfyui-gpus``), or ``--sim-servers K`` simulators. A server that
cannot be started is left out with a warning while others remain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_gemdirect.cmdline import split_args
from pytest_gemdirect.deadline import Deadline
from pytest_gemdirect.processes import log_tail
from pytest_gemdirect.services.embedded import SimulatorFailed, SimulatorProcess, start_simulators
from pytest_gemdirect.services.launcher import ComfyLaunch, LaunchError, describe_exit, probe_system_stats
from pytest_gemdirect.settings import Settings

if TYPE_CHECKING:
    from pytest_gemdirect.replay.recorder import Recorder
    from pytest_gemdirect.replay.target import ReplayProcess


class ServiceError(Exception):
    """A service could not be booted or reached; the message names the setting to change."""


@dataclass
class Backend:
    """One service as the run uses it."""

    name: str  # "comfyui" | "llm"
    target: str  # "embedded" | "attached" | "launched" | "replayed"
    url: str
    simulated: bool
    pid: int | None = None
    log: str | None = None
    version: str | None = None
    replayed: dict[str, Any] | None = None  # a replay: the recorded run it comes from (replay.trace.origin)
    # False as soon as a process the harness started for it has died; attached (or handed over by
    # the xdist controller): only the server can tell, so it counts as alive
    alive: Callable[[], bool] = field(default=lambda: True, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """What a worker is handed (everything but the liveness check, which is this process's)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "alive"}


RESTARTS_SETTING = "--max-server-restarts"
RETURN_WAIT_SETTING = "--server-return-wait"
CAUSE_LOG_LINES = 15  # lines of a dead server's log kept as the cause of the attempt it cost
_RETURN_PROBE_S = 0.5  # between looks at a server that went away


@dataclass
class Recovery:
    """What became of a ComfyUI server that went away mid-run.

    ``how``: ``relaunched`` (the harness started it again), ``returned`` (it answered again within
    ``--server-return-wait``) or ``lost``; ``cause``: what is known of its death (exit code, the
    last lines of its log); ``detail``: the outcome in words, naming the setting that bounded it.
    """

    url: str
    how: str
    seconds: float
    detail: str
    cause: dict[str, Any]
    log: str | None = None  # a relaunched server's new log

    @property
    def back(self) -> bool:
        return self.how != "lost"

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
        self._sims: list[SimulatorProcess] = []
        self._launches: dict[str, ComfyLaunch] = {}  # by URL
        self._replay: ReplayProcess | None = None
        self._recorder: Recorder | None = None
        self._recording = settings.record and settings.replay is None
        self.left_out: list[str] = []  # servers left out at start-up, in words
        self._relaunches: dict[str, int] = {}  # by URL
        self._launcher: ThreadPoolExecutor | None = None  # one long-lived thread starts relaunches
        self._launch_lock = threading.Lock()
        self._closing = threading.Event()
        # Under xdist the controller owns the services and hands each worker the backends it booted.
        handed = handed or {}
        self._llm: Backend | None = Backend(**handed["llm"]) if handed.get("llm") else None
        pool = handed.get("comfyui")
        self._pool: list[Backend] | None = [Backend(**b) for b in pool] if pool else None

    # --- public --------------------------------------------------------------------------

    @property
    def recorder(self) -> Recorder | None:
        """The run's trace (made on first use, by the process that runs the stages); None: not recorded."""
        if self._recorder is None and self._recording:
            from pytest_gemdirect.replay.target import start_recorder

            self._recorder = start_recorder(self.settings, self.run_root)
            for backend in [*(self._pool or []), *([self._llm] if self._llm else [])]:
                self._recorder_note(backend)
        return self._recorder

    def _recorder_note(self, backend: Backend) -> None:
        if self._recorder is not None:
            self._recorder.backend(backend.to_dict())

    def comfyui_pool(self) -> list[Backend]:
        """Every ComfyUI server of the run, booted or attached now (in the order given)."""
        if self._pool is None:
            self._refuse_if_handed_error()
            self._pool = self._boot_pool()
            for backend in self._pool:
                self._recorder_note(backend)
        return self._pool

    def llm(self) -> Backend:
        if self._llm is None:
            self._refuse_if_handed_error()
            if self.settings.replay is not None:
                urls = self._replayer().urls
                self._llm = Backend(
                    "llm", "replayed", urls["llm_url"], True, urls.get("pid"), urls.get("log")
                )
                self._llm.replayed = urls["origin"]
                return self._llm
            if self.settings.llm_url:
                self._llm = Backend("llm", "attached", self.settings.llm_url, simulated=False)
            else:
                urls = self._simulators("llm")[0].urls
                self._llm = Backend(
                    "llm", "embedded", urls["llm_url"], True, urls.get("pid"), urls.get("log")
                )
            self._recorder_note(self._llm)
        return self._llm

    def death_cause(self, url: str) -> dict[str, Any]:
        """What is known of why the server at ``url`` went away: a process the harness started
        has an exit code and a log; an attached one only its silence."""
        launch = self._launches.get(url)
        sim = next((x for x in self._sims if x.urls.get("comfyui_url") == url), None)
        popen = launch.popen if launch is not None and not launch.attached else sim.popen if sim else None
        log = launch.log_path if launch is not None else sim.log_path if sim else None
        code = popen.poll() if popen is not None else None
        return {
            "exit_code": code,
            "exit": describe_exit(code) if code is not None else None,
            "log": str(log) if log is not None else None,
            "log_tail": log_tail(log, CAUSE_LOG_LINES) if log is not None and log.is_file() else None,
        }

    def recover(self, url: str, *, stopped: Callable[[], str | None]) -> Recovery:
        """Bring the server at ``url`` back: a launched ComfyUI is relaunched (up to
        ``--max-server-restarts``), any other is waited for (``--server-return-wait``).

        Blocks; call it from a thread that lives as long as the run (a relaunch is started from the
        launcher thread, so the new process is not tied to a thread that ends)."""
        started = time.monotonic()
        cause = self.death_cause(url)
        launch = self._launches.get(url)
        if launch is not None and not launch.attached:
            return self._relaunch(url, launch, cause, started)
        return self._await_return(url, cause, started, stopped)

    def comfyui_launched_locally(self) -> bool:
        return any(not launch.attached for launch in self._launches.values())

    def boot_all(self) -> dict[str, Any]:
        """Boot or attach every service now; what the xdist controller hands its workers."""
        return {
            "llm": self.llm().to_dict(),
            "comfyui": [backend.to_dict() for backend in self.comfyui_pool()],
        }

    def close(self) -> None:
        """End what the harness started, whole process trees (also after Ctrl-C)."""
        self._closing.set()
        for launch in self._launches.values():
            launch.stop()
        if self._launcher is not None:
            self._launcher.shutdown(wait=False, cancel_futures=True)
        for launch in self._launches.values():  # one relaunched while the first stop ran
            launch.stop()
        self._launches.clear()
        if len(self._sims) > 1:  # side by side: each may take its grace to end
            with ThreadPoolExecutor(max_workers=len(self._sims)) as pool:
                list(pool.map(SimulatorProcess.stop, self._sims))
        for sim in self._sims:
            sim.stop()
        self._sims.clear()
        if self._replay is not None:
            self._replay.stop()
            self._replay = None
        if self._recorder is not None:
            from pytest_gemdirect.replay.target import remove_empty_trace

            self._recorder.close()
            remove_empty_trace(self.run_root)

    # --- internals -----------------------------------------------------------------------

    def _refuse_if_handed_error(self) -> None:
        if self.handed_error:
            raise ServiceError(self.handed_error)

    def _boot_pool(self) -> list[Backend]:
        s = self.settings
        if s.replay is not None:
            urls = self._replayer().urls
            return [
                Backend(
                    "comfyui",
                    "replayed",
                    url,
                    True,
                    urls.get("pid"),
                    urls.get("log"),
                    replayed=urls["origin"],
                )
                for url in urls["comfyui_urls"]
            ]
        if s.comfyui_url:
            return [Backend("comfyui", "attached", url, simulated=False) for url in s.comfyui_url]
        if s.comfyui_dir:
            return self._launch_pool()
        sims = self._simulators("comfyui")
        return [
            Backend(
                "comfyui",
                "embedded",
                sim.urls["comfyui_url"],
                True,
                sim.urls.get("pid"),
                sim.urls.get("log"),
                alive=sim.alive,
            )
            for sim in sims
        ]

    def _replayer(self) -> ReplayProcess:
        """The replay server of --replay (one process for ComfyUI and the LLM), started on first use."""
        from pytest_gemdirect.replay.trace import TraceError, load_trace, origin

        if self.settings.require_real_backends:
            raise ServiceError(
                f"the servers would be REPLAYED from {self.settings.replay}, but require_real_backends"
                " is set; a replay is not a real backend: drop --replay or point the URLs at real servers"
            )
        if self._replay is None:
            from pytest_gemdirect.replay.target import start_replay

            try:
                assert self.settings.replay is not None
                found = origin(load_trace(self.settings.replay))
                self._replay = start_replay(self.settings, self.run_root)
            except (SimulatorFailed, TraceError) as exc:
                raise ServiceError(f"replay ({self.settings.sources['replay']}): {exc}") from None
            self._replay.urls["origin"] = found
        return self._replay

    def _simulators(self, name: str) -> list[SimulatorProcess]:
        if self.settings.require_real_backends:
            raise ServiceError(
                f"{name} would be the embedded simulator, but require_real_backends is set;"
                f" point --{name}-url at a real server"
            )
        if not self._sims:
            try:
                self._sims = start_simulators(self.settings, self.run_root, self.settings.sim_servers)
            except SimulatorFailed as exc:
                raise ServiceError(str(exc)) from None
        return self._sims

    def _launch_pool(self) -> list[Backend]:
        """One ComfyUI per GPU (or one, on the default device), booted one after another.

        From this (the main) thread: a launched child is tied to the thread that started it (the
        parent-death signal on Linux fires when that thread ends), so a pool thread would take
        its ComfyUI with it. On Ctrl-C every launch is ended.
        """
        gpus: list[int | None] = list(self.settings.comfyui_gpus) or [None]
        launches = [self._new_launch(gpu, index) for index, gpu in enumerate(gpus)]
        try:
            outcomes = [self._start(launch, gpu) for launch, gpu in zip(launches, gpus, strict=True)]
        except BaseException:
            for launch in launches:
                launch.stop()
            raise
        backends = [backend for backend, _ in outcomes if backend is not None]
        failures = [why for _, why in outcomes if why is not None]
        if not backends:
            raise ServiceError("; ".join(failures))
        self.left_out += failures
        return backends

    def _new_launch(self, gpu: int | None, index: int) -> ComfyLaunch:
        s = self.settings
        assert s.comfyui_dir is not None, "launches happen only with --comfyui-dir"
        extra = split_args(s.comfyui_args, what="--comfyui-args")
        if gpu is not None:
            extra += ["--cuda-device", str(gpu)]
        return ComfyLaunch(
            s.comfyui_dir,
            python=s.comfyui_python,
            port=s.comfyui_port + index if s.comfyui_port else None,
            extra_args=extra,
            log_path=self.run_root / ("comfyui.log" if gpu is None else f"comfyui-gpu{gpu}.log"),
            boot_timeout_s=s.comfyui_boot_timeout,
            # a stand-in install (tests/fake_comfyui) runs the simulator: --sim-fault reaches it here
            env={"GEMDIRECT_LAUNCHED_SIM_FAULTS": ",".join(s.faults.specs())} if s.faults else None,
        )

    def _start(self, launch: ComfyLaunch, gpu: int | None) -> tuple[Backend | None, str | None]:
        try:
            url = launch.start()
        except LaunchError as exc:
            where = "ComfyUI" if gpu is None else f"ComfyUI on GPU {gpu}"
            return None, f"{where} was left out: {exc}"
        self._launches[url] = launch
        if launch.attached:
            return Backend("comfyui", "attached", url, simulated=False, alive=launch.alive), None
        return Backend(
            "comfyui",
            "launched",
            url,
            simulated=False,
            pid=launch.pid,
            log=str(launch.log_path),
            alive=launch.alive,
        ), None

    def _relaunch(self, url: str, launch: ComfyLaunch, cause: dict[str, Any], started: float) -> Recovery:
        used = self._relaunches.get(url, 0)
        allowed = int(self.settings.max_server_restarts)
        died = f"the ComfyUI launched from {launch.comfyui_dir} at {url} died" + (
            f" (exit code {cause['exit']})" if cause.get("exit") else ""
        )
        if used >= allowed or self._closing.is_set():
            detail = f"{died}; not relaunched: {used} relaunch(es) so far ({RESTARTS_SETTING} = {allowed})"
            return Recovery(url, "lost", _since(started), detail, cause)
        self._relaunches[url] = used + 1
        log_path = _numbered_log(launch.log_path, used + 2)
        with self._launch_lock:
            if self._launcher is None:
                self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemdirect-launcher")
            launcher = self._launcher
        try:
            launcher.submit(launch.relaunch, log_path).result()
        except LaunchError as exc:
            detail = f"{died}; relaunch {used + 1} of {allowed} failed: {exc}"
            return Recovery(url, "lost", _since(started), detail, cause, str(log_path))
        except RuntimeError as exc:  # the launcher was shut down: the run is ending
            return Recovery(url, "lost", _since(started), f"{died}; not relaunched: {exc}", cause)
        seconds = _since(started)
        detail = (
            f"{died}; relaunched ({used + 1} of {RESTARTS_SETTING} = {allowed}) in {seconds:.1f} s,"
            f" pid {launch.pid}, its log {log_path.name}"
        )
        return Recovery(url, "relaunched", seconds, detail, cause, str(log_path))

    def _await_return(
        self, url: str, cause: dict[str, Any], started: float, stopped: Callable[[], str | None]
    ) -> Recovery:
        wait = float(self.settings.server_return_wait)
        deadline = Deadline(wait, setting=RETURN_WAIT_SETTING)
        while not deadline.expired():
            why = stopped() or ("the run is ending" if self._closing.is_set() else None)
            if why is not None:
                detail = f"the ComfyUI server at {url} went away; no longer waited for: {why}"
                return Recovery(url, "lost", _since(started), detail, cause)
            state, _ = probe_system_stats(url, read_timeout=max(0.1, deadline.timeout(2.0)))
            if state == "comfyui":
                seconds = _since(started)
                detail = f"the ComfyUI server at {url} went away and answered again after {seconds:.1f} s"
                return Recovery(url, "returned", seconds, detail, cause)
            self._closing.wait(deadline.timeout(_RETURN_PROBE_S))
        detail = (
            f"the ComfyUI server at {url} went away and did not answer again within"
            f" {wait:g} s ({RETURN_WAIT_SETTING} = {wait:g})"
        )
        return Recovery(url, "lost", _since(started), detail, cause)


def _numbered_log(path: Path, number: int) -> Path:
    """``comfyui.log`` -> ``comfyui-2.log`` (the log of the second process on that server)."""
    return path.with_name(f"{path.stem}-{number}{path.suffix}")


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
