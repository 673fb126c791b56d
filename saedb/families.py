"""Feature families (O'Neill et al. 2024): co-occurrence counted in SQL, then a maximum
spanning tree over the normalised co-occurrence graph.

1. C[i, j] = documents where features i and j both fire (a self-join of sae_codes in SQL,
   materialised in feature_cooccurrence).
2. Normalise C[i, j] / (C[i, i] + 1), keep edges >= threshold (0.1), weight exp(value).
3. Maximum spanning tree (networkx); direct each edge from the denser feature to the sparser.
4. Roots: in-degree 0 and out-degree > 2; a family is a root and its descendants.
5. Three iterations, each removing the previous roots to reveal finer families.
6. Drop families whose members overlap an earlier family's by Jaccard > 0.6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from saedb.backends import Backend

COOCCURRENCE_SQL = """
INSERT INTO feature_cooccurrence (model_id, feature_i, feature_j, n_docs)
SELECT a.model_id, a.feature_id, b.feature_id, count(*)
FROM sae_codes a
JOIN sae_codes b ON b.model_id = a.model_id AND b.doc_id = a.doc_id AND b.feature_id >= a.feature_id
WHERE a.model_id = ?
GROUP BY a.model_id, a.feature_id, b.feature_id
"""


# max(C_ij / (C_ii + 1), C_ij / (C_jj + 1)) >= t  <=>  C_ij >= t * (min(C_ii, C_jj) + 1): filtered in SQL.
EDGES_SQL = """
SELECT c.feature_i, c.feature_j, c.n_docs
FROM feature_cooccurrence c
JOIN feature_cooccurrence di ON di.model_id = c.model_id AND di.feature_i = c.feature_i AND di.feature_j = c.feature_i
JOIN feature_cooccurrence dj ON dj.model_id = c.model_id AND dj.feature_i = c.feature_j AND dj.feature_j = c.feature_j
WHERE c.model_id = ? AND c.feature_i < c.feature_j AND c.n_docs >= ? * (least(di.n_docs, dj.n_docs) + 1)
"""


@dataclass(frozen=True)
class Family:
    root: int
    iteration: int
    members: dict[int, tuple[int | None, int]]  # feature -> (parent, depth)


def compute_cooccurrence(backend: Backend, model_id: int) -> int:
    """(Re)materialise feature_cooccurrence for a model; returns the number of pairs."""
    backend.model_row(model_id)  # clear error for an unknown model
    with backend.transaction():
        backend.execute("DELETE FROM feature_cooccurrence WHERE model_id = ?", (model_id,))
        backend.execute(COOCCURRENCE_SQL, (model_id,))
    return int(backend.query("SELECT count(*) FROM feature_cooccurrence WHERE model_id = ?", (model_id,))[0][0])


def cooccurrence_graph(backend: Backend, model_id: int, threshold: float = 0.1) -> tuple[nx.Graph, dict[int, int]]:
    """Undirected graph of normalised co-occurrence >= threshold (weight exp(value)) and
    each feature's document count."""
    counts = dict(backend.query(
        "SELECT feature_i, n_docs FROM feature_cooccurrence WHERE model_id = ? AND feature_i = feature_j", (model_id,)
    ))
    graph = nx.Graph()
    graph.add_nodes_from(counts)
    for i, j, both in backend.query(EDGES_SQL, (model_id, threshold)):
        graph.add_edge(i, j, weight=math.exp(max(both / (counts[i] + 1), both / (counts[j] + 1))))
    return graph, counts


def find_families(graph: nx.Graph, counts: dict[int, int], iterations: int = 3, min_children: int = 3,
                  max_overlap: float = 0.6) -> list[Family]:
    """Families from the maximum spanning tree, peeling off roots for ``iterations`` rounds."""
    families: list[Family] = []
    graph = graph.copy()
    for iteration in range(iterations):
        tree = nx.maximum_spanning_tree(graph, weight="weight")
        directed = nx.DiGraph()
        directed.add_nodes_from(tree.nodes)
        for u, v in tree.edges:  # denser (more documents) -> sparser; ties by feature id
            parent, child = (u, v) if (counts[u], -u) >= (counts[v], -v) else (v, u)
            directed.add_edge(parent, child)
        roots = [f for f in directed if directed.in_degree(f) == 0 and directed.out_degree(f) >= min_children]
        for root in sorted(roots):
            depths = nx.single_source_shortest_path_length(directed, root)
            members = {f: (None if f == root else next(iter(directed.predecessors(f))), depth) for f, depth in depths.items()}
            candidate = set(members)
            if all(len(candidate & set(f.members)) / len(candidate | set(f.members)) <= max_overlap for f in families):
                families.append(Family(root=root, iteration=iteration, members=members))
        if not roots:
            break
        graph.remove_nodes_from(roots)
    return families


def store_families(backend: Backend, model_id: int, families: list[Family]) -> None:
    """Replace a model's families; each is labelled after its root's best label."""
    labels = dict(backend.query("SELECT feature_id, label FROM feature_best_labels WHERE model_id = ?", (model_id,)))
    with backend.transaction():
        backend.execute("DELETE FROM family_members WHERE model_id = ?", (model_id,))
        backend.execute("DELETE FROM feature_families WHERE model_id = ?", (model_id,))
        for family_id, family in enumerate(families, start=1):
            label = labels.get(family.root, f"feature {family.root}")
            backend.execute(
                "INSERT INTO feature_families VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, family_id, family.root, family.iteration, len(family.members), label),
            )
            for feature, (parent, depth) in sorted(family.members.items()):
                backend.execute("INSERT INTO family_members VALUES (?, ?, ?, ?, ?)", (model_id, family_id, feature, parent, depth))


def build_families(backend: Backend, model_id: int, threshold: float = 0.1) -> list[Family]:
    """Co-occurrence in SQL, families with networkx, results back in SQL tables."""
    compute_cooccurrence(backend, model_id)
    families = find_families(*cooccurrence_graph(backend, model_id, threshold))
    store_families(backend, model_id, families)
    return families
