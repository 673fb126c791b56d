"""The import graph of saedb has no circle (issue 38): every import of a saedb module counts,
at the top of a file, inside a function or under TYPE_CHECKING alike."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "saedb"


def import_graph() -> nx.DiGraph:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph.add_edges_from((name, target) for target in targets if target in modules and target != name)
    return graph


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert graph.number_of_nodes() > 30 and graph.number_of_edges() > 50  # the graph was read
    assert list(nx.simple_cycles(graph)) == []
