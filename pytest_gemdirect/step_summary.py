"""A short Markdown summary for a CI job page (GitHub Actions' ``GITHUB_STEP_SUMMARY``).

The verdict, the step table, what went wrong and where the report is, so the job page answers
"did it pass, and if not, which step" without opening an artifact. Server and LLM text in it is
made visible (control characters) and cannot break out of its table cell or inject markup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_gemdirect.catalogue import STAGE_TITLES
from pytest_gemdirect.summary import failures, verdict
from pytest_gemdirect.text import visible

ENV_VAR = "GITHUB_STEP_SUMMARY"
MESSAGE_LIMIT = 500  # characters of each failure message; the report has the rest


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (and outside HTML tags)."""
    shown = visible(text, limit=MESSAGE_LIMIT).replace("\n", " ")
    return shown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def markdown(data: dict[str, Any], report: Path | None) -> str:
    lines = [f"### gemdirect: {_cell(verdict(data))}", "", "| # | step | status |", "|---|---|---|"]
    for number, stage in enumerate(data["stages"], start=1):
        lines.append(f"| {number} | {STAGE_TITLES[stage['name']]} | {stage['status']} |")
    wrong = failures(data)
    if wrong:
        lines += ["", "**What went wrong**", "", "| where | why |", "|---|---|"]
        lines += [f"| `{item['key']}` | {_cell(item.get('message') or '')} |" for item in wrong]
    lines += ["", f"Run directory: `{data['run_dir']}`"]
    if report is not None:
        lines.append(f"Report: `{report}` (in the run directory's artifact)")
    return "\n".join(lines) + "\n"


def append_step_summary(data: dict[str, Any], report: Path | None) -> bool:
    """Append to ``$GITHUB_STEP_SUMMARY`` when it is set; whether anything was written."""
    target = os.environ.get(ENV_VAR)
    if not target:
        return False
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown(data, report))
    except OSError:
        return False
    return True
