"""Compiled report templates are kept in the user's cache folder between runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from pytest_gemdirect.report import templating

WARNINGS = [("server", [{"kind": None, "text": "a <b> warning", "line_no": None}])]


@pytest.fixture
def fresh_environment() -> Iterator[None]:
    templating.environment.cache_clear()
    yield
    templating.environment.cache_clear()


def test_a_rendered_template_is_compiled_once_into_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_environment: None
) -> None:
    monkeypatch.setenv("GEMDIRECT_CACHE_DIR", str(tmp_path / "cache"))
    first = templating.render("warnings.html.j2", groups=WARNINGS)
    cached = list((tmp_path / "cache" / f"jinja2-{jinja2.__version__}").glob("*.cache"))
    assert len(cached) >= 1  # the template and what it imports
    templating.environment.cache_clear()  # the next run's environment loads them
    compiled: list[str] = []
    original = jinja2.Environment.compile

    def compile_counted(self: jinja2.Environment, *args: object, **kwargs: object) -> object:
        compiled.append(str(args[1:2]))
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jinja2.Environment, "compile", compile_counted)
    assert templating.render("warnings.html.j2", groups=WARNINGS) == first
    assert compiled == []
    assert "a &lt;b&gt; warning" in first  # autoescape is still on


def test_a_cache_folder_that_cannot_be_made_only_costs_the_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_environment: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("GEMDIRECT_CACHE_DIR", str(blocker))
    assert "a &lt;b&gt; warning" in templating.render("warnings.html.j2", groups=WARNINGS)
