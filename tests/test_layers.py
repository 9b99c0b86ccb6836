"""The package's layers, read from its source: no import cycle (also none hidden in a function
body or under ``if TYPE_CHECKING:``), and the readers stay readers."""

from __future__ import annotations

import ast
from pathlib import Path

import poptune

PACKAGE = Path(poptune.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every poptune module that ``name`` imports: at module level, inside functions and under
    ``if TYPE_CHECKING:`` (a cycle through annotations is still a cycle a reader has to hold).
    Importing ``package.sub`` from outside ``package`` also runs ``package/__init__.py``, so it
    counts as importing ``package`` too."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    inside = {name, *_parents(name)}  # packages already running when ``name`` runs
    found |= {parent for target in found for parent in _parents(target) if parent not in inside}
    return {m for m in found if m in modules and m != name}


def _parents(module: str) -> list[str]:
    """The packages ``module`` sits in, outermost first (``a.b.c``: ``a``, ``a.b``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_graph_is_read_from_the_source():
    graph = _graph()
    assert "poptune.population" in graph["poptune.cli"]
    assert "poptune.results" in graph["poptune.report._model"]
    # a function-level import counts (the cli imports the dashboard only when it serves)
    assert "poptune.dashboard" in graph["poptune.cli"]
    # an import under TYPE_CHECKING counts (peers names Storage in annotations only)
    assert "poptune.storage" in graph["poptune.peers"]
    # importing a package's submodule runs the package's __init__ first
    assert {"poptune.storage._memory", "poptune.storage"} <= graph["poptune.testing"]
    assert "poptune.storage" not in graph["poptune.storage._memory"]  # its own package


def test_there_is_no_import_cycle():
    graph = _graph()
    # The package's __init__ re-exports everything: every module's path to it is fine, but no
    # module below may import the top-level package back.
    for name, targets in graph.items():
        assert name == "poptune" or "poptune" not in targets, f"{name} imports poptune itself"
    assert _cycles(graph) == []


def test_readers_import_no_training_layer():
    """Result, the report, the dashboard and the trackers read the storage; they never import
    the layers that train (population, worker, runners) or user code."""
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    training = {"poptune.population", "poptune.worker", "poptune.runners"}
    for reader in ("poptune.results", "poptune.report", "poptune.dashboard", "poptune.trackers"):
        assert not reach(reader) & training, f"{reader} reaches {reach(reader) & training}"
    assert "poptune.report" not in reach("poptune.results")
