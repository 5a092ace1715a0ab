"""pytest-xdist: services booted once by the controller, the pipeline kept on one worker.

Registered only when xdist runs tests in worker processes. Only xdist's public hooks and its
scheduler protocol (``pytest_xdist_make_scheduler``) are used:

- The controller learns from ``pytest_xdist_node_collection_finished`` whether the pipeline was
  collected; only then does it make the run directory, boot the services and write the hand-over
  file whose path every worker was given in ``workerinput``. Workers attach to what it booted.
- :class:`PipelineScheduling` sends the pipeline's tests (and the other tests of the modules that
  hold them) to one worker as one unit, in order; every other test is spread like ``--dist load``.
  xdist's own ``loadgroup`` no longer groups on pytest 9.2 (pytest-dev/pytest-xdist#1386).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gemdirect.pipeline_tests import is_pipeline_test

if TYPE_CHECKING:  # the plugin loads this module wherever xdist is installed: the run's code on use
    from pytest_gemdirect.pytest_plugin.run import Handoff, Run

WORKER_INPUT_KEY = "gemdirect_handoff"
SCHEDULED_DISTS = ("load", "worksteal", "loadgroup")  # the modes PipelineScheduling takes over
PENDING_PER_NODE = 2  # units a worker holds before it asks for more


def is_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to xdist workers."""
    return bool(config.getoption("numprocesses", None)) and not hasattr(config, "workerinput")


def check_dist_mode(config: pytest.Config) -> None:
    """A usage error for ``--dist each``, which would run the whole pipeline once per worker."""
    dist = config.getoption("dist", "no")
    if dist == "each":
        raise pytest.UsageError(
            "pytest-gemdirect: --dist each would run the whole pipeline once per worker;"
            " use -n N with --dist load or loadgroup"
        )


def worker_handoff(config: pytest.Config) -> Callable[[], Handoff | None]:
    """On a worker: reads the controller's hand-over file when the first stage needs it."""
    from pytest_gemdirect.pytest_plugin.run import Handoff

    path = config.workerinput.get(WORKER_INPUT_KEY)  # type: ignore[attr-defined]

    def read() -> Handoff | None:
        if not path:
            return None
        try:
            return Handoff.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError):
            return None

    return read


class XdistController:
    """The controller's part: hand-over, crash accounting, scheduling."""

    def __init__(self, config: pytest.Config, activate: Callable[[], Run]) -> None:
        self.config = config
        self._activate = activate  # makes (once) and returns the controller's Run
        self._handoff_path = Path(tempfile.gettempdir()) / f"gemdirect-handoff-{uuid.uuid4().hex}.json"
        self._run: Run | None = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKER_INPUT_KEY] = str(self._handoff_path)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        if self._run is None and any(is_pipeline_test(nodeid) for nodeid in ids):
            self._run = self._activate()
            dist = self.config.getoption("dist", "no")
            if dist in SCHEDULED_DISTS:
                self._run.note(f"gemdirect: the pipeline's stages run together on one worker (--dist {dist})")
            self._hand_over(self._run)

    def _hand_over(self, run: Run) -> None:
        """Boot the services once, before any test is scheduled, and write what workers attach to."""
        from pytest_gemdirect.pytest_plugin.run import Handoff
        from pytest_gemdirect.rundir import atomic_write_json
        from pytest_gemdirect.services import ServiceError

        directory = run.ensure_directory()
        try:
            backends, error = run.ensure_services().boot_all(), None
        except ServiceError as exc:  # each worker's stage shows it, instead of xdist crashing
            backends, error = {}, str(exc)
        atomic_write_json(
            self._handoff_path, Handoff(directory.root, directory.run_id, backends, error).to_dict()
        )
        run.treat_signals_as_interrupt()
        run.announce_start()  # the SIMULATED and run-directory lines, as without xdist

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist", "no") not in SCHEDULED_DISTS:
            return None
        return PipelineScheduling(config)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        if self._run is not None and is_pipeline_test(crashitem):
            self._run.worker_crashed(crashitem)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._handoff_path.unlink(missing_ok=True)


def unit_of(nodeid: str, pipeline_files: set[str]) -> str:
    """The unit a test is scheduled in: the pipeline's, an ``xdist_group``'s, or its own."""
    if nodeid.split("::", 1)[0] in pipeline_files:
        return "gemdirect"
    if "@" in nodeid.rsplit("::", 1)[-1]:
        return "@" + nodeid.rsplit("@", 1)[1]
    return nodeid


class PipelineScheduling:
    """xdist's scheduler protocol: whole units of tests to one worker each, as workers free up."""

    def __init__(self, config: pytest.Config) -> None:
        numprocesses = config.getoption("numprocesses", None) or 1
        self.numnodes = int(numprocesses) if str(numprocesses).isdigit() else 1
        self.collections: dict[Any, list[str]] = {}
        self.pending: dict[Any, list[int]] = {}  # node -> indexes sent and not yet reported
        self.units: list[list[str]] = []  # not yet sent, in collection order
        self.collection: list[str] | None = None

    @property
    def nodes(self) -> list[Any]:
        return list(self.pending)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.collections) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        return self.collection_is_completed and not self.units and not any(self.pending.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.units) or any(self.pending.values())

    def add_node(self, node: Any) -> None:
        self.pending[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        if self.collection is not None and list(collection) != self.collection:
            return  # a worker that collected differently gets no tests; xdist reports the difference
        self.collections[node] = list(collection)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        self.pending[node].remove(item_index)
        self._fill(node)

    def mark_test_pending(self, item: str) -> None:
        self.units.insert(0, [item])
        for node in self.nodes:
            self._fill(node)

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        raise NotImplementedError("work stealing is not offered by the gemdirect scheduler")

    def remove_node(self, node: Any) -> str | None:
        """A worker ended; a crashed worker's unsent tests go back to the front of the queue."""
        left = self.pending.pop(node)
        if not left:
            return None
        names = [self.collections[node][index] for index in left]
        if names[1:]:
            self.units.insert(0, names[1:])
        for other in self.nodes:
            self._fill(other)
        return names[0]

    def schedule(self) -> None:
        if self.collection is None:
            self.collection = next(iter(self.collections.values()), [])
            self.units = self._units(self.collection)
        for node in self.nodes:
            self._fill(node)

    def _units(self, collection: list[str]) -> list[list[str]]:
        pipeline_files = {nodeid.split("::", 1)[0] for nodeid in collection if is_pipeline_test(nodeid)}
        units: dict[str, list[str]] = {}
        for nodeid in collection:
            units.setdefault(unit_of(nodeid, pipeline_files), []).append(nodeid)
        return list(units.values())

    def _fill(self, node: Any) -> None:
        if node.shutting_down or node not in self.collections:
            return
        if not self.units:
            node.shutdown()  # a worker runs its last queued test only once told there is no more
            return
        while self.units and len(self.pending[node]) < PENDING_PER_NODE:
            unit = self.units.pop(0)
            collection = self.collections[node]
            indexes = [collection.index(nodeid) for nodeid in unit]
            self.pending[node].extend(indexes)
            node.send_runtest_some(indexes)
