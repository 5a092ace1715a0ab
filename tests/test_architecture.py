"""The package's import graph, read with the standard library's ``ast``: no circle, no arrow up.

Every import counts, at module level or inside a function (a lazy import is still a dependency);
only imports under ``if TYPE_CHECKING:`` are left out of the circle check (they never run). Each
module sits on a floor (ARCHITECTURE.md); a module may import its own floor or lower ones only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_gemdirect

PACKAGE = "pytest_gemdirect"

# Floor of each module, by the longest prefix that names it. A new module must be placed here.
FLOORS: dict[str, int] = {
    # 0 ground: words, names, time budgets, configuration, the stage table, the run directory
    PACKAGE: 0,  # __init__: the version
    f"{PACKAGE}.text": 0,
    f"{PACKAGE}.names": 0,
    f"{PACKAGE}.deadline": 0,
    f"{PACKAGE}.cmdline": 0,
    f"{PACKAGE}.schemas_io": 0,
    f"{PACKAGE}.catalogue": 0,
    f"{PACKAGE}.policy": 0,
    f"{PACKAGE}.settings": 0,
    f"{PACKAGE}.sim.faults": 0,  # the fault vocabulary: settings parse it, the simulators obey it
    f"{PACKAGE}.rundir": 0,
    f"{PACKAGE}.retention": 0,  # which old run directories go
    f"{PACKAGE}.user_cache": 0,  # the user's cache folder: compiled templates, tool versions
    # 1 tools and records: HTTP, processes, the summary, video analysis, the simulators
    f"{PACKAGE}.net": 1,
    f"{PACKAGE}.processes": 1,
    f"{PACKAGE}.summary": 1,
    f"{PACKAGE}.step_summary": 1,
    f"{PACKAGE}.video": 1,
    f"{PACKAGE}.startup_log": 1,
    f"{PACKAGE}.gpu_sampler": 1,
    f"{PACKAGE}.suites": 1,
    f"{PACKAGE}.sim": 1,
    f"{PACKAGE}.appcontract": 1,  # the app's run contract, written with the summary
    f"{PACKAGE}.replay": 1,  # the recorder the clients write to, and the replay server (a process)
    f"{PACKAGE}.services.embedded": 1,  # the simulator processes
    f"{PACKAGE}.services.launcher": 1,  # a launched ComfyUI's process
    # 2 the LLM client and the story
    f"{PACKAGE}.llm": 2,
    f"{PACKAGE}.story": 2,
    # 3 the ComfyUI client, and the start-up checks that load workflows with it
    f"{PACKAGE}.comfyui": 3,
    f"{PACKAGE}.startup_checks": 3,
    f"{PACKAGE}.app_settings": 3,  # the app's localGenSettings.json: its profiles as graphs and roles
    f"{PACKAGE}.services.probe": 3,  # is each --comfyui-url answering, at start-up
    # 4 the report (reads only the summary) and the services (where the servers come from)
    f"{PACKAGE}.report": 4,
    f"{PACKAGE}.services": 4,  # where the servers come from: attach, launch, embed
    # 5 the stages
    f"{PACKAGE}.stages": 5,
    f"{PACKAGE}.environment": 5,
    # 6 the pytest face: the run, the terminal, xdist and pytest-timeout support, the stage tests
    f"{PACKAGE}.pipeline_tests": 6,
    f"{PACKAGE}.pytest_plugin": 6,
    # 7 the plugin: wires options, markers, fixtures and hooks
    f"{PACKAGE}.pytest_plugin.hooks": 7,
}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return inside


def imports_of(name: str, path: Path, modules: set[str], *, type_checking: bool) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if type_checking else _type_checking_nodes(tree)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # ``from a import b``: b is a module of a, or a name defined in a (then a is meant)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            module = known(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph(root: Path, package: str, *, type_checking: bool) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {
        name: imports_of(name, path, set(files), type_checking=type_checking) for name, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan's method)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floor_of(module: str) -> int | None:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    return FLOORS[max(prefixes, key=len)] if prefixes else None


ROOT = Path(pytest_gemdirect.__file__).resolve().parent.parent


def test_the_package_has_no_import_circle() -> None:
    assert circles(import_graph(ROOT, PACKAGE, type_checking=False)) == []


def test_no_module_imports_a_higher_floor() -> None:
    graph = import_graph(ROOT, PACKAGE, type_checking=True)
    unplaced = sorted(m for m in graph if floor_of(m) is None)
    assert unplaced == [], f"place these modules on a floor in FLOORS: {unplaced}"
    upward = sorted(
        f"{module} (floor {floor_of(module)}) imports {target} (floor {floor_of(target)})"
        for module, targets in graph.items()
        for target in targets
        if (floor_of(target) or 0) > (floor_of(module) or 0)
    )
    assert upward == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_see_circles_through_lazy_imports_but_not_type_checking(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "toy/__init__.py": "",
            "toy/a.py": "from toy.b import thing\n",
            "toy/b.py": "def thing():\n    from toy import a  # lazy: still a dependency\n",
            "toy/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy.d import D\n",
            "toy/d.py": "from . import c\n",
            "toy/sub/__init__.py": "from ..c import x\n",
        },
    )
    graph = import_graph(tmp_path, "toy", type_checking=False)
    assert graph["toy.b"] == {"toy.a"} and graph["toy.d"] == {"toy.c"} and graph["toy.sub"] == {"toy.c"}
    assert circles(graph) == [["toy.a", "toy.b"]]
    assert circles(import_graph(tmp_path, "toy", type_checking=True)) == [
        ["toy.a", "toy.b"],
        ["toy.c", "toy.d"],
    ]


@pytest.mark.parametrize(
    ("module", "floor"),
    [(f"{PACKAGE}.sim.faults", 0), (f"{PACKAGE}.sim.comfyui.nodes", 1), (f"{PACKAGE}.stages.pool", 5)],
)
def test_a_module_takes_the_floor_of_its_longest_prefix(module: str, floor: int) -> None:
    assert floor_of(module) == floor
