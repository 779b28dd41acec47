"""Layering: tumorcam's own import graph has no cycles, and its layers import only those below them.

The graph is built with ``ast`` over ``src/tumorcam``: every ``import`` and
``from ... import`` statement counts, at module level and inside functions
(a function-local import is still a dependency; moving an import into a
function only hides a cycle, it does not break it).  Relative imports are
resolved, and ``from tumorcam.x import y`` is an edge to ``tumorcam.x.y``
when ``y`` is a submodule, else to ``tumorcam.x``.  Importing a submodule
also runs its parent packages' ``__init__``; that implicit edge is not
counted, only what the source names.

The module graph is then collapsed to layers (tumorcam's subpackages and top-level modules),
checked for cycles the same way and against the order of LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tumorcam"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# The layers, lowest first: a module may import its own layer and the layers before it, never one
# after it (counting function-local imports). The engine (explain, evaluate) knows nothing of run
# folders, training, models, the report or the CLI; the report reads run folders (runfolder) and
# the engine's statistics, never the stages that write them.
LAYERS = (
    "tumorcam",  # the package's lazy exports
    "tumorcam.errors", "tumorcam.logits", "tumorcam.io", "tumorcam.device", "tumorcam.guards",
    "tumorcam.data",
    "tumorcam.explain", "tumorcam.evaluate",  # the engine
    "tumorcam.config",
    "tumorcam.models", "tumorcam.training",
    "tumorcam.runfolder", "tumorcam.report",
    "tumorcam.runs",
    "tumorcam.nnunet",  # an nnU-Net v2 model folder as a model source, and its explain command
    "tumorcam.cli",
)

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


def test_no_import_cycles() -> None:
    _check_cycles(import_graph())


def test_no_package_cycles() -> None:
    _check_cycles(package_graph(import_graph()))


def test_every_layer_is_listed_and_imports_only_the_layers_below() -> None:
    graph = package_graph(import_graph())
    assert set(graph) == set(LAYERS), f"add the new layer(s) to LAYERS: {sorted(set(graph) - set(LAYERS))}"
    upward = [f"{a} -> {b}" for a in graph for b in graph[a] if LAYERS.index(b) > LAYERS.index(a)]
    assert not upward, "imports of a later layer:\n  " + "\n  ".join(sorted(upward))


def test_the_report_loads_no_model_code() -> None:
    """Building the report reads files: importing every report module loads neither the networks
    (tumorcam.models), training, nor the stages."""
    import subprocess
    import sys

    report = sorted(m for m in _modules() if m.startswith("tumorcam.report"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in report)
            + "print(sorted(m for m in sys.modules if m.startswith(('tumorcam.models', 'tumorcam.training', "
              "'tumorcam.runs.'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    direct = {m: sorted(t for t in import_graph()[m] if t.startswith(("tumorcam.models", "tumorcam.runs.")))
              for m in report}
    assert not any(direct.values()), direct


def _check_cycles(graph: dict[str, set[str]]) -> None:
    found = strongly_connected(graph)
    assert not found, ("import cycles (break them by moving code to the module it belongs in, not by hiding an "
                       "import):\n" + "\n".join(_describe(graph, c) for c in sorted(found, key=sorted)))
