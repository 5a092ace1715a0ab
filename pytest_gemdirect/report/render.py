"""The report as a whole: the block injected into pytest-html's page, and the standalone report.html.

Reading order is the ten-second rule: the verdict and the step table first, then what went wrong
in plain words, then the gallery (the frames and clips are the point of the run), backends,
timings, the comparison against a baseline run, GPU and VRAM, the story, the external suites, the
configuration (what differs from the defaults), warnings and the artifacts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from markupsafe import Markup

from pytest_gemdirect.report import overview, sections
from pytest_gemdirect.report.links import Links
from pytest_gemdirect.report.sections import Page
from pytest_gemdirect.report.templating import render, stylesheet
from pytest_gemdirect.report.view import build_view
from pytest_gemdirect.rundir import atomic_write_text

# (section id, its name in the navigation, how it is drawn), in reading order.
SECTIONS: tuple[tuple[str, str, Callable[[Page], Markup]], ...] = (
    ("steps", "Steps", sections.steps),
    ("failures", "What went wrong", sections.what_went_wrong),
    ("gallery", "Gallery", sections.gallery),
    ("backends", "Backends", sections.backends),
    ("timings", "Timings", sections.timings),
    ("baseline", "Baseline", sections.against_baseline),
    ("gpu", "GPU", sections.gpu),
    ("story", "Story", sections.story),
    ("suites", "Suites", sections.suites),
    ("config", "Configuration", sections.configuration),
    ("warnings", "Warnings", sections.warnings),
    ("artifacts", "Artifacts", sections.artifacts),
)


def _header(page: Page) -> Markup:
    return render("header.html.j2", h=overview.header(page.view, page.links))


def _guarded(sid: str, draw: Callable[[], Markup]) -> Markup:
    """One section; an unexpected shape of data costs that section, never the whole report."""
    try:
        return draw()
    except Exception as exc:  # noqa: BLE001 - one broken section never takes the report down
        return render("broken.html.j2", sid=sid, title=sid.capitalize(), error=f"{type(exc).__name__}: {exc}")


def _page(
    data: Mapping[str, Any], run_root: Path, baseline: Mapping[str, Any] | None, link_base: Path | None
) -> Page:
    run_root = Path(run_root)
    links = Links(run_root, Path(link_base) if link_base is not None else run_root)
    return Page(build_view(data, run_root), links, baseline)


def _overview(page: Page) -> Markup:
    header = _guarded("verdict", functools.partial(_header, page))
    drawn = [
        (sid, label, _guarded(sid, functools.partial(draw, page)))
        for sid, label, draw in SECTIONS
        if sid != "baseline" or page.baseline is not None
    ]
    return render(
        "overview.html.j2",
        css=stylesheet(),
        header=header,
        nav=[(sid, label) for sid, label, block in drawn if block],
        sections=[block for _, _, block in drawn],
    )


def render_overview(
    data: Mapping[str, Any],
    run_root: Path,
    *,
    baseline: Mapping[str, Any] | None = None,
    link_base: Path | None = None,
) -> str:
    """The report as one ``<div class="gemdirect-report">`` (scoped style, no script, no external URL).

    ``run_root`` is the run directory (for previews and links); ``link_base`` is the folder of the
    HTML file the block goes into (default: the run directory), so links to frames are relative to it.
    """
    return str(_overview(_page(data, run_root, baseline, link_base)))


def render_page(
    data: Mapping[str, Any],
    run_root: Path,
    *,
    baseline: Mapping[str, Any] | None = None,
    link_base: Path | None = None,
) -> str:
    """A standalone HTML page around ``render_overview`` (one file, opens offline, runs no script)."""
    page = _page(data, run_root, baseline, link_base)
    title = f"gemdirect {page.view.run_id}: {page.view.verdict}"
    return str(render("page.html.j2", title=title, body=_overview(page))) + "\n"


def write_report(
    path: Path, data: Mapping[str, Any], run_root: Path, *, baseline: Mapping[str, Any] | None = None
) -> None:
    """Write the standalone page atomically (no reader sees half a report); links relative to ``path``."""
    path = Path(path)
    atomic_write_text(path, render_page(data, run_root, baseline=baseline, link_base=path.parent))
