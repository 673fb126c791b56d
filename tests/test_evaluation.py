"""The steering evaluation (paper-notes §5): the paper's case protocol, interventions that rank
as the SQL search does, judges that are not calibrated on the SAE's documents, controls, and
results stored in SQL on real DuckDB and Postgres."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.embedders import WordLlamaEmbedder
from saedb.errors import InvalidInputError
from saedb.evaluation import file_queries, get_judge, get_rewriter, run_evaluation, store_run, title_queries
from saedb.evaluation.cases import build_cases
from saedb.evaluation.interventions import add, clamp
from saedb.evaluation.judges import CategoriesJudge, Doc, EmbedderJudge, LLMJudge
from saedb.evaluation.rewriters import LLMRewriter
from saedb.evaluation.runner import exact_index
from saedb.evaluation.topics import Topic, category_topics, topics_of
from saedb.families import build_families
from saedb.interp import OfflineLabeller, corpus_stats, run_autointerp
from saedb.llm import ChatModel
from saedb.loaders import load_corpus
from saedb.search import Steering, search
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import ML, assert_nearest_first, write_slice
from tests.scripted_chat import ScriptedChatHandler, serving


PRECISION = 0.4  # category topics: a 128-latent SAE on 800 abstracts predicts categories less sharply than a full one


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def evaluated_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """800 real ML abstracts (7 arXiv categories), a small SAE, offline labels (all treated as
    clean, as few are at this size) and families."""
    folder = tmp_path_factory.mktemp("eval")
    if request.param == "duckdb":
        url = str(folder / "eval.duckdb")
    else:
        server = request.getfixturevalue("pg_server")
        name = f"e_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        url = server.replace("/postgres?", f"/{name}?")
    with connect(url) as backend:
        load_corpus(backend, write_slice(ML, folder / "ml_800.jsonl.gz", 800), WordLlamaEmbedder(), batch_size=400, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=600, batch_size=64, lr=1e-3), "eval")
        run_autointerp(backend, model_id, OfflineLabeller(corpus_stats(backend)), limit=60, concurrency=2)
        backend.execute("UPDATE feature_labels SET clean = TRUE WHERE model_id = ?", (model_id,))
        build_families(backend, model_id)
    yield url, model_id


@pytest.fixture
def evaluated(evaluated_db: tuple[str, int]) -> Iterator[tuple[Backend, int]]:
    with connect(evaluated_db[0]) as backend:
        yield backend, evaluated_db[1]


def doc(doc_id: int, title: str, categories: tuple[str, ...] = ()) -> Doc:
    return Doc(doc_id, title, title, categories)


def test_cases_follow_the_paper_protocol(evaluated: tuple[Backend, int]) -> None:
    backend, model_id = evaluated
    sae, embedder = backend.load_sae(model_id), WordLlamaEmbedder()
    queries = title_queries(backend, 40, seed=1)
    vectors = embedder.embed([q.text for q in queries])
    codes = sae.encode(vectors)
    for kind in ("labels", "categories"):
        topics = topics_of(backend, model_id, kind, category_precision=PRECISION)
        cases = build_cases(queries, vectors, codes, topics, kind, seed=1)
        assert len(cases) >= 20
        for case in cases:
            active = {f for f, _ in sae.encode(case.vector).rows()[0]}
            assert active & set(case.down.features), "down: a topic active in the query"
            assert not any(active & set(t.features) for t in topics if t.key == case.up.key), "up: not active"
            assert len(case.options) == 5 and len({t.key for t in case.options}) == 5
        assert len({c.up_option for c in cases}) > 2, "options are shuffled"


def test_category_topics_match_a_direct_count(evaluated: tuple[Backend, int]) -> None:
    backend, model_id = evaluated
    docs = {d: set(c) for d, c in backend.query("SELECT doc_id, categories FROM papers")}
    firing: dict[int, set[int]] = {}
    for doc_id, feature in backend.query("SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ?", (model_id,)):
        firing.setdefault(feature, set()).add(doc_id)
    base = {c: sum(c in cats for cats in docs.values()) / len(docs) for c in {c for cats in docs.values() for c in cats}}
    expected = set()
    for feature, doc_ids in firing.items():
        for category in base:
            precision = sum(category in docs[d] for d in doc_ids) / len(doc_ids)
            if len(doc_ids) >= 20 and precision >= PRECISION and precision >= 2 * base[category]:
                expected.add((feature, category))
    topics = category_topics(backend, model_id, min_precision=PRECISION)
    assert {(t.features[0], t.category) for t in topics} == expected and len({t.category for t in topics}) >= 5


def test_addition_ranks_as_the_sql_search_with_steer_many(evaluated: tuple[Backend, int]) -> None:
    backend, model_id = evaluated
    sae, embedder = backend.load_sae(model_id), WordLlamaEmbedder()
    queries = title_queries(backend, 10, seed=2)
    vectors = embedder.embed([q.text for q in queries])
    cases = build_cases(queries, vectors, sae.encode(vectors), topics_of(backend, model_id, "labels"), "labels", seed=2)
    index = exact_index(backend)
    if backend.dialect == "postgres":  # exact search: HNSW is approximate (its recall is the search issue's)
        backend.execute("SET enable_indexscan = off")
    for case, (a_up, a_down) in zip(cases[:4], [(0.5, -0.5), (1.0, 0.0), (2.5, -1.0), (0.1, -5.0)]):
        (up,), (down,) = case.up.features, case.down.features
        steering = [Steering("feature", up, a_up, model_id, "add"), Steering("feature", down, a_down, model_id, "add")]
        in_sql = [hit.doc_id for hit in search(backend, case.vector, limit=10, steering=steering)]
        assert_nearest_first(in_sql, index.doc_ids, index.unit_rows, add(sae, case, a_up, a_down), 10)


def test_title_queries_never_find_their_own_paper(evaluated: tuple[Backend, int]) -> None:
    backend, _ = evaluated
    index = exact_index(backend)
    for query in title_queries(backend, 10, seed=3):
        vector = backend.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (query.own_doc,))
        assert index.top(vector, 10)[0][0] == query.own_doc  # its own abstract is the nearest ...
        assert query.own_doc not in index.top(vector, 10, exclude=query.own_doc)[0]  # ... and is kept out


def test_a_number_of_title_queries_below_one_is_a_clear_error(evaluated: tuple[Backend, int]) -> None:
    """-3 raised random.sample's ValueError (a traceback from saedb eval); 0 ran and blamed the queries' topics."""
    backend, _ = evaluated
    for n in (0, -3):
        with pytest.raises(InvalidInputError, match=f"n_queries must be at least 1, got {n}"):
            title_queries(backend, n, seed=0)


def test_clamp_sets_the_latents_and_keeps_k(evaluated: tuple[Backend, int]) -> None:
    backend, model_id = evaluated
    sae, embedder = backend.load_sae(model_id), WordLlamaEmbedder()
    queries = title_queries(backend, 10, seed=4)
    vectors = embedder.embed([q.text for q in queries])
    case = build_cases(queries, vectors, sae.encode(vectors), topics_of(backend, model_id, "labels"), "labels", seed=4)[0]
    codes = sae.encode(case.vector)
    latents = dict(codes.rows()[0])
    latents.pop(case.down.features[0])
    latents[case.up.features[0]] = 10.0
    kept = sorted(latents.items(), key=lambda kv: -kv[1])[: sae.k]
    expected = sum(v * sae.w_dec[f] for f, v in kept) + sae.b_pre
    np.testing.assert_allclose(clamp(sae, case, 10.0), expected, rtol=1e-5, atol=1e-5)


def test_judges_name_the_topic_that_moved() -> None:
    rng = random.Random(0)
    options = [Topic(n, (i,), category=c) for i, (n, c) in enumerate(
        [("galaxy clusters", "astro-ph.CO"), ("neural networks", "cs.NE"), ("speech recognition", "cs.CL"),
         ("protein folding", "q-bio.BM"), ("graph theory", "math.CO")])]
    before = [doc(1, "Weak lensing masses of galaxy clusters", ("astro-ph.CO",)), doc(2, "Dark matter in galaxy clusters", ("astro-ph.CO",)),
              doc(3, "Protein folding pathways", ("q-bio.BM",))]
    after = [doc(4, "Training deep neural networks", ("cs.NE",)), doc(5, "Recurrent neural networks for sequences", ("cs.NE",)),
             doc(3, "Protein folding pathways", ("q-bio.BM",))]
    assert CategoriesJudge().choose(options, before, after, rng) == (1, 0)
    assert EmbedderJudge(WordLlamaEmbedder(), "minilm").choose(options, before, after, rng) == (1, 0)


def test_a_judge_that_sees_no_change_scores_chance() -> None:
    rng = random.Random(0)
    options = [Topic(f"t{i}", (i,), category=f"c{i}") for i in range(5)]
    same = [doc(1, "a", ("c0",)), doc(2, "b", ("c3",))]
    picks = [CategoriesJudge().choose(options, same, same, rng) for _ in range(2000)]
    up, down = np.mean([u == 0 for u, _ in picks]), np.mean([d == 1 for _, d in picks])
    assert 0.17 < up < 0.23 and 0.17 < down < 0.23


def test_no_judge_embeds_with_the_database_embedder(evaluated: tuple[Backend, int]) -> None:
    backend, _ = evaluated
    with pytest.raises(InvalidInputError, match="must not be the one"):
        get_judge("embedder:wordllama-256", backend)
    with pytest.raises(InvalidInputError, match="unknown judge"):
        get_judge("predictor", backend)


def test_run_is_stored_with_controls(evaluated: tuple[Backend, int]) -> None:
    backend, model_id = evaluated
    queries = title_queries(backend, 15, seed=5)
    run = run_evaluation(backend, model_id, WordLlamaEmbedder(), CategoriesJudge(), queries, get_rewriter("naive-append"),
                         "15 titles", grid="small", seed=5, category_precision=PRECISION)
    by_setting = {(r.method, r.a_up, r.a_down): r for r in run.rows}
    methods = {r.method for r in run.rows}
    assert methods == {"unmodified", "rewrite:naive-append", "add", "clamp", "random-direction"}
    assert len([m for m in by_setting if m[0] == "add"]) == 9 and len([m for m in by_setting if m[0] == "clamp"]) == 3
    assert by_setting[("unmodified", 0.0, 0.0)].cosine == pytest.approx(1.0)
    for (method, a_up, a_down), row in by_setting.items():
        if method == "random-direction":  # the control sits at the cosine of the steering it matches
            assert row.cosine == pytest.approx(by_setting[("add", a_up, a_down)].cosine, abs=1e-5)
    assert by_setting[("add", 10.0, -5.0)].cosine < by_setting[("add", 0.5, 0.0)].cosine
    run_id = store_run(backend, run)
    stored = backend.query("SELECT method, a_up, a_down, n_cases, cosine, up_accuracy, down_accuracy FROM eval_latest "
                           "WHERE model_id = ? AND judge = 'categories'", (model_id,))
    assert len(stored) == len(run.rows) and {r[0] for r in stored} == methods
    assert backend.query("SELECT judge, rewriter, n_queries, grid FROM eval_runs WHERE run_id = ?", (run_id,)) == [
        ("categories", "naive-append", 15, "small")]


def test_queries_file(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("graph neural networks\n\n  image segmentation \ngraph neural networks\n", encoding="utf-8")
    assert [q.text for q in file_queries(path)] == ["graph neural networks", "image segmentation"]
    assert all(q.own_doc is None for q in file_queries(path))
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="no queries"):
        file_queries(path)


class ScriptedChat(ScriptedChatHandler):
    """The judge answers 'FINAL: 3, 1' (nothing usable when the prompt holds 'unanswerable'),
    the rewriter ends with FINAL: <query>."""

    prompts: list[str] = []

    def reply(self, system: str, user: str) -> str:
        ScriptedChat.prompts.append(user)
        if "rewritten query" in user:
            return "Thinking...\nFINAL: dark matter halos and neural networks"
        if "unanswerable" in user:
            return "I cannot tell."
        return "Original: clusters. Modified: networks.\nFINAL: 3, 1"


@pytest.fixture
def scripted_chat() -> Iterator[ChatModel]:
    ScriptedChat.prompts = []
    with serving(ScriptedChat) as url:
        yield ChatModel("scripted", base_url=url, api_key="test")


def test_llm_judge_and_rewriter_speak_the_paper_protocol(scripted_chat: ChatModel) -> None:
    options = [Topic(n, (i,)) for i, n in enumerate(["neural networks", "speech", "galaxy clusters", "proteins", "graphs"])]
    before, after = [doc(1, "Galaxy clusters")], [doc(2, "Neural networks")]
    assert LLMJudge(scripted_chat).choose(options, before, after, random.Random(0)) == (2, 0)
    prompt = ScriptedChat.prompts[-1]
    assert "ORIGINAL query:\n1. Galaxy clusters" in prompt and "MODIFIED query:\n1. Neural networks" in prompt
    assert all(f"{i}. {t.name}" in prompt for i, t in enumerate(options, 1)) and "FINAL: <number" in prompt
    unanswerable = [Topic("unanswerable", (9,))] + options[1:]
    assert LLMJudge(scripted_chat).choose(unanswerable, before, after, random.Random(0)) == (None, None)
    rewritten = LLMRewriter(scripted_chat).rewrite("dark matter halos", options[0], options[2])
    assert rewritten == "dark matter halos and neural networks"
    assert "'galaxy clusters'" in ScriptedChat.prompts[-1] and "'neural networks'" in ScriptedChat.prompts[-1]


def test_cli_prints_the_table_and_writes_the_figure(evaluated_db: tuple[str, int], tmp_path: Path) -> None:
    url, model_id = evaluated_db
    result = CliRunner().invoke(app, ["eval", str(model_id), "--db", url, "--judge", "categories", "--grid", "small",
                                      "--n-queries", "12", "--plot", str(tmp_path), "--category-precision", str(PRECISION)])
    assert result.exit_code == 0, result.output
    assert "random-direction" in result.output and "at matched cosine" in result.output
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".svg"}
    last = max(int(p.stem.split("-run")[1].split("-")[0]) for p in tmp_path.iterdir())
    again = CliRunner().invoke(app, ["eval-plot", str(last), "--db", url, "--plot", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    table = [line for line in result.output.splitlines() if line.startswith(("add ", "clamp ", "random-direction ", "unmodified "))]
    assert len(table) >= 22 and table == [line for line in again.output.splitlines() if line.startswith(("add ", "clamp ", "random-direction ", "unmodified "))]
    assert {p.name for p in (tmp_path / "again").iterdir()} == {f"eval-eval-run{last}-categories.png", f"eval-eval-run{last}-categories.svg"}


def test_papers_filed_only_under_an_archive_do_not_dilute_a_features_category(trained) -> None:
    """Before 2009 astro-ph had no subcategories: in the first 20,000 papers of hh_astro 12,120
    carry only 'astro-ph', which kept every feature's precision for a subcategory under 0.6 (the
    README's `saedb eval` then stopped). Such papers say nothing about subcategories."""
    from saedb.evaluation.topics import archives, category_topics

    backend, model_id = trained
    feature, = backend.query("SELECT feature_id FROM sae_codes WHERE model_id = ? GROUP BY feature_id ORDER BY count(*) DESC, "
                             "feature_id LIMIT 1", (model_id,))[0]
    firing = [r[0] for r in backend.query("SELECT doc_id FROM sae_codes WHERE model_id = ? AND feature_id = ? ORDER BY doc_id",
                                          (model_id, feature))]
    assert len(firing) >= 50
    backend.execute("UPDATE papers SET categories = ['astro-ph.SR']" if backend.dialect == "duckdb" else
                    "UPDATE papers SET categories = ARRAY['astro-ph.SR']")
    for i, doc_id in enumerate(firing):  # 40% of the feature's papers in astro-ph.CO, the rest under the archive alone
        category = "astro-ph.CO" if i % 5 < 2 else "astro-ph"
        backend.execute("UPDATE papers SET categories = " + ("[?]" if backend.dialect == "duckdb" else "ARRAY[?]") + " WHERE doc_id = ?",
                        (category, doc_id))
    assert archives(backend) == ["astro-ph"]
    found = {(t.features[0], t.category) for t in category_topics(backend, model_id)}
    assert (feature, "astro-ph.CO") in found


def test_the_offline_rewriter_drops_the_down_topic_and_appends_the_up_one() -> None:
    """Rewriting was only an append ('<query> and <up>'), which cannot move a query away from a topic."""
    from saedb.evaluation.rewriters import OfflineRewriter
    from saedb.evaluation.topics import Topic

    rewrite = OfflineRewriter().rewrite
    up, down = Topic("dark matter", (1,)), Topic("galaxy clusters", (2,))
    assert rewrite("X-ray emission of galaxy clusters at high redshift", up, down) == \
        "X-ray emission of at high redshift and dark matter"
    assert rewrite("Clusters of Galaxies", up, down) == "of and dark matter"  # plural and case: the same words
    assert rewrite("galaxies", up, down) == "galaxies and dark matter"  # nothing would be left: kept whole
    assert rewrite("the stellar halo", up, Topic("the", (3,))) == "the stellar halo and dark matter"  # stopwords stay


def test_the_comparison_names_each_random_direction_row_once() -> None:
    """docs/figures.md showed the random direction twice when the one nearest rewriting's cosine
    was also the one at addition's strengths."""
    from saedb.evaluation.report import format_comparison
    from saedb.evaluation.runner import EvalRun, ResultRow

    rows = [ResultRow("rewrite:offline-rewrite", None, None, 10, 0.91, 0.58, 0.22, 0),
            ResultRow("random-direction", 0.5, 0.0, 10, 0.89, 0.22, 0.24, 0), ResultRow("add", 0.5, 0.0, 10, 0.89, 0.38, 0.24, 0),
            ResultRow("unmodified", 0.0, 0.0, 10, 1.0, 0.22, 0.14, 0)]
    lines = format_comparison(EvalRun(1, "categories", "offline-rewrite", "t", 10, 0, "paper", rows)).splitlines()
    assert len(lines) == len(set(lines)) == 5 and sum("random-direction" in line for line in lines) == 1
