"""The import graph of the project's own modules, drawn from their source with ast.

Every import counts: at the top, inside functions and under ``TYPE_CHECKING`` (a type is a
dependency). The rules (docs/design.md): no import circle among resadapt/, allocator/ and
app.py; the core never imports the offline world (only the world itself, the entry points and the
tests do); the allocator imports nothing from resadapt.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("resadapt", "allocator")
SCRIPTS = ("app.py",)
WORLD = "resadapt.world"
ENTRY_POINTS = frozenset(
    {
        "app",
        "resadapt.ask",
        "resadapt.eval",
        "resadapt.train",
        "resadapt.synth",
        "resadapt.train_backbone",
        "resadapt.lmms",
        "resadapt.needle",
    }
)
"""The modules a user runs (the app, the ``python -m`` modules, the lmms-eval model): they
register the world."""


def module_name(path: Path) -> str:
    """``resadapt/world/tiny.py`` → ``resadapt.world.tiny``; a package's ``__init__.py`` → the
    package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the packages and the scripts, by dotted name."""
    paths = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    paths += [ROOT / script for script in SCRIPTS]
    return {module_name(p): p for p in paths}


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name the module's source imports, anywhere in the file, relative imports
    resolved: ``import a.b`` gives ``a.b``, ``from a import b`` gives ``a.b`` (b a module or a
    name defined in a)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names |= {base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names}
    return names


def own_module(name: str) -> str | None:
    """The project module that defines ``name`` (its longest prefix that is one), or None."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module → the project modules it imports.

    A module's import of its own package (``resadapt.world.tiny`` reading
    ``resadapt.world.TINY_BACKBONES``) is no edge: Python initialises a package before any of its
    modules, whatever either imports.
    """
    graph = {}
    for module, path in modules().items():
        owners = {own_module(name) for name in imported_names(module, path)}
        graph[module] = frozenset(
            owner
            for owner in owners
            if owner is not None and owner != module and not module.startswith(owner + ".")
        )
    return graph


def find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, …, a], or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_import_counts(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import resadapt.cli\n"
        "from . import grading\n"
        "from .world import tiny\n"
        "if TYPE_CHECKING:\n"
        "    from resadapt.train_config import TrainConfig\n"
        "def f():\n"
        "    from resadapt.assets import default_backbone\n",
        encoding="utf-8",
    )
    names = imported_names("resadapt.x", source)
    assert {
        "resadapt.cli",
        "resadapt.grading",
        "resadapt.world.tiny",
        "resadapt.train_config.TrainConfig",
        "resadapt.assets.default_backbone",
    } <= names
    assert own_module("resadapt.train_config.TrainConfig") == "resadapt.train_config"
    assert own_module("resadapt.world.TINY_BACKBONES") == "resadapt.world"
    assert own_module("torch.nn") is None


def test_the_graph_covers_the_project():
    graph = import_graph()
    assert {"app", "resadapt.pipeline", "resadapt.world.tiny", "allocator.model"} <= set(graph)
    assert "resadapt.pipeline" in graph["resadapt.ask"]
    assert "resadapt.world" not in graph["resadapt.world.tiny"]  # its own package: no edge


def test_find_cycle_names_the_circle():
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_only_the_world_and_the_entry_points_import_the_world():
    reaching = sorted(
        module
        for module, path in modules().items()
        if module != WORLD
        and not module.startswith(WORLD + ".")
        and module not in ENTRY_POINTS
        and any(n == WORLD or n.startswith(WORLD + ".") for n in imported_names(module, path))
    )
    assert not reaching, f"the core imports {WORLD} (let the entry points do it): {reaching}"


def test_the_entry_points_register_the_world():
    for module in ENTRY_POINTS:
        names = imported_names(module, modules()[module])
        assert any(n == WORLD or n.startswith(WORLD + ".") for n in names), module


def test_the_allocator_imports_nothing_from_resadapt():
    reaching = sorted(
        module
        for module, path in modules().items()
        if module.split(".")[0] == "allocator"
        and any(n.split(".")[0] == "resadapt" for n in imported_names(module, path))
    )
    assert not reaching, f"allocator/ must not import resadapt (docs/design.md): {reaching}"
