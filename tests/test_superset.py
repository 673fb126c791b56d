"""Apache Superset 6.1 (in its own venv: scripts/install-superset.sh, run by `make test`) reads
every BI view of a saedb database on both backends: a DuckDB file through saedb's dialect
(duckdb+saedb://, read-only) and Postgres through a `saedb reader` login. Each chart's data,
read back through Superset's chart-data API, equals the same query sent to saedb."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from saedb.backends import connect

ROOT = Path(__file__).resolve().parent.parent
SUPERSET = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saedb" / "superset-6.1.0"
pytestmark = pytest.mark.skipif(not (SUPERSET / "installed").exists(),
                                reason="Superset is not installed here (scripts/install-superset.sh; make test runs it)")

# The query each chart of scripts/superset_views.py asks, written as plain SQL.
EXPECTED = {
    "feature_summary": "SELECT feature_id, n_docs FROM feature_summary ORDER BY n_docs DESC, feature_id LIMIT 10",
    "feature_trends": "SELECT year, sum(n_docs) FROM feature_trends GROUP BY year ORDER BY year",
    "feature_top_documents": "SELECT feature_id, doc_id, activation FROM feature_top_documents WHERE rank = 1 "
                             "ORDER BY feature_id LIMIT 10",
    "document_features": "SELECT feature_id, count(doc_id) FROM document_features GROUP BY feature_id ORDER BY feature_id",
    "feature_stats": "SELECT model_id, max(n_docs) FROM feature_stats GROUP BY model_id ORDER BY model_id",
    "feature_best_labels": "SELECT labeller, count(feature_id) FROM feature_best_labels GROUP BY labeller ORDER BY labeller",
}


def superset_charts(uri: str, schema: str, home: Path, read_only: bool = False) -> dict:
    home.mkdir()
    shutil.copy(SUPERSET / "home" / "superset.db", home / "superset.db")  # metadata and admin, made at install
    done = subprocess.run([str(SUPERSET / "bin" / "python"), str(ROOT / "scripts" / "superset_views.py"), "--home", str(home),
                           "--uri", uri, "--schema", schema, *(["--read-only"] if read_only else [])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def superset_uri(dsn: str, tmp_path: Path) -> str:
    """A `saedb reader` login on the test server (a Unix socket) as Superset's psycopg2 URI."""
    from saedb.readers import create_reader

    login = f"superset_{tmp_path.name[-12:].replace('-', '_').lower()}"
    with connect(dsn) as admin:
        create_reader(admin, login, "dashboard secret", "30s")
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgresql://{login}:dashboard%20secret@/{info['dbname']}?host={info['host']}&port={info.get('port', 5432)}"


def test_superset_charts_every_bi_view_with_saedb_s_answers(trained, db_url: str, tmp_path: Path) -> None:
    from saedb.families import build_families
    from saedb.interp import run_autointerp
    from saedb.interp.autointerp import corpus_stats
    from saedb.interp.labellers import OfflineLabeller

    backend, model_id = trained
    run_autointerp(backend, model_id, OfflineLabeller(corpus_stats(backend)), limit=30, concurrency=2)
    build_families(backend, model_id)
    expected = {view: [list(row) for row in backend.query(sql)] for view, sql in EXPECTED.items()}
    if backend.dialect == "duckdb":
        backend.close()  # Superset opens the file read-only: no writer may hold it
        charts = superset_charts(f"duckdb+saedb:///{db_url}", "main", tmp_path / "home", read_only=True)
    else:
        charts = superset_charts(superset_uri(db_url, tmp_path), "public", tmp_path / "home")
    assert set(charts) == set(EXPECTED)
    for view, rows in expected.items():
        got = [list(row.values()) for row in charts[view]["rows"]]
        assert len(got) == len(rows) > 0, view
        for mine, theirs in zip(got, rows):
            assert mine == pytest.approx(theirs), view
