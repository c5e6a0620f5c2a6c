"""The import graph of pipeline/, storage/ and assets/ has no cycle, and the ML core imports no Dagster.

Every import counts, function-level ones included, and so does a string naming a project module
(a registry that ``importlib`` loads, as ``pipeline.datasets.DATASETS``): a cycle hidden inside a
function still means two modules that cannot be read, tested or moved one without the other.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("pipeline", "storage", "assets")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))}


def project_module(name: str) -> str | None:
    """The project module an imported name lives in (``pipeline.metrics.table.x`` -> ``pipeline.metrics.table``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path) -> dict[str, set[str]]:
    """Every project module and outside package ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            names.add(node.value)  # a registry entry loaded with importlib
    return {
        "project": {project_module(name) for name in names if project_module(name)} - {module_name(path)},
        "outside": {name.split(".")[0] for name in names if not project_module(name)},
    }


GRAPH = {name: imports_of(path)["project"] for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_check_finds_a_cycle_through_a_function_level_import_and_a_registry():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert project_module("pipeline.metrics.table.comparison_columns") == "pipeline.metrics.table"


def test_no_import_cycles():
    assert cycles(GRAPH) == [], "modules that import each other (function-level imports count)"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not name.startswith("assets")))
def test_the_core_and_storage_import_no_dagster(module):
    assert "dagster" not in imports_of(MODULES[module])["outside"], f"{module} imports Dagster"


def test_the_core_does_not_import_the_assets():
    offenders = [m for m in GRAPH if not m.startswith("assets") and any(d.startswith("assets") for d in GRAPH[m])]
    assert offenders == []
