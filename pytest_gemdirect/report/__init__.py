"""The HTML report (design §6): one self-contained block that replaces the three hand-written reports.

``render_overview`` makes an HTML fragment (one ``<div class="gemdirect-report">`` with its own
scoped ``<style>``, no script, no external URL) from a run summary; it is injected into
pytest-html's report and wrapped by ``render_page`` into a standalone ``report.html``.

How it is made: ``view`` reads the summary once into typed values (every field is optional: a run
killed half-way renders too); ``overview``, ``failures`` and ``sections`` gather what each part of
the page shows; Jinja2 templates (``templates/``, autoescape on, so everything from a server, a
workflow, an LLM or a file name is escaped) lay it out, with the stylesheet (``static/report.css``)
inlined. ``charts`` draws the timeline and VRAM as inline SVG, ``previews`` makes the thumbnails and
animated previews (cached in the run directory), ``baseline`` compares against an earlier run.
Nothing here imports pytest.
"""

from __future__ import annotations

from pytest_gemdirect.report.baseline import CHANGE_THRESHOLD, BaselineError, load_baseline
from pytest_gemdirect.report.render import render_overview, render_page, write_report

__all__ = [
    "BaselineError",
    "CHANGE_THRESHOLD",
    "load_baseline",
    "render_overview",
    "render_page",
    "write_report",
]
