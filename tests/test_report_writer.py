"""report.html off the critical path: rendered in the background, coalesced, final state last."""

from __future__ import annotations

import json
import threading
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
