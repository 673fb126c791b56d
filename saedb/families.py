"""Feature families as in the paper (paper-notes §4): co-occurrence counted in SQL, then
maximum spanning trees over the clean features.

1. C[i, j] = documents where features i and j both fire (a self-join of sae_codes in SQL,
   materialised in feature_cooccurrence).
2. Only clean features (``feature_labels.clean``). C_norm[i, j] = C[i, j] / (C[i, i] + 1)
   is asymmetric; we symmetrise it by the geometric mean g = sqrt(C_norm[i, j] · C_norm[j, i])
   (about C_ij / sqrt(C_ii C_jj), the cosine of the two features' firing patterns) and keep
   edges with g >= 0.1 (first round) or 0.07 (later rounds), weight exp(g).
   Deviation: the paper's networkx call took whichever entry came later in row order, i.e.
   an arbitrary one of the two. With that entry, or the maximum, a dense hub feature links
   every feature that often fires with it, and on hh_ml MiniLM (k=32, n=3072, 746 clean
   features) its family swallowed 345 (paper's entry) or 314 (maximum) features, 10-11% of
   the SAE; the mean gave 243, the geometric mean 120 (3.9%; median family 8.5 children,
   578 of 746 clean features in a family), the minimum 50 but with only 363 in a family.
3. Maximum spanning tree (Kruskal); each edge points from the denser feature to the
   sparser (ties: lower id first).
4. Roots: in-degree 0 and out-degree > 2; a family is a root and all its descendants.
   Recursive subtrees: in every family with more than 2 nodes, remove the root; the
   children that then have out-degree > 2 root families of their own, and so on.
5. Four rounds: the original and 3 more, each without the previous round's top-level roots.
   A later family with the same root replaces the earlier one.
6. Keep families with more than 3 descendants; of two families whose members overlap by
   Jaccard > 0.6, the smaller is dropped.
Every member's parent is its parent in the family's tree, so every stored edge lies inside
its family.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.interp.examples import document_text, random_inactive_documents
from saedb.interp.labellers import LLMLabeller, Predictor
from saedb.interp.scoring import f1_score, pearson
from saedb.interp.text import content_runs, normal_form, surface_form
from saedb.llm import MalformedReplyError

FIRST_THRESHOLD, LATER_THRESHOLD = 0.1, 0.07
ROUNDS = 4
MIN_OUT_DEGREE = 3  # a root has out-degree > 2 in the tree
MIN_DESCENDANTS = 3  # a family is kept with more than this many descendants
MAX_JACCARD = 0.6
FAMILY_EXAMPLES = 4  # activating and non-activating abstracts scored per family

COOCCURRENCE_SQL = """
INSERT INTO feature_cooccurrence (model_id, feature_i, feature_j, n_docs)
SELECT a.model_id, a.feature_id, b.feature_id, count(*)
FROM sae_codes a
JOIN sae_codes b ON b.model_id = a.model_id AND b.doc_id = a.doc_id AND b.feature_id >= a.feature_id
WHERE a.model_id = ?
GROUP BY a.model_id, a.feature_id, b.feature_id
"""

CLEAN_FEATURES_SQL = """
SELECT feature_id, label FROM feature_best_labels WHERE model_id = ? AND clean ORDER BY feature_id
"""

# The pool of a family's activating examples: each member's top decile of activations.
TOP_DECILE_SQL = """
SELECT title, abstract FROM (
    SELECT p.title, p.abstract, p.doc_id,
           row_number() OVER (PARTITION BY c.feature_id ORDER BY c.activation DESC, c.doc_id) AS rank,
           count(*) OVER (PARTITION BY c.feature_id) AS n
    FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id
    WHERE c.model_id = ? AND c.feature_id IN ({marks})
) ranked
WHERE rank <= greatest(1, n / 10) AND length(abstract) > 100
ORDER BY (doc_id * 2654435761 + ?) % 1000003, doc_id
"""


@dataclass(frozen=True)
class Family:
    root: int
    iteration: int
    members: dict[int, tuple[int | None, int]]  # feature -> (parent, depth); the root has parent None

    @property
    def children(self) -> set[int]:
        return set(self.members) - {self.root}


@dataclass
class FamilyStats:
    """Per-family parts of the paper's statistics (§4.2), summed by the family_stats view."""

    cooccurrence_ratio: float | None = None  # mean(parent row over children) / mean(children block)
    in_block: tuple[float, int] = (0.0, 0)  # sum and count of M over member pairs
    off_block: tuple[float, int] = (0.0, 0)  # over (member, clean non-member) pairs
    random_in_block: tuple[float, int] = (0.0, 0)  # the same for a random set of clean features of equal size
    random_off_block: tuple[float, int] = (0.0, 0)


@dataclass
class NamedFamily:
    family: Family
    name: str
    f1: float | None = None
    pearson: float | None = None
    stats: FamilyStats = field(default_factory=FamilyStats)


def compute_cooccurrence(backend: Backend, model_id: int) -> int:
    """(Re)materialise feature_cooccurrence for a model; returns the number of pairs."""
    backend.model_row(model_id)  # clear error for an unknown model
    with backend.transaction():
        backend.execute("DELETE FROM feature_cooccurrence WHERE model_id = ?", (model_id,))
        backend.execute(COOCCURRENCE_SQL, (model_id,))
    return int(backend.query("SELECT count(*) FROM feature_cooccurrence WHERE model_id = ?", (model_id,))[0][0])


def cooccurrence_counts(backend: Backend, model_id: int, features: list[int]) -> np.ndarray:
    """C restricted to ``features`` as a symmetric dense matrix (diagonal = document counts)."""
    position = {f: i for i, f in enumerate(features)}
    counts = np.zeros((len(features), len(features)), dtype=np.float64)
    for i, j, n in backend.query("SELECT feature_i, feature_j, n_docs FROM feature_cooccurrence WHERE model_id = ?", (model_id,)):
        if i in position and j in position:
            counts[position[i], position[j]] = counts[position[j], position[i]] = n
    return counts


def cooccurrence_graph(counts: np.ndarray, features: list[int], keep: list[int], threshold: float) -> nx.Graph:
    """Graph over ``keep`` (indices into ``features``): weight exp(g) where the geometric mean
    g of the two normalised entries reaches ``threshold``."""
    diag = np.diag(counts)
    sub = counts[np.ix_(keep, keep)]
    normalised = sub / (diag[keep][:, None] + 1)
    both = np.sqrt(normalised * normalised.T)
    np.fill_diagonal(both, 0)
    graph = nx.Graph()
    graph.add_nodes_from(features[i] for i in keep)
    rows, cols = np.nonzero(np.triu(both >= threshold, k=1))
    graph.add_weighted_edges_from((features[keep[r]], features[keep[c]], math.exp(both[r, c])) for r, c in zip(rows, cols))
    return graph


def directed_tree(graph: nx.Graph, density: dict[int, float]) -> nx.DiGraph:
    """The maximum spanning forest with edges from the denser feature to the sparser."""
    tree = nx.maximum_spanning_tree(graph, weight="weight", algorithm="kruskal")
    directed = nx.DiGraph()
    directed.add_nodes_from(tree.nodes)
    for u, v in tree.edges:
        parent, child = (u, v) if (density[u], -u) >= (density[v], -v) else (v, u)
        directed.add_edge(parent, child)
    return directed


def _roots(tree: nx.DiGraph) -> list[int]:
    return sorted(f for f in tree if tree.in_degree(f) == 0 and tree.out_degree(f) >= MIN_OUT_DEGREE)


def _family(tree: nx.DiGraph, root: int, iteration: int) -> Family:
    """A root and its descendants. Orienting tree edges by density can give a feature two
    parents; its parent here is the one on its path from this root, so it lies in the family."""
    depths = nx.single_source_shortest_path_length(tree, root)
    members: dict[int, tuple[int | None, int]] = {root: (None, 0)}
    members.update({f: (parent, depths[f]) for f, parent in nx.bfs_predecessors(tree, root)})
    return Family(root=root, iteration=iteration, members=members)


def subtree_families(tree: nx.DiGraph, iteration: int) -> tuple[list[Family], list[int]]:
    """Families of one tree, recursive subtrees included, and the top-level roots."""
    top = _roots(tree)
    families, queue = [], [_family(tree, r, iteration) for r in top]
    while queue:
        family = queue.pop(0)
        families.append(family)
        if len(family.members) > 2:
            rest = tree.subgraph(family.children).copy()
            queue.extend(_family(rest, r, iteration) for r in _roots(rest))
    return families, top


def find_families(counts: np.ndarray, features: list[int], rounds: int = ROUNDS) -> list[Family]:
    """The paper's algorithm over clean ``features`` with co-occurrence ``counts`` (§4.1)."""
    density = {f: float(counts[i, i]) for i, f in enumerate(features)}
    by_root: dict[int, Family] = {}
    keep = list(range(len(features)))
    for iteration in range(rounds):
        threshold = FIRST_THRESHOLD if iteration == 0 else LATER_THRESHOLD
        tree = directed_tree(cooccurrence_graph(counts, features, keep, threshold), density)
        families, top = subtree_families(tree, iteration)
        for family in families:
            if len(family.children) > MIN_DESCENDANTS:
                by_root[family.root] = family  # a later round replaces the same root's family
        if not top:
            break
        removed = set(top)
        keep = [i for i in keep if features[i] not in removed]
    return deduplicate(sorted(by_root.values(), key=lambda f: (f.iteration, f.root)))


def deduplicate(families: list[Family], max_jaccard: float = MAX_JACCARD) -> list[Family]:
    """Drop the smaller of every two families whose children overlap by Jaccard > max_jaccard."""
    kept: list[Family] = []
    for family in sorted(families, key=lambda f: (-len(f.children), f.iteration, f.root)):
        if all(len(family.children & k.children) / len(family.children | k.children) <= max_jaccard for k in kept):
            kept.append(family)
    return sorted(kept, key=lambda f: (f.iteration, f.root))


def offline_family_name(family: Family, labels: dict[int, str]) -> str:
    """The phrase that most member labels share (the root's label counts twice); else the root's label."""
    votes: Counter = Counter()
    spellings: dict[tuple[str, ...], list[str]] = {}
    for feature in family.members:
        for run in {tuple(run) for run in content_runs(labels.get(feature, ""))}:
            key = tuple(normal_form(w) for w in run)
            votes[key] += 2 if feature == family.root else 1
            spellings.setdefault(key, []).append(" ".join(run))
    shared = [(n, key) for key, n in votes.items() if n >= 3]
    if not shared:
        return labels.get(family.root, f"feature {family.root}")
    _, key = max(shared, key=lambda item: (item[0], len(item[1]), item[1]))
    return surface_form(spellings[key])


def llm_family_namer(labeller: LLMLabeller) -> Callable[[Family, dict[int, str]], str]:
    """A namer that asks the LLM labeller; a malformed reply (counted by the labeller's client,
    whose verdict rule stops a run that is mostly malformed) falls back to the offline name,
    as a malformed interpreter reply leaves one feature unlabelled and the run goes on."""
    def name(family: Family, labels: dict[int, str]) -> str:
        try:
            return labeller.name_family(labels[family.root], [labels[c] for c in sorted(family.children)])
        except MalformedReplyError:
            return offline_family_name(family, labels)

    return name


def family_scores(backend: Backend, model_id: int, family: Family, name: str, predictor: Predictor,
                  seed: int = 0) -> tuple[float | None, float]:
    """(Pearson, F1) of the family name on 4 abstracts from the members' top deciles and 4
    on which no member fires (the paper used only the parent's: a quirk not kept)."""
    rng = random.Random(seed * 1_000_003 + family.root)
    members = sorted(family.members)
    marks = ", ".join("?" * len(members))
    rows = backend.query(TOP_DECILE_SQL.format(marks=marks), (model_id, *members, rng.randrange(1_000_003)))
    positives = [document_text(t, a) for t, a in rows[:FAMILY_EXAMPLES]]
    negatives = random_inactive_documents(backend, model_id, members, FAMILY_EXAMPLES, rng)
    truth = [1] * len(positives) + [0] * len(negatives)
    scores = predictor.predict(name, positives + negatives)
    return pearson(scores, truth), f1_score(scores, truth)


def family_statistics(counts: np.ndarray, features: list[int], family: Family, rng: random.Random) -> FamilyStats:
    """The parts of the paper's co-occurrence ratio and block-diagonality for one family,
    over M = C / min(C_ii, C_jj) among the clean features."""
    diag = np.diag(counts)
    m = counts / np.maximum(np.minimum.outer(diag, diag), 1)
    np.fill_diagonal(m, 1.0)
    position = {f: i for i, f in enumerate(features)}
    ids = [position[f] for f in family.members]
    parent, children = position[family.root], [position[f] for f in family.children]
    block = m[np.ix_(children, children)].mean()
    ratio = float(m[parent, children].mean() / block) if block > 0 else None

    def parts(rows: list[int]) -> tuple[tuple[float, int], tuple[float, int]]:
        inside = np.zeros(len(features), dtype=bool)
        inside[rows] = True
        sub = m[rows]
        in_values = sub[:, inside].sum() - len(rows)  # the diagonal's 1s are not pairs
        return (float(in_values), len(rows) * (len(rows) - 1)), (float(sub[:, ~inside].sum()), len(rows) * int((~inside).sum()))

    in_block, off_block = parts(ids)
    random_in, random_off = parts(rng.sample(range(len(features)), len(ids)))
    return FamilyStats(ratio, in_block, off_block, random_in, random_off)


def store_families(backend: Backend, model_id: int, families: list[NamedFamily]) -> None:
    """Replace a model's families and their members."""
    with backend.transaction():
        backend.execute("DELETE FROM family_members WHERE model_id = ?", (model_id,))
        backend.execute("DELETE FROM feature_families WHERE model_id = ?", (model_id,))
        for family_id, named in enumerate(families, start=1):
            f, s = named.family, named.stats
            backend.execute(
                "INSERT INTO feature_families (model_id, family_id, root_feature, iteration, size, label, f1, pearson, "
                "cooccurrence_ratio, in_block_sum, in_block_n, off_block_sum, off_block_n, random_in_block_sum, "
                "random_in_block_n, random_off_block_sum, random_off_block_n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model_id, family_id, f.root, f.iteration, len(f.members), named.name, named.f1, named.pearson,
                 s.cooccurrence_ratio, *s.in_block, *s.off_block, *s.random_in_block, *s.random_off_block),
            )
            for feature, (parent, depth) in sorted(f.members.items()):
                backend.execute("INSERT INTO family_members VALUES (?, ?, ?, ?, ?)", (model_id, family_id, feature, parent, depth))


def has_labels(backend: Backend, model_id: int) -> bool:
    """Whether any feature of the model has a label (families need labelled features)."""
    return bool(backend.query("SELECT 1 FROM feature_labels WHERE model_id = ? LIMIT 1", (model_id,)))


def build_families(
    backend: Backend,
    model_id: int,
    predictor: Predictor | None = None,
    namer: Callable[[Family, dict[int, str]], str] = offline_family_name,
    seed: int = 0,
    with_cooccurrence: bool = True,
) -> list[NamedFamily]:
    """Co-occurrence in SQL (unless ``with_cooccurrence`` is False: the stored one is used), the
    family algorithm over clean features, names, scores (when a predictor is given) and
    statistics, all stored in SQL tables. A model without any labelled feature is an error: the
    features are labelled first (and their labels judged clean or not)."""
    if not has_labels(backend, model_id):
        raise InvalidInputError(f"model {model_id} has no labelled feature yet: run `saedb interp {model_id}` first")
    if with_cooccurrence:
        compute_cooccurrence(backend, model_id)
    labels = dict(backend.query(CLEAN_FEATURES_SQL, (model_id,)))
    features = sorted(labels)
    counts = cooccurrence_counts(backend, model_id, features)
    rng = random.Random(seed)
    named = []
    for family in find_families(counts, features):
        name = namer(family, labels)
        entry = NamedFamily(family, name, stats=family_statistics(counts, features, family, rng))
        if predictor is not None:
            entry.pearson, entry.f1 = family_scores(backend, model_id, family, name, predictor, seed)
        named.append(entry)
    store_families(backend, model_id, named)
    return named
