"""The layers of saedb (issue 38): the import graph has no circle, and no import hides inside a
function unless it defers a third-party package (the reason to import late: `saedb --help`
does not load torch); every import of a saedb module counts, at the top of a file, inside a
function or under TYPE_CHECKING alike."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "saedb"


@cache
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (``from a import b``: a, and a.b if b is a module)."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules())]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def imports_of(path: Path) -> tuple[list[str], list[list[str]]]:
    """(the modules imported when the file runs, the imports made inside its functions); the
    imports under TYPE_CHECKING are in neither."""
    at_load: list[str] = []
    in_functions: list[list[str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if names := imported(child):
                (in_functions.append(names) if inside else at_load.extend(names))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return at_load, in_functions


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(modules())
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            graph.add_edges_from((name, target) for target in imported(node) if target in modules() and target != name)
    return graph


@cache
def loading_graph() -> nx.DiGraph:
    """module -> what running it imports: saedb modules, the packages above a module (Python runs
    them first) and third-party packages (as "pkg:NAME")."""
    graph = nx.DiGraph()
    for name, path in modules().items():
        at_load, _ = imports_of(path)
        parts = name.split(".")
        graph.add_edges_from((name, ".".join(parts[:i])) for i in range(1, len(parts)))
        for target in at_load:
            top = target.split(".")[0]
            if target in modules():
                graph.add_edge(name, target)
            elif top not in ("saedb", *sys.stdlib_module_names):
                graph.add_edge(name, f"pkg:{top}")
    return graph


def third_party_loaded_by(module: str) -> set[str]:
    """The third-party packages that importing ``module`` loads."""
    graph = loading_graph()
    return {n for n in nx.descendants(graph, module) if n.startswith("pkg:")} if module in graph else set()


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 30 and graph.number_of_edges() > 50  # the graph was read
    assert list(nx.simple_cycles(graph)) == []


def test_an_import_inside_a_function_defers_a_third_party_package() -> None:
    """A late import of a saedb module must spare its caller a package (torch, openai,
    matplotlib, ...); one that spares nothing only hides the layers and moves to the top."""
    pointless = []
    for name, path in modules().items():
        _, in_functions = imports_of(path)
        for names in in_functions:
            target = [m for m in names if m in modules()][-1:]  # the most specific saedb module named
            if target and not third_party_loaded_by(target[0]) - third_party_loaded_by(name):
                pointless.append(f"{name} -> {target[0]}")
    assert len(modules()) > 30 and pointless == []


def test_no_module_is_over_450_lines() -> None:
    """A room a reader can take in: past ~450 lines a module is split by what it is about."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: size for name, size in sizes.items() if size > 450} == {}
