"""report.html rendered off the critical path: in one background thread that coalesces requests.

Rendering the report is the dearest thing a test ends with; done in the main thread it sits
between one scene's end and the next scene's start while the servers wait. Here a test's end only
hands over the summary as it stands (a JSON snapshot, cheap) and returns; the thread renders the
newest snapshot it has, so ten requests during one render cost one more render, not ten. The run's
end (and a process about to be ended) renders synchronously, after the thread's render in flight,
so the last report.html is always the final state; a run killed half-way keeps the last render.

Ctrl-C raises KeyboardInterrupt in the main thread at whatever bytecode it is running, which may be
inside ``threading.Condition`` (a waiter released and not yet removed: the next notify is lost; its
lock just taken: it stays held). So the main thread's side uses no Condition: the state is guarded
by a plain lock taken only in ``with`` (never held across a wait), a request rings a
``queue.SimpleQueue`` (one C call), the thread also looks for work every :data:`WAKE_SLICE_S`, and
every wait of the run's end is bounded; one that runs out is named in :attr:`ReportWriter.problems`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

Render = Callable[[dict[str, Any]], None]

WAKE_SLICE_S = 0.5
"""The thread looks for a request (or the close) at least this often: a lost wake-up costs no more."""

FLUSH_WAIT_S = 20.0
"""How long the run's end waits for the render in flight before it renders the final state beside it."""

CLOSE_WAIT_S = 5.0
"""How long :meth:`ReportWriter.close` waits for the thread to end."""


class ReportWriter:
    """Renders summaries with ``render``: ``request`` in the background, ``flush`` now."""

    def __init__(self, render: Render) -> None:
        self._render = render
        self._rendering = threading.Lock()  # one render at a time, the thread's or flush's
        self._state = threading.Lock()  # the fields below; taken only in `with`, for no wait
        self._bell = queue.SimpleQueue[None]()  # a request or the close wakes the thread
        self._pending: str | None = None  # the newest snapshot not rendered yet
        self._rendered: str | None = None  # the snapshot report.html shows
        self._flushes = 0  # a snapshot taken before the latest flush is older than what it wrote
        self._thread: threading.Thread | None = None
        self._closed = False
        self.problems: list[str] = []  # a bounded wait of the run's end that ran out, in words

    def request(self, snapshot: str) -> None:
        """Render ``snapshot`` (JSON text of the summary) soon, unless report.html shows it already."""
        with self._state:
            if self._closed or snapshot in (self._rendered, self._pending):
                return
            self._pending = snapshot
            thread = None
            if self._thread is None:
                thread = self._thread = threading.Thread(
                    target=self._work, name="gemdirect-report", daemon=True
                )
        if thread is not None:
            thread.start()
        self._bell.put(None)

    def flush(self, data: dict[str, Any], snapshot: str | None = None) -> None:
        """Render ``data`` now, in the caller's thread, once any render in flight is done (at most
        :data:`FLUSH_WAIT_S`: then beside it, and :attr:`problems` says so).

        What was pending is dropped: ``data`` is newer. Later ``request`` calls still work
        (pytest-timeout's end of a process and the session's end may both flush)."""
        with self._state:
            self._pending = None
            self._flushes += 1
        waited = self._rendering.acquire(timeout=FLUSH_WAIT_S)
        try:
            if not waited:
                self.problems.append(
                    f"report.html: a background render still ran after {FLUSH_WAIT_S:g} s; the final"
                    " state was rendered beside it (if that render ends later, it may overwrite it)"
                )
            self._render(data)
            self._rendered = snapshot
        finally:
            if waited:
                self._rendering.release()

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """No more background renders; waits up to ``timeout_s`` for the thread to end (then
        :attr:`problems` names it: it is a daemon and ends with the process)."""
        with self._state:
            self._closed = True
            self._pending = None
            thread = self._thread
        self._bell.put(None)
        if thread is None or thread is threading.current_thread():
            return
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:  # sliced: a Windows join ignores Ctrl-C
            thread.join(min(WAKE_SLICE_S, max(0.0, deadline - time.monotonic())))
        if thread.is_alive():
            self.problems.append(
                f"report.html: the background render thread did not end within {timeout_s:g} s"
                " of the run's end; it was left to end with the process"
            )

    def _work(self) -> None:
        while True:
            try:
                self._bell.get(timeout=WAKE_SLICE_S)
            except queue.Empty:
                pass  # a wake-up lost to a Ctrl-C in the requesting thread: look anyway
            with self._state:
                if self._closed:
                    return
                snapshot, self._pending = self._pending, None
                flushes = self._flushes
            if snapshot is None:
                continue
            with self._rendering:
                if flushes != self._flushes:  # flushed since: report.html shows a newer state
                    continue
                try:
                    self._render(json.loads(snapshot))
                except Exception:  # noqa: BLE001 - a bug here shows in the run's final, synchronous render
                    continue
                self._rendered = snapshot
