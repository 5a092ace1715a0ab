"""report.html rendered off the critical path: in one background thread that coalesces requests.

Rendering the report is the dearest thing a test ends with; done in the main thread it sits
between one scene's end and the next scene's start while the servers wait. Here a test's end only
hands over the summary as it stands (a JSON snapshot, cheap) and returns; the thread renders the
newest snapshot it has, so ten requests during one render cost one more render, not ten. The run's
end (and a process about to be ended) renders synchronously, after the thread's render in flight,
so the last report.html is always the final state; a run killed half-way keeps the last render.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

Render = Callable[[dict[str, Any]], None]


class ReportWriter:
    """Renders summaries with ``render``: ``request`` in the background, ``flush`` now."""

    def __init__(self, render: Render) -> None:
        self._render = render
        self._rendering = threading.Lock()  # one render at a time, the thread's or flush's
        self._wake = threading.Condition()
        self._pending: str | None = None  # the newest snapshot not rendered yet
        self._rendered: str | None = None  # the snapshot report.html shows
        self._flushes = 0  # a snapshot taken before the latest flush is older than what it wrote
        self._thread: threading.Thread | None = None
        self._closed = False

    def request(self, snapshot: str) -> None:
        """Render ``snapshot`` (JSON text of the summary) soon, unless report.html shows it already."""
        with self._wake:
            if self._closed or snapshot in (self._rendered, self._pending):
                return
            self._pending = snapshot
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gemdirect-report", daemon=True)
                self._thread.start()
            self._wake.notify()

    def flush(self, data: dict[str, Any], snapshot: str | None = None) -> None:
        """Render ``data`` now, in the caller's thread, once any render in flight is done.

        What was pending is dropped: ``data`` is newer. Later ``request`` calls still work
        (pytest-timeout's end of a process and the session's end may both flush)."""
        with self._wake:
            self._pending = None
            self._flushes += 1
        with self._rendering:
            self._render(data)
            self._rendered = snapshot

    def close(self) -> None:
        """No more background renders; waits for the one in flight."""
        with self._wake:
            self._closed = True
            self._pending = None
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                snapshot, self._pending = self._pending, None
                if self._closed or snapshot is None:
                    return
                flushes = self._flushes
            with self._rendering:
                if flushes != self._flushes:  # flushed since: report.html shows a newer state
                    continue
                try:
                    self._render(json.loads(snapshot))
                except Exception:  # noqa: BLE001 - a bug here shows in the run's final, synchronous render
                    continue
                self._rendered = snapshot
