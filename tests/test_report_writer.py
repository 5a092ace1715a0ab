"""report.html off the critical path: rendered in the background, coalesced, final state last."""

from __future__ import annotations

import json
import linecache
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from bs4 import BeautifulSoup

from pytest_gemdirect.report_writer import ReportWriter
from tests.outside import PIPELINE_MODULE, run_e2e, summary_of

WAIT_S = 60.0  # generous: the machine running the tests may be loaded


class Renders:
    """A render that records what it was given and can be held mid-render."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.fail_next = False

    def __call__(self, data: dict[str, Any]) -> None:
        self.started.release()
        assert self.release.wait(WAIT_S)
        if self.fail_next:
            self.fail_next = False
            self.done.release()
            raise ValueError("a bug in a template")
        self.seen.append(data["n"])
        self.done.release()


def snap(n: int) -> str:
    return json.dumps({"n": n})


def test_requests_during_a_render_cost_one_more_render_of_the_newest_state() -> None:
    renders = Renders()
    writer = ReportWriter(renders)
    renders.release.clear()
    writer.request(snap(1))
    assert renders.started.acquire(timeout=WAIT_S)  # the thread is rendering state 1, held
    for n in (2, 3, 4):
        writer.request(snap(n))
    renders.release.set()
    assert renders.done.acquire(timeout=WAIT_S) and renders.done.acquire(timeout=WAIT_S)
    writer.request(snap(4))  # what report.html shows already: nothing to do
    writer.close()
    assert renders.seen == [1, 4]


def test_the_final_render_is_never_overwritten_by_an_older_one_in_flight() -> None:
    renders = Renders()
    writer = ReportWriter(renders)
    renders.release.clear()
    writer.request(snap(1))
    assert renders.started.acquire(timeout=WAIT_S)
    writer.request(snap(2))  # pending while 1 renders
    flushing = threading.Thread(target=writer.flush, args=({"n": 3}, snap(3)))
    flushing.start()  # waits for the render in flight, then renders the final state
    renders.release.set()
    flushing.join(WAIT_S)
    writer.close()
    assert renders.seen == [1, 3]  # 2 was dropped: the final state is newer


def test_a_failed_background_render_does_not_stop_later_ones() -> None:
    renders = Renders()
    writer = ReportWriter(renders)
    renders.fail_next = True
    writer.request(snap(1))
    assert renders.done.acquire(timeout=WAIT_S)
    writer.request(snap(2))
    assert renders.done.acquire(timeout=WAIT_S)
    writer.close()
    writer.request(snap(3))  # after the run's end: ignored
    assert renders.seen == [2]


# The second scene's check waits until report.html shows the first scene's check passed (the
# background render after that test), then ends the process at once: no teardown, no session
# end, no final render. What a run killed half-way leaves is that report.
ENDS_ABRUPTLY = f"""
import os, time
from pathlib import Path


def test_ends_abruptly(gemdirect_frames, gemdirect_run_dir):
    if gemdirect_frames.scene_id == "scene-001":
        return
    report = Path(gemdirect_run_dir) / "report.html"
    deadline = time.monotonic() + {WAIT_S}
    while time.monotonic() < deadline:
        if report.is_file() and 'gd-check gd-status-passed' in report.read_text(encoding="utf-8"):
            os._exit(3)
        time.sleep(0.05)
    os._exit(4)
"""


def test_a_run_ended_half_way_keeps_the_report_rendered_in_the_background(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_pipeline=PIPELINE_MODULE + ENDS_ABRUPTLY)
    result, run_dir, _ = run_e2e(pytester, "--scenes", "2")
    assert result.ret == 3, result.stdout.str()[-2000:]
    assert summary_of(run_dir)["status"] == "running"  # the session never ended
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert text.rstrip().endswith("</html>")  # a whole page, written atomically
    page = BeautifulSoup(text, "html.parser")
    rows = page.select("#gd-steps tr.gd-check.gd-status-passed")
    assert [row["data-test"] for row in rows] == ["test_ends_abruptly[scene-001]"]
    assert not list(run_dir.glob("report.html.*"))  # no half-written temporary file left


# --- Ctrl-C in the main thread at any moment of a request ---------------------------------------


def _ctrl_c_at(step: int, counted: list[int]) -> Callable[..., Any]:
    """A trace function for its thread that raises KeyboardInterrupt at the ``step``-th of its
    events in every frame below (threading's own included): where Python can raise a Ctrl-C in the
    main thread, as near as tracing gets there. A signal is acted on as a function starts
    ("call") and after a call returns: before the next line ("line") or before the frame returns
    ("return", e.g. ``Condition.__enter__`` right after its lock was taken). Not at the line event
    tracing adds when a ``with`` block's end jumps back to the ``with`` line: nothing is acted on
    between a block's last statement and its ``__exit__``. ``counted`` gets the number of events."""
    counted.append(0)
    last_line: dict[int, int] = {}  # per frame (its id while it runs)

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
        previous = last_line.get(id(frame), 0) if event != "call" else 0
        last_line[id(frame)] = frame.f_lineno
        source = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        if event == "line" and frame.f_lineno < previous and source.startswith("with "):
            return trace  # the block's end calling __exit__
        counted[-1] += 1
        if counted[-1] == step:
            raise KeyboardInterrupt(f"Ctrl-C at trace event {step} ({event} in {frame.f_code.co_name})")
        return trace

    return trace


def _request_then_session_end(writer: ReportWriter, step: int, counted: list[int]) -> None:
    """What the main thread does: a test's request, Ctrl-C landing in it, then the session's end."""
    sys.settrace(_ctrl_c_at(step, counted))
    try:
        writer.request(snap(1))
    except BaseException:  # noqa: BLE001 - the Ctrl-C, or what threading made of it (RuntimeError)
        pass
    finally:
        sys.settrace(None)
    writer.flush({"n": 2}, snap(2))
    writer.close()


def test_a_ctrl_c_anywhere_in_a_request_never_keeps_the_session_end_waiting() -> None:
    """A Ctrl-C that lands inside ``threading.Condition`` (between a waiter's release and its
    removal) once lost the thread's next wake-up, and close() joined it for ever; a Ctrl-C right
    after a Condition's lock is taken leaves it held by the main thread. The session's end must
    return wherever the Ctrl-C landed, report.html show the final state, and a thread that
    could not be ended be named, not waited for."""
    counted: list[int] = []
    step = 0
    while True:
        step += 1
        renders = Renders()
        writer = ReportWriter(renders)
        before = {t for t in threading.enumerate() if t.name == "gemdirect-report"}
        main = threading.Thread(target=_request_then_session_end, args=(writer, step, counted), daemon=True)
        main.start()
        main.join(WAIT_S)
        assert not main.is_alive(), f"Ctrl-C at trace event {step} of request(): the session's end hangs"
        assert renders.seen[-1:] == [2], f"Ctrl-C at trace event {step}: {renders.seen}"
        left = {t for t in threading.enumerate() if t.name == "gemdirect-report" and t.is_alive()} - before
        assert not left or writer.problems, f"Ctrl-C at trace event {step}: a thread left unnamed"
        if counted[-1] < step:  # the request ran to its end: every event of it was tried
            break
    assert step > 50  # the request was traced into threading's own code
