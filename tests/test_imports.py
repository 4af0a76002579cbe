"""The import graph of msflow: no cycles, and no import from a lower layer into a higher one.

DESIGN.md section 1: data flows down, cli -> analysis -> train -> models -> transforms -> nn. The
graph is read from the source (``ast``), function-level imports included: an import moved into
a function to dodge a cycle at import time is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "msflow"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def import_graph() -> dict[str, set[str]]:
    """``{module: msflow modules it imports}``; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets: set[str | None] = set()
        stack: list[ast.AST] = [ast.parse(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("msflow"):
                targets |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names if alias.name.startswith("msflow")}
            stack.extend(child for child in ast.iter_child_nodes(node) if not _type_checking_only(child))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert len(graph) > 100
    assert "msflow.analysis.ranking" in graph["msflow.analysis.tiling"]  # also imported at the top
    assert "msflow.analysis.interpolate" in graph["msflow.cli.model_cmds"]  # imported inside cmd_interpolate


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


# (lower layer, higher layers it must never import)
LAYERS = [
    ("msflow.nn", ("msflow.transforms", "msflow.models", "msflow.train", "msflow.analysis", "msflow.cli")),
    ("msflow.transforms", ("msflow.models", "msflow.train", "msflow.analysis", "msflow.cli")),
    ("msflow.models", ("msflow.train", "msflow.analysis", "msflow.cli")),
    ("msflow.train", ("msflow.runs", "msflow.analysis", "msflow.cli")),
    ("msflow.runs", ("msflow.analysis", "msflow.cli")),
    ("msflow.analysis", ("msflow.cli",)),
]


@pytest.mark.parametrize(("lower", "higher"), LAYERS)
def test_no_import_up_the_layers(lower: str, higher: tuple[str, ...]) -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module == lower or module.startswith(f"{lower}.")
        for target in targets
        if target.startswith(higher)
    )
    assert upward == []
