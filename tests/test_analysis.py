"""Feature analysis on real DuckDB and Postgres: co-occurrence in SQL, families, autointerp,
steering by label and family, and BI views."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import psycopg
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import saedb
from saedb.backends import Backend, connect
from saedb.backends.duckdb import DuckDBBackend
from saedb.cli import app
from saedb.embedders import WordLlamaEmbedder
from saedb.families import build_families, compute_cooccurrence
from saedb.holdout import held_out
from saedb.interp import LLMLabeller, OfflineLabeller, corpus_stats, run_autointerp
from saedb.llm import ChatModel
from saedb.interp.scoring import f1_score, pearson
from tests.conftest import DatabaseTemplates, copied, embeddings_of, load_and_train
from tests.scripted_chat import ScriptedChatHandler, serving
from tests.test_sql_functions import vector_sql


@pytest.fixture
def labelled(request: pytest.FixtureRequest, db_url: str, templates: DatabaseTemplates, astro_slice: Path,
             embedder) -> Iterator[tuple[Backend, int]]:
    """``trained`` with 40 features labelled offline (a copy of the database built once per session)."""
    def build(backend: Backend) -> int:
        model_id = load_and_train(astro_slice, embedder)(backend)
        run_autointerp(backend, model_id, OfflineLabeller(corpus_stats(backend)), limit=40, concurrency=2)
        return model_id

    model_id = copied(request, templates, "astro_400_labelled", build, db_url)
    with connect(db_url) as backend:
        yield backend, model_id


def build_all_families(backend: Backend, model_id: int) -> list:
    """Families over every labelled feature (a 128-latent model on 400 abstracts has few clean ones)."""
    backend.execute("UPDATE feature_labels SET clean = TRUE WHERE model_id = ?", (model_id,))
    return [named.family for named in build_families(backend, model_id)]


def codes_matrix(backend: Backend, model_id: int) -> sp.csr_matrix:
    rows = backend.query("SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ?", (model_id,))
    docs = {d: i for i, d in enumerate(sorted({r[0] for r in rows}))}
    return sp.csr_matrix((np.ones(len(rows)), ([docs[d] for d, _ in rows], [f for _, f in rows])), shape=(len(docs), 128))


def test_sql_cooccurrence_equals_sparse_matrix_product(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    pairs = compute_cooccurrence(backend, model_id)
    z = codes_matrix(backend, model_id)
    expected = sp.triu(z.T @ z).tocoo()
    assert pairs == expected.nnz
    stored = {(i, j): n for i, j, n in backend.query(
        "SELECT feature_i, feature_j, n_docs FROM feature_cooccurrence WHERE model_id = ?", (model_id,))}
    assert stored == {(int(i), int(j)): int(v) for i, j, v in zip(expected.row, expected.col, expected.data)}
    assert compute_cooccurrence(backend, model_id) == pairs  # re-materialising replaces


def test_families_of_a_model_without_labels_name_the_missing_step(trained: tuple[Backend, int], db_url: str) -> None:
    """They printed "0 families" and stored nothing: families group labelled (clean) features."""
    backend, model_id = trained
    result = CliRunner().invoke(app, ["families", str(model_id), "--db", db_url])
    assert result.exit_code == 2, result.output
    assert f"model {model_id} has no labelled feature yet: run `saedb interp {model_id}` first" in result.stderr
    assert backend.query("SELECT count(*) FROM feature_families WHERE model_id = ?", (model_id,))[0][0] == 0


def test_families_are_stored_in_sql(labelled: tuple[Backend, int]) -> None:
    backend, model_id = labelled
    families = build_all_families(backend, model_id)
    assert families, "a trained model on real abstracts has at least one family"
    stored = backend.query("SELECT family_id, root_feature, size, label FROM feature_families WHERE model_id = ? ORDER BY family_id", (model_id,))
    assert [(r[1], r[2]) for r in stored] == [(f.root, len(f.members)) for f in families]
    members = backend.query("SELECT count(*), count(parent_id), max(depth) FROM family_members WHERE model_id = ?", (model_id,))[0]
    assert members[0] == sum(len(f.members) for f in families) and members[1] == members[0] - len(families)


def test_offline_autointerp_scores_and_resumes(labelled: tuple[Backend, int]) -> None:
    backend, model_id = labelled
    rows = backend.query("SELECT feature_id, label, pearson, f1, density FROM feature_labels WHERE model_id = ?", (model_id,))
    assert 20 <= len(rows) <= 40
    for feature_id, label, r, f1, density in rows:
        assert 1 <= len(label.split()) <= 8
        assert r is None or -1 <= r <= 1
        assert 0 <= f1 <= 1
        n = backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ? AND feature_id = ?", (model_id, feature_id))[0][0]
        assert density == pytest.approx(n / 400)
    assert np.mean([r for _, _, r, _, _ in rows if r is not None]) > 0.2  # labels predict held-out examples
    labeller = OfflineLabeller(corpus_stats(backend))
    assert run_autointerp(backend, model_id, labeller, features=[r[0] for r in rows]) == []  # resumed: nothing to redo
    more = run_autointerp(backend, model_id, labeller, limit=5)
    assert len(more) == 5 and not {r.feature_id for r in more} & {r[0] for r in rows}


def test_scoring_helpers() -> None:
    assert pearson([1, 1, 1, -1, -1, -1], [1, 1, 1, 0, 0, 0]) == pytest.approx(1.0)
    assert pearson([0.5] * 6, [1, 1, 1, 0, 0, 0]) is None
    assert f1_score([1, 1, -1, -1, -1, 1], [1, 1, 1, 0, 0, 0]) == pytest.approx(2 / 3)


class FakeChatAPI(ScriptedChatHandler):
    """A scripted OpenAI-compatible /v1/chat/completions speaking the paper's protocol: the
    interpreter reasons and ends with FINAL:, the predictor sees one abstract and ends with
    PREDICTION:; the first predictor reply is malformed (retried)."""

    calls: list[str] = []
    interpreter_inputs: list[str] = []
    lock = threading.Lock()

    def reply(self, system: str, user: str) -> str:
        interpreter = "FINAL:" in system and "MAX_ACTIVATING" in system
        with self.lock:
            FakeChatAPI.calls.append("label" if interpreter else "predict")
            first_predict = FakeChatAPI.calls.count("predict") == 1 and FakeChatAPI.calls[-1] == "predict"
            if interpreter:
                FakeChatAPI.interpreter_inputs.append(user)
        if interpreter:
            content = "1. Candidates: stars, galaxies.\n2. Zero examples also mention galaxies.\n3. Stars.\nFINAL: **Stellar physics**"
        elif first_predict:
            content = "I think this one is relevant!"  # no PREDICTION line: asked again
        else:
            content = "Reasoning...\nPREDICTION: " + ("0.9" if "star" in user.lower() else "-0.7")
        return content


@pytest.fixture
def chat_url() -> Iterator[str]:
    FakeChatAPI.calls, FakeChatAPI.interpreter_inputs = [], []
    with serving(FakeChatAPI) as url:
        yield url


def test_llm_autointerp_through_openai_client(trained: tuple[Backend, int], chat_url: str) -> None:
    backend, model_id = trained
    labeller = LLMLabeller(ChatModel("test-model", base_url=chat_url, api_key="test"))
    results = run_autointerp(backend, model_id, labeller, limit=6, concurrency=4)
    assert len(results) == 6 and {r.label for r in results} == {"Stellar physics"}
    assert FakeChatAPI.calls.count("label") == 6 and FakeChatAPI.calls.count("predict") == 6 * 6 + 1  # 3 + 3 each, one retry
    shown = FakeChatAPI.interpreter_inputs[0]
    assert shown.count("Activation:") == 5 and shown.count("------------------------") == 8  # 5 + 5 examples
    assert all(r.pearson is None or -1 <= r.pearson <= 1 for r in results)
    stored = backend.query("SELECT count(*) FROM feature_labels WHERE model_id = ? AND labeller = 'llm:test-model'", (model_id,))
    assert stored[0][0] == 6
    calls = len(FakeChatAPI.calls)
    assert run_autointerp(backend, model_id, labeller, features=[r.feature_id for r in results]) == []
    assert len(FakeChatAPI.calls) == calls  # resumed without asking the API again


def test_steer_by_label_and_family_equal_numpy(labelled: tuple[Backend, int]) -> None:
    backend, model_id = labelled
    build_all_families(backend, model_id)
    sae = backend.load_sae(model_id)
    x = embeddings_of(backend)[1][0]
    feature, label = backend.query(
        "SELECT feature_id, label FROM feature_best_labels WHERE model_id = ? ORDER BY pearson DESC NULLS LAST, feature_id LIMIT 1", (model_id,)
    )[0]
    param = backend.vector_param(x)
    by_label = vector_sql(backend, "steer_label(?, ?, 0.7, ?)", (param, label.upper(), model_id))
    np.testing.assert_array_equal(by_label, sae.steer(x, feature, 0.7)[0])
    family_id, = backend.query("SELECT min(family_id) FROM feature_families WHERE model_id = ?", (model_id,))[0]
    members = [r[0] for r in backend.query(
        "SELECT feature_id FROM family_members WHERE model_id = ? AND family_id = ? ORDER BY feature_id", (model_id, family_id))]
    by_family = vector_sql(backend, "steer_family(?, ?, 0.7, ?)", (param, family_id, model_id))
    expected = sae.steer(x, members, sae.family_strengths(members, 0.7))[0]
    np.testing.assert_allclose(by_family, expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(by_family - x) == pytest.approx(0.7, rel=1e-4)
    errors = (duckdb.Error, psycopg.Error)
    if isinstance(backend, DuckDBBackend):  # a text no label names: the feature whose decoder row is nearest its embedding
        unit = sae.w_dec / np.linalg.norm(sae.w_dec, axis=1, keepdims=True)
        nearest = int(np.argmax(unit @ WordLlamaEmbedder().embed(["zzz-nothing"])[0]))
        assert backend.query("SELECT sae_feature_by_label('zzz-nothing', ?)", (model_id,))[0][0] == nearest
    else:  # Postgres' SQL has no embedder: label matches only
        with pytest.raises(errors, match="no feature of model .* labelled like 'zzz-nothing'"):
            backend.query("SELECT steer_label(?, 'zzz-nothing', 1.0, ?)", (param, model_id))
    with pytest.raises(errors, match="has no family 9999"):
        backend.query("SELECT steer_family(?, 9999, 1.0, ?)", (param, model_id))


def test_search_by_label_names_the_feature_it_steers_along(labelled: tuple[Backend, int], db_url: str) -> None:
    """The feature a label resolves to is printed on stderr (the hits alone on stdout), and says
    when no label is the text and the nearest feature was taken instead: it was silent."""
    backend, model_id = labelled
    feature, label = backend.query(
        "SELECT feature_id, label FROM feature_best_labels WHERE model_id = ? ORDER BY pearson DESC NULLS LAST, feature_id LIMIT 1", (model_id,)
    )[0]
    search = ["search", "dark matter halos", "--db", db_url, "--model", str(model_id), "--limit", "3", "--label"]
    named = CliRunner().invoke(app, [*search, label.upper()])
    assert named.exit_code == 0, named.output
    assert named.stderr.strip() == f"steering along feature {feature}, labelled {label!r}"
    assert len(named.stdout.splitlines()) == 3
    unnamed = CliRunner().invoke(app, [*search, "zzz-nothing"])
    if isinstance(backend, DuckDBBackend):
        nearest = backend.query("SELECT sae_feature_by_label('zzz-nothing', ?)", (model_id,))[0][0]
        labels = dict(backend.query("SELECT feature_id, label FROM feature_best_labels WHERE model_id = ?", (model_id,)))
        assert unnamed.exit_code == 0, unnamed.output
        assert unnamed.stderr.strip() == (f"steering along feature {nearest}, labelled {labels.get(nearest)!r}: no label is "
                                          "'zzz-nothing', so the feature whose decoder row is nearest its embedding")
        with saedb.connect(db_url) as db:  # the Python client warns where no label is the text (it was silent too)
            with pytest.warns(UserWarning, match=re.escape(unnamed.stderr.strip())):
                db.search("dark matter halos", model_id, label="zzz-nothing", limit=3)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert db.search("dark matter halos", model_id, label=label.upper(), limit=3).num_rows == 3
    else:  # Postgres' SQL has no embedder: label matches only
        assert unnamed.exit_code == 2 and "no feature of model" in unnamed.stderr and not unnamed.stdout


def test_bi_views_match_direct_aggregates(labelled: tuple[Backend, int]) -> None:
    backend, model_id = labelled
    build_all_families(backend, model_id)
    summary = {r[0]: r[1:] for r in backend.query(
        "SELECT feature_id, n_docs, density, mean_activation, label, family_id FROM feature_summary WHERE model_id = ?", (model_id,))}
    direct = backend.query(
        "SELECT feature_id, count(*), avg(activation) FROM sae_codes WHERE model_id = ? GROUP BY feature_id", (model_id,))
    for feature_id, n, mean in direct:
        assert summary[feature_id][0] == n and summary[feature_id][1] == pytest.approx(n / 400)
        assert summary[feature_id][2] == pytest.approx(mean, rel=1e-6)
    assert sum(1 for v in summary.values() if v[3] is not None) == backend.query(
        "SELECT count(DISTINCT feature_id) FROM feature_labels WHERE model_id = ?", (model_id,))[0][0]
    trends = backend.query("SELECT sum(n_docs) FROM feature_trends WHERE model_id = ?", (model_id,))[0][0]
    assert trends == backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
    top = backend.query("SELECT rank, activation FROM feature_top_documents WHERE model_id = ? AND feature_id = ? ORDER BY rank",
                        (model_id, direct[0][0]))
    assert [r[0] for r in top] == list(range(1, len(top) + 1)) and [r[1] for r in top] == sorted((r[1] for r in top), reverse=True)
    joined = backend.query("SELECT count(*) FROM document_features WHERE model_id = ? AND year IS NOT NULL", (model_id,))[0][0]
    assert joined == backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]


class CountingQueries:
    """A backend whose query() calls are counted (the rest passes through)."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.queries = backend, 0

    def query(self, sql: str, params=()) -> list[tuple]:
        self.queries += 1
        return self.backend.query(sql, params)

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


def test_examples_take_a_bounded_number_of_queries_and_are_right(trained: tuple[Backend, int]) -> None:
    """Labelling cost must not be one pass over sae_codes per feature (1M documents x 1024
    features); each feature's examples are still its own top activations and documents
    where it does not fire, the same whichever other features share its batch."""
    from saedb.interp.autointerp import features_by_density
    from saedb.interp.examples import examples_for

    backend, model_id = trained
    features = features_by_density(backend, model_id)[:100]
    counting = CountingQueries(backend)
    examples = list(examples_for(counting, model_id, features, 400))
    assert len(examples) >= 50 and counting.queries <= 12
    fires = {(d, f) for d, f in backend.query("SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ?", (model_id,))}
    doc_of = {f"{t}. {a}": d for d, t, a in backend.query("SELECT doc_id, title, abstract FROM papers")}
    held = {d for (d,) in backend.query("SELECT doc_id FROM model_holdout WHERE model_id = ?", (model_id,))}
    assert len(held) == int(held_out(np.array(sorted(doc_of.values())), 0.2, 0).sum()) > 0
    for ex in examples:
        top = backend.query(
            "SELECT c.doc_id, p.title, p.abstract, c.activation FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id "
            "WHERE c.model_id = ? AND c.feature_id = ? ORDER BY c.activation DESC, c.doc_id", (model_id, ex.feature_id))
        training = [(f"{t}. {a}", x) for d, t, a, x in top if d not in held][:60]
        assert ex.held_out_split
        assert ex.positives + ex.more_positives == [text for text, _ in training]  # the labeller reads training documents
        assert ex.activations == pytest.approx([x for _, x in training[:5]])
        assert ex.held_out_positives == [f"{t}. {a}" for d, t, a, _ in top if d in held][:3]  # scored on held-out ones
        assert {doc_of[text] for text in ex.held_out_positives + ex.held_out_negatives} <= held
        assert not {doc_of[text] for text in ex.negatives} & held
        negatives = ex.negatives + ex.held_out_negatives
        assert len(negatives) == 8 and len(set(negatives)) == 8
        assert not any((doc_of[text], ex.feature_id) in fires for text in negatives)
    alone = next(examples_for(backend, model_id, [examples[7].feature_id], 400))
    assert alone == examples[7]
    assert len({tuple(ex.negatives) for ex in examples}) > len(examples) // 2  # not one shared list


class RefusingChatAPI(ScriptedChatHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_unreachable_or_refusing_endpoint_is_one_clear_line(trained: tuple[Backend, int], db_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`saedb interp --llm` with no server at OPENAI_BASE_URL ended in an APIConnectionError traceback."""
    import socket

    backend, model_id = trained
    if backend.dialect == "duckdb":
        backend.close()
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with serving(RefusingChatAPI) as refusing:
        for url, says in ((closed, f"cannot reach the endpoint at {closed}"), (refusing, f"the endpoint at {refusing} refused")):
            monkeypatch.setenv("OPENAI_BASE_URL", url)
            result = CliRunner().invoke(app, ["interp", str(model_id), "--llm", "gpt-4o-mini", "--limit", "3", "--db", db_url])
            assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit), result.exception
            lines = result.output.strip().splitlines()
            assert says in lines[-1] and "OPENAI" in lines[-1] and "Traceback" not in result.output, result.output


def test_drop_takes_a_model_and_everything_of_it_in_one_transaction(labelled: tuple[Backend, int], db_url: str) -> None:
    """Issue 51: `DELETE FROM sae_models WHERE model_id = 2` left its codes, co-occurrence and
    labels behind, and no command removed a model. `saedb drop` removes the version, its
    untrained control and every row of either; the other models keep all of theirs."""
    from saedb.lineage import match_models
    from saedb.models import publish_model
    from saedb.sae import SAE
    from saedb.trainer.train import publish_untrained

    backend, model_id = labelled
    control = publish_untrained(backend, model_id)
    other = publish_model(backend, SAE.random(backend.model_row(model_id)["d_in"], 64, 4, seed=3), "other")
    compute_cooccurrence(backend, model_id)
    compute_cooccurrence(backend, other)
    build_all_families(backend, model_id)
    match_models(backend, model_id, other)
    for evaluated in (model_id, other):
        backend.execute("INSERT INTO eval_runs (model_id, judge, rewriter, queries, n_queries, seed, grid) "
                        "VALUES (?, 'categories', 'none', 'titles', 1, 0, 'paper')", (evaluated,))
    backend.execute("INSERT INTO eval_results SELECT run_id, 'add', 0.5, -0.5, 1, 0.9, 1.0, 0.0, 0 FROM eval_runs")

    def rows_of(model: int) -> dict[str, int]:
        counts = {table: backend.query(f"SELECT count(*) FROM {table} WHERE model_id = ?", (model,))[0][0]
                  for table in (*backend.model_tables, "sae_models")}
        counts["feature_matches"] = backend.query("SELECT count(*) FROM feature_matches WHERE ? IN (model_id, other_model_id)",
                                                  (model,))[0][0]
        counts["eval_results"] = backend.query("SELECT count(*) FROM eval_results r JOIN eval_runs e USING (run_id) "
                                               "WHERE e.model_id = ?", (model,))[0][0]
        return counts

    before = rows_of(model_id)
    assert all(before[table] for table in (backend.codes_table, "feature_labels", "feature_cooccurrence", "family_members",
                                           "feature_matches", "eval_results", "model_holdout")), before
    kept = rows_of(other)
    orphans = backend.query("SELECT count(*) FROM eval_results")[0][0] - before["eval_results"]
    result = CliRunner().invoke(app, ["drop", str(model_id), "--db", db_url])
    assert result.exit_code == 0 and f"dropped model {model_id}, {control}" in result.output, result.output
    assert set(rows_of(model_id).values()) == {0} and set(rows_of(control).values()) == {0}
    assert rows_of(other) == {**kept, "feature_matches": 0}  # the matches named the dropped model
    assert backend.query("SELECT count(*) FROM eval_results")[0][0] == orphans
    if backend.dialect == "postgres":  # plain SQL orphans nothing either (DuckDB has no cascading keys: use saedb drop)
        backend.execute("DELETE FROM sae_models WHERE model_id = ?", (other,))
        assert set(rows_of(other).values()) == {0}, rows_of(other)
    unknown = CliRunner().invoke(app, ["drop", str(model_id), "--db", db_url])
    assert unknown.exit_code == 2 and f"model {model_id}" in unknown.output, unknown.output
