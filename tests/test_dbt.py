"""dbt-duckdb 1.11 (dbt-core 1.10, its own venv: scripts/install-dbt.sh, run by `make test`)
builds models over a saedb file with no saedb installed: one over a BI view, one a steered
search through the file's SQL macros (steer_toward, sae_model_id); `dbt docs generate` reads
the catalog. The models' rows equal saedb's own answers to the same queries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from saedb.backends import connect

DBT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saedb" / "dbt-duckdb-1.11.1"
pytestmark = pytest.mark.skipif(not (DBT / "installed").exists(),
                                reason="dbt-duckdb is not installed here (scripts/install-dbt.sh; make test runs it)")

BUSY = ("SELECT feature_id, n_docs FROM feature_summary WHERE model_id = sae_model_id('dbt') "
        "ORDER BY n_docs DESC, feature_id LIMIT 10")
STEERED = ("SELECT p.doc_id FROM embeddings e JOIN papers p USING (doc_id) ORDER BY array_cosine_distance(e.embedding, "
           "steer_toward((SELECT embedding FROM embeddings WHERE doc_id = 5), 3, 0.5, sae_model_id('dbt'))), p.doc_id LIMIT 5")


def dbt(project: Path, *command: str) -> None:
    done = subprocess.run([str(DBT / "bin" / "dbt"), *command, "--project-dir", str(project), "--profiles-dir", str(project)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_dbt_models_over_a_saedb_file_equal_saedb_s_answers(tmp_path: Path, astro_slice: Path, embedder) -> None:
    from saedb.loaders import load_corpus
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    db = tmp_path / "features.duckdb"
    with connect(str(db)) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        train_from_db(backend, TrainConfig(k=8, n_latents=64, steps=60, batch_size=64, lr=1e-3), "dbt")
        expected = {"busy_features": backend.query(BUSY), "steered_search": backend.query(STEERED)}
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: saedb_check\nversion: '1.0'\nprofile: saedb\n"
                                            "models:\n  saedb_check:\n    +materialized: table\n")
    (project / "profiles.yml").write_text(f"saedb:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                         f"      path: '{db}'\n      schema: analytics\n      threads: 1\n")
    (project / "models" / "busy_features.sql").write_text(BUSY + "\n")
    (project / "models" / "steered_search.sql").write_text(STEERED + "\n")
    dbt(project, "run")
    dbt(project, "docs", "generate")
    assert (project / "target" / "catalog.json").exists()
    with connect(str(db), read_only=True) as backend:
        for model, rows in expected.items():
            assert sorted(backend.query(f"SELECT * FROM analytics.{model}")) == sorted(rows), model  # a table has no order
