"""The package's import structure, read from the sources with `ast` (nothing is run):
every import of a forcefield module, at module level or inside a function, is an edge.

(a) the core never imports forcefield.export: only forcefield.cli and forcefield.demo (and
    forcefield.export itself) may; loading exported models is forcefield.model.deployed's job;
(b) the module import graph has no cycle (a lazy import inside a function counts: it only
    hides a cycle);
(c) layers call downward: forcefield.data imports nothing from model, training, cli, demo
    (nor the application modules calculator and evaluation), forcefield.model nothing from
    training, cli, demo (nor calculator, evaluation).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Set

import forcefield

EXPORT = "forcefield.export"
MAY_IMPORT_EXPORT = ("forcefield.cli", "forcefield.demo", EXPORT)
# modules kept only as an import alias of a module that moved (for callers outside this
# repository): exempt from the layer rule, but they may import nothing except their new home
ALIASES = {"forcefield.data.demo_data": "forcefield.demo.data"}  # tests/test_lammps_model.py
FORBIDDEN = {
    "forcefield.data": (
        "forcefield.model",
        "forcefield.training",
        "forcefield.cli",
        "forcefield.demo",
        "forcefield.calculator",
        "forcefield.evaluation",
    ),
    "forcefield.model": (
        "forcefield.training",
        "forcefield.cli",
        "forcefield.demo",
        "forcefield.calculator",
        "forcefield.evaluation",
    ),
}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@lru_cache(maxsize=None)
def modules() -> Dict[str, Path]:
    """{module name: source file} of forcefield and all its submodules, forcefield.export included
    (installed from the top-level export/ folder, so it is walked on its own)."""
    found: Dict[str, Path] = {}
    packages = [forcefield, importlib.import_module(EXPORT)]
    for pkg in packages:
        found[pkg.__name__] = Path(pkg.__file__)
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name in found:
                continue
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin, info.name
            found[info.name] = Path(spec.origin)
    return found


def _resolve(module: str, node: ast.ImportFrom) -> Optional[str]:
    """Absolute name of the module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module
    is_package = modules()[module].name == "__init__.py"
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _canonical(name: str) -> str:
    """`export.x` (the folder's own name) is forcefield.export.x."""
    return "forcefield." + name if name == "export" or name.startswith("export.") else name


def _target(name: str) -> Optional[str]:
    """The forcefield module an imported name refers to: itself or its nearest known parent."""
    name = _canonical(name)
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@lru_cache(maxsize=None)
def imports_of(module: str) -> Dict[str, int]:
    """{imported forcefield module: line of the first such import} of `module`'s source."""
    tree = ast.parse(modules()[module].read_text(), filename=str(modules()[module]))
    found: Dict[str, int] = {}
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if base is None:
                continue
            # `from forcefield.data import frames` imports the submodule forcefield.data.frames
            names = [
                f"{base}.{alias.name}" if _canonical(f"{base}.{alias.name}") in modules() else base
                for alias in node.names
            ]
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def graph() -> Dict[str, Set[str]]:
    return {m: set(imports_of(m)) for m in modules()}


def find_cycle(edges: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle [a, b, ..., a] of the directed graph, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def _where(module: str, target: str) -> str:
    return f"{module} imports {target} ({modules()[module]}:{imports_of(module)[target]})"


# ----------------------------------------------------------------- the walk itself


def test_walk_finds_every_layer():
    names = set(modules())
    for expected in (
        "forcefield.data.frames",
        "forcefield.data.graph",
        "forcefield.model.forcefield",
        "forcefield.model.deployed",
        "forcefield.training.trainer",
        "forcefield.training.dens",
        "forcefield.cli.app",
        "forcefield.demo.run",
        "forcefield.export.torchscript",
        "forcefield.export.plugin",
        "forcefield.calculator",
    ):
        assert expected in names, expected
    # the parser sees function-level imports too (the CLI imports the export package lazily)
    assert "forcefield.export.torchscript" in imports_of("forcefield.cli.app")


def test_cycle_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# ----------------------------------------------------------------- (a) (b) (c)


def test_core_never_imports_export():
    bad = [
        _where(m, t)
        for m in modules()
        if not any(_within(m, p) for p in MAY_IMPORT_EXPORT)
        for t in imports_of(m)
        if _within(t, EXPORT)
    ]
    assert not bad, "the core imports the export package:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_downward():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for m in modules():
            if _within(m, layer) and m not in ALIASES:
                bad += [_where(m, t) for t in imports_of(m) if any(_within(t, f) for f in forbidden)]
    assert not bad, "a layer imports one above it:\n" + "\n".join(bad)


def test_aliases_only_point_to_the_moved_module():
    for alias, home in ALIASES.items():
        assert alias in modules(), f"{alias} is gone: drop it from ALIASES"
        assert set(imports_of(alias)) == {home}, (alias, sorted(imports_of(alias)))
