"""The Jinja2 environment of the report: templates shipped in the package, autoescape always on.

Autoescape makes escaping the default for every value a template shows (a scene title, a server's
traceback, a file name); nothing untrusted is ever marked safe. What is marked safe is only the
output of these templates themselves and the package's own stylesheet.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from pytest_gemdirect.report.format import MARKS, secs, size, word
from pytest_gemdirect.text import visible
from pytest_gemdirect.user_cache import cache_folder


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs (compiling them all costs more than a render).

    Jinja2 keys each entry by the template's name and checks it against a hash of the template's
    source, so an edited or upgraded template is compiled again. No cache where the folder cannot
    be made: the report is still written, only slower.
    """
    folder = cache_folder() / f"jinja2-{jinja2.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder))


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_gemdirect.report", "templates"),
        bytecode_cache=_bytecode_cache(),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,  # the templates ship with the package: no need to stat them at every render
        finalize=lambda value: "" if value is None else value,  # a missing value shows as nothing
    )
    env.globals.update(marks=MARKS)
    env.filters.update(word=word, secs=secs, size=size, visible=visible)
    return env


def render(template: str, **context: Any) -> Markup:
    """A template rendered with autoescape: safe to put into another template as it is."""
    return Markup(environment().get_template(template).render(**context))


@functools.cache
def stylesheet() -> Markup:
    """The report's stylesheet (static/report.css), comments dropped, for one inline ``<style>``."""
    source = resources.files("pytest_gemdirect.report") / "static" / "report.css"
    css = source.read_text(encoding="utf-8")
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    css = "\n".join(line.rstrip() for line in css.splitlines() if line.strip())
    if "</" in css:  # it goes inside <style>: nothing in it may close the element
        raise ValueError("report.css must not contain '</'")
    return Markup(css)
