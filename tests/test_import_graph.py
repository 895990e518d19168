"""Imports in one direction: no two modules of fewseg import each other, directly or around a loop.

Every module under src/fewseg is parsed with ``ast`` (nothing is imported). Each ``import fewseg.x``, ``from
fewseg.x import y`` and relative import is an edge, wherever it stands: at module level or inside a function (a
function-level import that dodges a cycle is still a cycle); only ``if TYPE_CHECKING:`` blocks are left out (they
never run). ``from fewseg.pkg import name`` is an edge to the submodule ``fewseg.pkg.name`` when there is one, else
to ``fewseg.pkg`` (its ``__init__``). Importing ``fewseg.pkg.mod`` from outside ``fewseg.pkg`` runs
``fewseg/pkg/__init__.py`` first, so that is an edge to ``fewseg.pkg`` too; from inside ``fewseg.pkg`` it is not
(the package is already being imported), so a package ``__init__`` that imports its own submodules to register
them, and submodules that import each other or ``fewseg.registry``, close no cycle. The graph must have no
strongly connected component of more than one module, apart from the edges of ``KNOWN_CYCLES``.
"""
from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

# Edges (importer, imported) that close a cycle today, each awaiting its fix. They are left out of the graph
# before looking for cycles; empty this as they are fixed (test_known_cycles_are_still_cycles says when one is).
KNOWN_CYCLES: dict[tuple[str, str], str] = {}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """{dotted module name: file} of every module under ``src/fewseg`` (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((src / "fewseg").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imported_names(module: str, source: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """The fewseg modules ``module`` names in its imports (module level and inside functions), resolved to the
    submodule where ``from pkg import name`` names one."""
    known = set(known)
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {name for name in out if name in known and name != module}


def with_packages_run_first(module: str, targets: Iterable[str], known: Iterable[str]) -> set[str]:
    """``targets`` plus the packages importing each one runs first: those enclosing it but not ``module``."""
    known = set(known)
    mine = module.split(".")
    enclosing_me = {".".join(mine[:i]) for i in range(1, len(mine) + 1)}
    out = set(targets)
    for target in targets:
        parts = target.split(".")
        out.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                   if p in known and p not in enclosing_me)
    out.discard(module)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """{module: the fewseg modules importing it runs (directly)}."""
    files = module_files(src)
    graph = {}
    for module, path in files.items():
        direct = imported_names(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", files)
        graph[module] = with_packages_run_first(module, direct, files)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iterative), each sorted."""
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle inside ``component`` (a strongly connected component of more than one module) as a path that
    starts and ends at its first module: the shortest way round (breadth first)."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, set()) & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules importing ``start`` runs, directly or not."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (empty: imports in one direction)."""
    return [a_cycle(graph, c) for c in strongly_connected(graph) if len(c) > 1]


def without(graph: dict[str, set[str]], edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    drop = set(edges)
    return {m: {t for t in ts if (m, t) not in drop} for m, ts in graph.items()}


# --- the finder, on graphs whose answer is known ------------------------------------------------------------------
def test_the_cycle_finder_finds_every_cycle_and_only_cycles():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert cycles(acyclic) == []
    two = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(two) == [["a", "b", "a"]]
    loop = {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}, "e": {"f"}, "f": {"e"}}
    found = cycles(loop)
    assert sorted(found) == [["b", "c", "d", "b"], ["e", "f", "e"]]
    assert sorted(strongly_connected(loop)) == [["a"], ["b", "c", "d"], ["e", "f"]]
    for cycle in found:  # each reported cycle is a real path in the graph
        assert all(b in loop[a] for a, b in itertools.pairwise(cycle))
    assert cycles(without(loop, [("d", "b"), ("f", "e")])) == []


def test_a_long_chain_does_not_overflow_the_stack():
    n = 5000
    chain = {str(i): {str(i + 1)} for i in range(n)}
    assert cycles(chain) == []
    chain[str(n)] = {"0"}
    (cycle,) = cycles(chain)
    assert len(cycle) == n + 2 and cycle[0] == cycle[-1]


def test_imports_are_read_at_module_level_in_functions_and_relative(tmp_path):
    """A synthetic package: every import form becomes the right edge, and a real cycle fails."""
    pkg = tmp_path / "fewseg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from fewseg import sub as _sub  # registers\nfrom fewseg.api import run\n",
        "api.py": "def run():\n    from .sub import worker\n    return worker\n",
        "registry.py": "",
        "sub/__init__.py": "from fewseg.sub import worker, helper  # registers both\n",
        "sub/worker.py": "import fewseg.registry\nfrom . import helper\nfrom ..registry import *\n",
        "sub/helper.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fewseg.api import run\n"
                          "def f():\n    import fewseg.sub.worker\n"),
        "leaf.py": "from fewseg.sub.helper import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph == {
        "fewseg": {"fewseg.sub", "fewseg.api"},
        "fewseg.api": {"fewseg.sub.worker", "fewseg.sub"},  # a relative import in a function; fewseg.sub runs first
        "fewseg.registry": set(),
        "fewseg.sub": {"fewseg.sub.worker", "fewseg.sub.helper"},  # its own submodules
        "fewseg.sub.worker": {"fewseg.registry", "fewseg.sub.helper"},  # not fewseg.sub: it is inside it
        "fewseg.sub.helper": {"fewseg.sub.worker"},  # not fewseg.api: TYPE_CHECKING only
        "fewseg.leaf": {"fewseg.sub.helper", "fewseg.sub"},
    }
    # worker <-> helper import each other (helper inside a function): a cycle, whoever dodges it
    assert cycles(graph) == [["fewseg.sub.helper", "fewseg.sub.worker", "fewseg.sub.helper"]]
    # a submodule that imports the package it registers in closes a cycle through its __init__
    (pkg / "sub" / "helper.py").write_text("from fewseg.sub import worker\nfrom fewseg.sub import CONSTANT\n")
    (pkg / "sub" / "__init__.py").write_text("from fewseg.sub import helper\nCONSTANT = 1\n")
    (pkg / "sub" / "worker.py").write_text("")
    assert cycles(import_graph(tmp_path)) == [["fewseg.sub", "fewseg.sub.helper", "fewseg.sub"]]


# --- fewseg itself ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_covers_fewseg(graph):
    assert {"fewseg", "fewseg.segmenter", "fewseg.saved", "fewseg.loading", "fewseg.engine.session"} <= set(graph)
    assert "fewseg.loading" in graph["fewseg.segmenter"] and "fewseg.loading" in graph["fewseg.engine.session"]
    assert "fewseg.segmenter" in graph["fewseg"]


def test_fewseg_imports_in_one_direction(graph):
    clean = without(graph, KNOWN_CYCLES)
    tangled = [c for c in strongly_connected(clean) if len(c) > 1]
    assert not tangled, "import cycles (a -> b: a imports b):\n" + "\n".join(
        f"{' -> '.join(a_cycle(clean, c))}   (strongly connected: {', '.join(c)})" for c in tangled)


def test_known_cycles_are_still_cycles(graph):
    """Each allowed edge still exists and still closes a cycle; once fixed, take it out of KNOWN_CYCLES."""
    fixed = []
    for importer, imported in KNOWN_CYCLES:
        if imported not in graph.get(importer, set()):
            fixed.append(f"{importer} -> {imported}: no longer imported")
        elif importer not in reachable(graph, imported):
            fixed.append(f"{importer} -> {imported}: closes no cycle any more")
    assert not fixed, "remove from KNOWN_CYCLES: " + "; ".join(fixed)


def test_loading_and_saved_reach_neither_the_segmenter_nor_the_session(graph):
    """The layers of issue 26: loading and saved sit below the segmenter, which sits below the session."""
    clean = without(graph, KNOWN_CYCLES)
    for low in ("fewseg.loading", "fewseg.saved"):
        assert not reachable(clean, low) & {"fewseg.segmenter", "fewseg.engine.session"}, low
    assert "fewseg.engine.session" not in reachable(clean, "fewseg.segmenter")
