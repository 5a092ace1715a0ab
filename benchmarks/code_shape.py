"""The shape of the package: the figures issue 10's before/after table asks for.

    python benchmarks/code_shape.py [REPO_DIR]

Largest module (lines), longest function (lines), most methods in one class, uses of other
plugins' private names in the package, and wall-clock upper bounds in the tests.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

# Other plugins' private or undocumented parts the package once leaned on.
PRIVATE_USES = re.compile(
    r"_split_scope|\.cancel_timeout\b|\btimeout_timer\b|option\.htmlpath\s*=|option\.self_contained_html\s*="
    r"|from xdist\.scheduler|from _pytest|import _pytest"
)
# `assert elapsed < 5`, `assert time.monotonic() - started < 2`, `assert seconds < 10` …
WALL_CLOCK = re.compile(r"assert .*(elapsed|seconds|took|monotonic\(\) - \w+|duration_s)\s*<\s*[\d.]")


def shape(repo: Path) -> dict[str, object]:
    modules = sorted((repo / "pytest_gemdirect").rglob("*.py"))
    sizes = {m.relative_to(repo).as_posix(): len(m.read_text(encoding="utf-8").splitlines()) for m in modules}
    longest = ("", 0)
    most_methods = ("", 0)
    private = 0
    for module in modules:
        text = module.read_text(encoding="utf-8")
        private += len(PRIVATE_USES.findall(text))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > longest[1]:
                    longest = (f"{module.relative_to(repo).as_posix()}:{node.name}", length)
            if isinstance(node, ast.ClassDef):
                count = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
                if count > most_methods[1]:
                    most_methods = (f"{module.relative_to(repo).as_posix()}:{node.name}", count)
    bounds = sum(
        len(WALL_CLOCK.findall(t.read_text(encoding="utf-8"))) for t in sorted((repo / "tests").rglob("*.py"))
    )
    largest = max(sizes.items(), key=lambda kv: kv[1])
    return {
        "largest module (lines)": f"{largest[1]} ({largest[0]})",
        "longest function (lines)": f"{longest[1]} ({longest[0]})",
        "most methods in one class": f"{most_methods[1]} ({most_methods[0]})",
        "private names of other plugins used": private,
        "wall-clock upper bounds in tests": bounds,
        "modules over 800 lines": sum(1 for n in sizes.values() if n > 800),
    }


if __name__ == "__main__":
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, value in shape(repo).items():
        print(f"{name:<40} {value}")
