"""saedb on a real Citus cluster (a coordinator and 2 workers on 127.0.0.1, `saedb cluster`),
step by step beside a single PostgreSQL server holding the same papers: the schema's
distribution, load, train, write-back, incremental encode, labels, SQL co-occurrence and
families, the BI views, steered search pushed to every shard's HNSW index, `saedb serve`
against the coordinator and a reader login. Results must equal the single server's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.cluster import LocalCluster
from saedb.encode import encode_new_documents
from saedb.families import build_families
from saedb.interp import OfflineLabeller, corpus_stats, run_autointerp
from saedb.loaders import load_corpus
from saedb.models import publish_model
from saedb.sae import SAE
from saedb.search import Steering, search
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_url
from tests.conftest import ML, assert_nearest_first, write_slice

FIRST, ALL = 1200, 1500  # papers loaded before training, and after the second load
CONFIG = TrainConfig(k=8, n_latents=128, steps=200, batch_size=128, lr=1e-3)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The coordinator's URL of a 2-worker cluster started by `saedb cluster`; stopped by SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="saedb-citus-") as directory:
        os.chmod(directory, 0o755)
        process = subprocess.Popen([sys.executable, "-m", "saedb.cli", "cluster", "--workers", "2", "--data", directory],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        output = []
        for line in process.stdout:  # until the cluster is up, or the command ends (failed)
            output.append(line)
            if "Citus cluster is up" in line:
                break
        assert "Citus cluster is up" in output[-1], "".join(output)
        yield output[-1].split("--db '")[1].split("'")[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
        assert not any((Path(directory) / node / "postmaster.pid").exists() for node in ("coordinator", "worker1", "worker2"))


@pytest.fixture(scope="module")
def single(pg_server: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.replace("/postgres?", f"/{name}?")


@pytest.fixture(scope="module")
def pipeline(cluster: str, single: str, embedder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Both databases through the pipeline: load FIRST papers, train on the cluster (and the
    same config on the single server), publish the cluster's SAE on the single server too,
    load up to ALL papers, encode the new ones, label offline, families."""
    data = tmp_path_factory.mktemp("citus")
    first, everything = write_slice(ML, data / "first.jsonl.gz", FIRST), write_slice(ML, data / "all.jsonl.gz", ALL)
    out: dict[str, object] = {}
    for url in (cluster, single):
        with connect(url) as backend:
            out[f"load:{url}"] = load_corpus(backend, first, embedder, progress=False).added
            out[f"reload:{url}"] = load_corpus(backend, first, embedder, progress=False).added
    model_id, trained = train_from_url(cluster, CONFIG, "ml")
    _, trained_single = train_from_url(single, CONFIG, "ml-own")
    with connect(cluster) as c, connect(single) as s:
        sae = c.load_sae(model_id)
        # the single server's own run is model 1; the same held-out split, so labels are scored alike
        assert publish_model(s, sae, "ml", trained.published_metrics(CONFIG)) == 2
        for backend, model in ((c, model_id), (s, 2)):
            with backend.encoding_deferred():  # the single server's trigger would encode them as they arrive
                load_corpus(backend, everything, embedder, progress=False, encode=False)
            out[f"encoded:{backend.dsn}"] = encode_new_documents(backend, model).encoded
            labeller = OfflineLabeller(corpus_stats(backend))
            run_autointerp(backend, model, labeller, concurrency=2)
            build_families(backend, model, predictor=labeller)
    out.update(model=model_id, sae=sae, trained=trained.metrics, trained_single=trained_single.metrics)
    return out


def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with connect(url, read_only=True) as backend:
        return [tuple(round(v, 5) if isinstance(v, float) else v for v in row) for row in backend.query(sql, params)]


def test_the_schema_distributes_documents_by_doc_id_and_copies_models_to_every_node(cluster: str, pipeline: dict) -> None:
    kinds = dict(rows(cluster, "SELECT logicalrelid::text, partmethod FROM pg_dist_partition"))
    assert {t: kinds[t] for t in ("papers", "embeddings", "sae_codes")} == {"papers": "h", "embeddings": "h", "sae_codes": "h"}
    for table in ("sae_models", "sae_encoder", "sae_decoder", "feature_labels", "feature_cooccurrence", "feature_families"):
        assert kinds[table] == "n", table  # reference tables
    colocation = rows(cluster, "SELECT count(DISTINCT colocationid) FROM pg_dist_partition "
                               "WHERE logicalrelid::text IN ('papers', 'embeddings', 'sae_codes')")
    assert colocation == [(1,)]
    workers = rows(cluster, "SELECT DISTINCT nodeport FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid) "
                            "WHERE s.logicalrelid = 'embeddings'::regclass")
    assert len(workers) == 2  # shards on both workers
    on_workers = rows(cluster, "SELECT result FROM run_command_on_workers('SHOW hnsw.ef_search') "
                               "UNION ALL SELECT result FROM run_command_on_workers('SHOW hnsw.iterative_scan')")
    assert sorted(on_workers) == [("200",), ("200",), ("relaxed_order",), ("relaxed_order",)]  # the shards' sessions
    functions = rows(cluster, "SELECT result FROM run_command_on_workers("
                              "'SELECT count(*) FROM pg_proc WHERE proname IN (''sae_encode'', ''steer_toward'', ''steer'')')")
    assert functions == [("3",), ("3",)]


def test_loads_are_idempotent_and_give_the_same_documents(cluster: str, single: str, pipeline: dict) -> None:
    assert pipeline[f"load:{cluster}"] == pipeline[f"load:{single}"] == FIRST
    assert pipeline[f"reload:{cluster}"] == pipeline[f"reload:{single}"] == 0
    query = "SELECT doc_id, arxiv_id, title, year FROM papers ORDER BY doc_id"
    assert rows(cluster, query) == rows(single, query) and len(rows(cluster, query)) == ALL


def test_training_through_the_coordinator_equals_training_on_one_server(pipeline: dict) -> None:
    cluster_run, single_run = pipeline["trained"], pipeline["trained_single"]
    for metric in ("normalised_mse", "holdout_normalised_mse", "dead_fraction", "samples"):
        assert cluster_run[metric] == pytest.approx(single_run[metric], rel=1e-6), metric


def test_codes_labels_cooccurrence_and_families_equal_the_single_server(cluster: str, single: str, pipeline: dict) -> None:
    model = pipeline["model"]
    assert pipeline[f"encoded:{cluster}"] == pipeline[f"encoded:{single}"] == ALL - FIRST
    for table, columns in (("sae_codes", "doc_id, feature_id, activation"), ("feature_cooccurrence", "feature_i, feature_j, n_docs"),
                           ("feature_labels", "feature_id, label, pearson, f1, clean"),
                           ("feature_families", "family_id, root_feature, size, label"),
                           ("family_members", "family_id, feature_id, parent_id")):
        on_cluster = rows(cluster, f"SELECT {columns} FROM {table} WHERE model_id = ? ORDER BY {columns}", (model,))
        assert on_cluster == rows(single, f"SELECT {columns} FROM {table} WHERE model_id = 2 ORDER BY {columns}"), table
        assert on_cluster, table
    codes = rows(cluster, "SELECT count(DISTINCT doc_id), max(n_documents) FROM sae_codes, sae_models m WHERE m.model_id = ?", (model,))
    assert codes == [(ALL, ALL)]


def test_bi_views_answer_as_on_one_server(cluster: str, single: str, pipeline: dict) -> None:
    for view, key in (("feature_summary", "feature_id"), ("feature_trends", "feature_id, year"), ("family_stats", "n_families"),
                      ("document_features", "doc_id, feature_id")):
        query = f"SELECT * FROM {view} WHERE model_id = ? ORDER BY {key}"
        strip = lambda table: [row[1:] for row in table]  # noqa: E731 - the model id differs
        assert strip(rows(cluster, query, (pipeline["model"],))) == strip(rows(single, query, (2,))), view


def test_comparative_analytics_and_lineage_answer_as_on_one_server(cluster: str, single: str, pipeline: dict) -> None:
    from saedb import analytics
    from saedb.lineage import match_models

    with connect(cluster) as c, connect(single) as s:
        for call, argument in ((analytics.enrichment, "'cs.LG' = ANY(categories)"), (analytics.predictors, "categories[1]"),
                               (analytics.slopes, "year")):
            on_cluster = [{k: v for k, v in r.items() if k != "model_id"} for r in call(c, pipeline["model"], argument).to_pylist()]
            on_single = [{k: v for k, v in r.items() if k != "model_id"} for r in call(s, 2, argument).to_pylist()]
            assert len(on_cluster) == len(on_single) > 0
            key = lambda r: (r.get("value") or "", r["feature_id"])  # noqa: E731
            for a, b in zip(sorted(on_cluster, key=key), sorted(on_single, key=key)):
                numbers = [column for column, value in a.items() if isinstance(value, float)]
                assert [a[c] for c in numbers] == pytest.approx([b[c] for c in numbers], rel=1e-9, abs=1e-12), call.__name__
                assert {c: v for c, v in a.items() if c not in numbers} == {c: v for c, v in b.items() if c not in numbers}
        other = publish_model(c, SAE.random(d=pipeline["sae"].d, n=64, k=8, seed=2), "random")
        forward, backward = match_models(c, pipeline["model"], other)
        assert (forward["n_features"], backward["n_features"]) == (CONFIG.n_latents, 64)
    assert rows(cluster, "SELECT count(*) FROM feature_lineage") == [(CONFIG.n_latents + 64,)]


def embeddings(backend: Backend) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([r[0] for r in backend.query("SELECT doc_id FROM embeddings ORDER BY doc_id")])
    return ids, backend.fetch_vectors("SELECT embedding FROM embeddings ORDER BY doc_id")


def exact_top(doc_ids: np.ndarray, matrix: np.ndarray, vector: np.ndarray, limit: int = 10) -> list[int]:
    scores = matrix @ (vector / np.linalg.norm(vector)) / np.linalg.norm(matrix, axis=1)
    return doc_ids[np.argsort(-scores, kind="stable")[:limit]].tolist()


def test_steered_search_is_pushed_to_every_shards_hnsw_index_with_exact_recall(cluster: str, pipeline: dict, embedder) -> None:
    model, sae = pipeline["model"], pipeline["sae"]
    queries = ["graph neural networks", "reinforcement learning for robots", "bayesian optimisation", "speech recognition",
               "generative adversarial networks"]
    with connect(cluster) as backend:
        backend.create_embeddings_index()
        features = [r[0] for r in backend.query("SELECT feature_id FROM feature_summary WHERE model_id = ? ORDER BY n_docs DESC LIMIT 5",
                                                (model,))]
        recalls, (doc_ids, matrix) = [], embeddings(backend)
        for text, feature in zip(queries, features):
            query = embedder.embed([text])[0]
            for steering in ((), Steering("feature", feature, 0.4, model)):
                hits = [h.doc_id for h in search(backend, query, 10, steering)]
                vector = sae.steer_toward(query, feature, 0.4)[0] if steering else query
                recalls.append(len(set(hits) & set(exact_top(doc_ids, matrix, vector))) / 10)
                # exact=True: the HNSW scan off on every shard (SET LOCAL propagated), the exact answer
                assert_nearest_first([h.doc_id for h in search(backend, query, 10, steering, exact=True)], doc_ids, matrix, vector, 10)
        # The steered vector is computed once, on the coordinator (a distributed subplan), then
        # sent to the 4 shard queries (EXPLAIN without ANALYZE cannot show a shard's plan before
        # that result exists; Citus 14.0.1's EXPLAIN ANALYZE of it fails: "cache lookup failed for type 0").
        steered_plan = "\n".join(r[0] for r in backend.query(
            "EXPLAIN SELECT doc_id FROM embeddings ORDER BY embedding <=> (SELECT steer_toward(?::vector, ?, 0.4, ?)) LIMIT 10",
            (backend.vector_param(query), features[0], model)))
        with backend.transaction():
            # ~375 rows a shard: the planner would scan them; off, it shows the shard queries use
            # the HNSW index (SET LOCAL reaches the workers' sessions with propagate_set_commands).
            backend.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            backend.execute("SET LOCAL enable_seqscan = off")
            shard_plan = "\n".join(r[0] for r in backend.query(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT doc_id FROM embeddings "
                "ORDER BY embedding <=> (SELECT ?::vector) LIMIT 10", (backend.vector_param(vector),)))
    assert np.mean(recalls) >= 0.95, recalls
    assert "Distributed Subplan" in steered_plan and "Task Count: 4" in steered_plan, steered_plan
    assert "Task Count: 4" in shard_plan and "Index Scan using embeddings_hnsw" in shard_plan, shard_plan
    assert "Order By: (embedding <=> (InitPlan 1).col1)" in shard_plan, shard_plan


def test_serve_and_a_reader_login_work_against_the_coordinator(cluster: str, pipeline: dict) -> None:
    import json
    import urllib.request

    from saedb.app.server import App, make_server

    result = CliRunner().invoke(app, ["reader", "bi_citus", "--timeout", "30s", "--db", cluster],
                                env={"SAEDB_READER_PASSWORD": "pw-citus-1"})
    assert result.exit_code == 0, result.output
    login = psycopg.conninfo.make_conninfo(cluster.replace("postgresql://postgres@", "postgresql://bi_citus@"), password="pw-citus-1")
    with psycopg.connect(login) as conn:
        assert conn.execute("SELECT count(*) FROM sae_codes WHERE model_id = %s", (pipeline["model"],)).fetchone()[0] > 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM papers")
    served = App(cluster, pool_size=4, timeout_s=10)
    server = make_server(served, "127.0.0.1", 0, idle_timeout_s=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/search?q=graph+neural+networks&model={pipeline['model']}&f=3:0.5"
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
        served.pool.close()
    assert len(answer["results"]) == 10


def test_sql_encoding_of_new_papers_on_the_cluster_equals_numpy(cluster: str, pipeline: dict, embedder, tmp_path: Path) -> None:
    """CALL saedb_encode_new from a plain session (last: it adds papers to the cluster only)."""
    model, sae = pipeline["model"], pipeline["sae"]
    with connect(cluster) as backend:
        assert load_corpus(backend, write_slice(ML, tmp_path / "more.jsonl.gz", ALL + 50), embedder, progress=False).added == 50
    with psycopg.connect(cluster, autocommit=True) as conn:
        conn.execute("CALL saedb_encode_new(%s)", (model,))
    with connect(cluster, read_only=True) as backend:
        new = backend.query("SELECT doc_id FROM papers ORDER BY doc_id")[ALL:]
        vectors = backend.fetch_vectors(f"SELECT embedding FROM embeddings WHERE doc_id >= {new[0][0]} ORDER BY doc_id")
        stored = backend.query("SELECT doc_id, feature_id, activation FROM sae_codes WHERE model_id = ? AND doc_id >= ? "
                               "ORDER BY doc_id, activation DESC, feature_id", (model, new[0][0]))
        assert backend.model_row(model)["n_documents"] == ALL + 50
    codes = sae.encode(vectors)
    expected = sorted(((doc_id, int(f), float(a)) for (doc_id,), fs, vs in zip(new, codes.indices, codes.values)
                       for f, a in zip(fs, vs) if a > 0), key=lambda r: (r[0], -r[2], r[1]))
    assert [(d, f) for d, f, _ in stored] == [(d, f) for d, f, _ in expected]
    assert np.allclose([a for *_, a in stored], [a for *_, a in expected], rtol=1e-5)


def test_a_cluster_restarts_on_its_data_with_the_same_url(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    nodes = LocalCluster(tmp_path / "c", workers=1)
    url = nodes.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
            conn.execute("SELECT create_distributed_table('kept', 'id')")
            conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")
    finally:
        nodes.stop()
    again = LocalCluster(tmp_path / "c", workers=1)
    assert again.start() == url
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (100,)
            assert conn.execute("SELECT count(*) FROM pg_dist_node").fetchone() == (2,)  # registered once
    finally:
        again.stop()
    with pytest.raises(Exception, match="holds a cluster of 1 workers, not 3"):
        LocalCluster(tmp_path / "c", workers=3)
