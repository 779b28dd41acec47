"""Layering: tumorcam's own import graph has no cycles (beyond the listed ones).

The graph is built with ``ast`` over ``src/tumorcam``: every ``import`` and
``from ... import`` statement counts, at module level and inside functions
(a function-local import is still a dependency; moving an import into a
function only hides a cycle, it does not break it).  Relative imports are
resolved, and ``from tumorcam.x import y`` is an edge to ``tumorcam.x.y``
when ``y`` is a submodule, else to ``tumorcam.x``.  Importing a submodule
also runs its parent packages' ``__init__``; that implicit edge is not
counted, only what the source names.

The module graph is then collapsed to layers (tumorcam's subpackages and top-level modules) and
checked the same way against KNOWN_PACKAGE_CYCLES.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "tumorcam"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Strongly connected components of the import graph that remain, each with
# why it is not broken yet.  The test checks this list is EXACTLY what is
# found: a new cycle fails, and so does a listed one that has gone (remove
# it here when you break it).
KNOWN_CYCLES: list[frozenset[str]] = []

# The same at the level of tumorcam's subpackages and top-level modules (tumorcam.explain.run counts
# as tumorcam.explain): a layer should not import a layer that imports it back. What remains, one
# component, and the edges that hold it together:
KNOWN_PACKAGE_CYCLES: list[frozenset[str]] = [
    frozenset({
        # explain.volume_files draws its figures with report.figures/report.volumes, and the report
        # reads explain.index
        "tumorcam.report",
        # Run.explanations reads explain.index; explain.run/explain.image and evaluate.inputs/segmentation
        # open a Run
        "tumorcam.run_folder",
        # evaluate.* explain maps; report.results/figures read evaluate.headline/summary/metrics
        "tumorcam.evaluate",
        "tumorcam.explain",
    }),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name a (possibly relative) ``from`` names."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` is, or lies in."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    names.append(sub if sub in modules else base)
            for name in names:
                target = _target(name, modules)
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm; only components with a cycle (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One shortest cycle inside a component, for the failure message."""
    best: list[str] | None = None
    for start in sorted(component):
        parents: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        done = False
        while frontier and not done:
            following = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(parents[path[-1]])
                        cycle = list(reversed(path)) + [start]
                        if best is None or len(cycle) < len(best):
                            best = cycle
                        done = True
                        break
                    if w not in seen:
                        seen.add(w)
                        parents[w] = v
                        following.append(w)
                if done:
                    break
            frontier = following
    assert best is not None
    return best


def _describe(graph: dict[str, set[str]], component: frozenset[str]) -> str:
    return (
        f"  {sorted(component)}\n"
        f"    e.g. {' -> '.join(shortest_cycle(graph, component))}"
    )


def test_graph_sees_local_and_relative_imports() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert any(graph.values())
    # every edge is to one of our modules
    for targets in graph.values():
        assert targets <= graph.keys()


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """`graph` with each module replaced by its layer: tumorcam.<first part>."""
    def layer(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {layer(m): set() for m in graph}
    for module, targets in graph.items():
        packages[layer(module)] |= {layer(t) for t in targets} - {layer(module)}
    return packages


def test_no_import_cycles_beyond_the_known_ones() -> None:
    _check_cycles(import_graph(), KNOWN_CYCLES, "KNOWN_CYCLES")


def test_no_package_cycles_beyond_the_known_ones() -> None:
    _check_cycles(package_graph(import_graph()), KNOWN_PACKAGE_CYCLES, "KNOWN_PACKAGE_CYCLES")


def _check_cycles(graph: dict[str, set[str]], known_list: list[frozenset[str]], name: str) -> None:
    found = set(strongly_connected(graph))
    known = set(known_list)
    new = found - known
    gone = known - found
    message = []
    if new:
        message.append(
            "import cycles (break them by moving code to the module it "
            "belongs in, not by hiding an import):\n"
            + "\n".join(_describe(graph, c) for c in sorted(new, key=sorted))
        )
    if gone:
        message.append(
            f"{name} lists components that are no longer there; "
            "update the list:\n"
            + "\n".join(f"  {sorted(c)}" for c in sorted(gone, key=sorted))
        )
    assert not message, "\n".join(message)
