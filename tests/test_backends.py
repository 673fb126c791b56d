"""Backend connection behaviour: one DuckDB instance per file per process, read-only mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import psycopg
import pytest

from typer.testing import CliRunner

from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.sqlfiles import read_sql
from saedb.errors import ConfigurationError, InvalidInputError

ROOT = Path(__file__).resolve().parent.parent


def test_udfs_survive_closing_another_backend_on_the_same_file(duckdb_path: str, astro_slice: Path, embedder, random_sae) -> None:
    """DuckDB crashes when a UDF outlives the connection that registered it; run in a child."""
    from saedb.loaders import load_corpus
    from saedb.models import publish_model

    with connect(duckdb_path) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id = publish_model(backend, random_sae, "shared")
    path = duckdb_path
    script = textwrap.dedent(f"""
        from saedb.backends import connect
        first, second = connect({path!r}), connect({path!r})
        first.close()
        print(second.query("SELECT count(*) FROM embeddings, unnest(sae_encode(embedding, {model_id}))")[0][0])
        second.close()
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == 0, child.stderr[-500:]
    assert int(child.stdout.strip()) == 400 * 16


def test_read_only_connections_refuse_writes(loaded: Backend, db_url: str) -> None:
    if loaded.dialect == "duckdb":
        loaded.close()  # a process opens a DuckDB file either read-only or for writing
    with connect(db_url, read_only=True) as reader:
        assert reader.count("papers") == 400
        with pytest.raises((duckdb.Error, psycopg.Error), match="read-only|read only"):
            reader.execute("DELETE FROM papers")
    with connect(db_url) as writer:
        assert writer.count("papers") == 400


def test_a_snapshot_sees_the_database_as_of_its_start_and_refuses_writes(loaded: Backend, db_url: str) -> None:
    """``snapshot()`` on either backend: one read-only transaction. Rows another connection adds
    meanwhile appear only after it; a write inside is refused and changes nothing."""
    with connect(db_url) as other:
        with loaded.snapshot():
            assert loaded.count("papers") == 400
            other.execute("DELETE FROM papers WHERE doc_id IN (SELECT doc_id FROM papers ORDER BY doc_id LIMIT 1)")
            assert loaded.count("papers") == 400
            with pytest.raises((duckdb.Error, psycopg.Error), match="read-only|read only"):
                loaded.execute("DELETE FROM papers")
        assert loaded.count("papers") == 399


def test_read_only_needs_an_existing_saedb_database(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no database at"):
        connect(str(tmp_path / "missing.duckdb"), read_only=True)
    duckdb.connect(str(tmp_path / "plain.duckdb")).close()
    with pytest.raises(ConfigurationError, match="no saedb database here"):
        connect(str(tmp_path / "plain.duckdb"), read_only=True)


def test_postgres_reader_role_can_query_and_steer_but_not_write(pg_dsn: str, astro_slice: Path, embedder, random_sae) -> None:
    from saedb.loaders import load_corpus
    from saedb.models import publish_model
    from saedb.sqlfiles import read_sql

    with connect(pg_dsn) as admin:
        load_corpus(admin, astro_slice, embedder, progress=False)
        model_id = publish_model(admin, random_sae, "reader")
        admin.run_script(read_sql("postgres", "reader_role.sql"))
        admin.run_script("DO $$ BEGIN CREATE ROLE dashboard LOGIN PASSWORD 'dash pw' IN ROLE saedb_reader; "
                         "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    dashboard = pg_dsn.replace("postgresql://postgres:@", "postgresql://dashboard:dash%20pw@")
    with connect(dashboard, read_only=True) as reader:
        assert reader.query("SELECT current_user")[0][0] == "dashboard"
        assert reader.query("SELECT count(*) FROM embeddings, unnest(sae_encode(embedding, ?))", (model_id,))[0][0] == 400 * 16
        reader.execute("SET default_transaction_read_only = off")  # even then, the role has no write grants
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM papers")


def test_dashboard_logins_made_by_the_reader_procedure_are_read_only_time_limited_and_without_temp(pg_dsn: str) -> None:
    """Postgres does not pass ALTER ROLE ... SET from a group role to its members: the
    guarantees must hold for the login a dashboard actually uses."""
    from saedb.sqlfiles import read_sql

    with connect(pg_dsn) as admin:
        admin.run_script(read_sql("postgres", "reader_role.sql"))
        admin.run_script("DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bi_login') THEN "
                         "EXECUTE 'DROP OWNED BY bi_login'; DROP ROLE bi_login; END IF; END $$")
        admin.execute("CALL saedb_create_reader('bi_login', '1s')")
        admin.execute("ALTER ROLE bi_login PASSWORD 'bi pw'")
    login = pg_dsn.replace("postgresql://postgres:@", "postgresql://bi_login:bi%20pw@")
    with psycopg.connect(login, autocommit=True) as plain:  # a BI tool's own connection: no saedb settings
        assert plain.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            plain.execute("SELECT pg_sleep(3)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            plain.execute("CREATE TEMP TABLE scratch (x int)")
        plain.execute("SET default_transaction_read_only = off")  # a login may switch that off: TEMP is still refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            plain.execute("CREATE TEMP TABLE scratch (x int)")
        assert plain.execute("SELECT count(*) FROM papers").fetchone() == (0,)
    with connect(pg_dsn) as admin:  # the owner keeps its temporary tables (the loader stages with them)
        admin.execute("CREATE TEMP TABLE still_allowed (x int)")


def test_question_marks_in_literals_comments_and_jsonb_operators_are_not_placeholders(pg_dsn: str) -> None:
    with connect(pg_dsn) as backend:
        assert backend.query("SELECT '?', '100%'") == [("?", "100%")]
        assert backend.query("""SELECT '{"a": 1}'::jsonb ? 'a' -- is it there?""") == [(True,)]
        assert backend.query("SELECT ?::int, 'why?', $q$what?$q$ /* two? */", (5,)) == [(5, "why?", "what?")]
        assert backend.query("""SELECT '{"a": 1}'::jsonb ?? 'a', '{"a": 1}'::jsonb ?| array['a', ?]""", ("b",)) == [(True, True)]
        assert backend.query("""SELECT "a?" FROM (SELECT 1 AS "a?") t WHERE 1 = ?""", (1,)) == [(1,)]
    result = CliRunner().invoke(app, ["sql", "SELECT '?' AS q", "--db", pg_dsn])
    assert result.exit_code == 0 and result.output.strip() == "q\n?", result.output


def test_postgres_sessions_search_with_the_documented_hnsw_settings(pg_dsn: str) -> None:
    for read_only in (False, True):
        with connect(pg_dsn, read_only=read_only) as backend:
            assert backend.query("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')") == [
                ("200", "relaxed_order")]
    # a plain session (psql, a BI login) gets them too: pgvector's default ef_search 40 had recall 0.91
    with psycopg.connect(pg_dsn, autocommit=True) as plain:
        plain.execute("LOAD 'vector'")
        assert plain.execute("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')").fetchone() == (
            "200", "relaxed_order")


def test_duckdb_reads_all_embeddings_within_a_memory_limit(tmp_path: Path) -> None:
    """Publishing codes reads every embedding: on DuckDB that must be a streamed range scan,
    not a sort of the whole table (which needs the corpus in memory: at 1M documents, 3.3 GB,
    and an out-of-memory error under a memory limit)."""
    from saedb.backends.base import DocumentBatch

    rows, dim = 20_000, 384
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    with connect(str(tmp_path / "limited.duckdb")) as backend:
        backend.bind_embedder("test-embedder", dim)
        backend.insert_documents(DocumentBatch(
            arxiv_ids=[f"d{i}" for i in range(rows)], titles=["t"] * rows, abstracts=["a"] * rows,
            categories=[[]] * rows, subjects=[[]] * rows, published=[None] * rows, years=[None] * rows,
            corpus="test", embeddings=vectors))
    with connect(str(tmp_path / "limited.duckdb"), read_only=True) as backend:
        backend.execute("SET memory_limit = '12MB'")  # the table holds 30 MB of vectors
        ids, parts = zip(*backend.iter_embeddings(1000))
    ids, matrix = np.concatenate(ids), np.concatenate(parts)
    assert len(ids) == rows and (np.diff(ids) > 0).all()
    np.testing.assert_array_equal(matrix, vectors)


def test_reader_passwords_never_reach_the_server_log_and_readers_cannot_lift_their_limits(pg_dsn: str) -> None:
    """A failed CALL saedb_create_reader('x', 'password') was logged with the password in plain
    text (Postgres logs a failing statement); readers could SET statement_timeout = 0 and write
    large objects. Now the password is hashed on the client (SCRAM) before it is sent, a reader
    whose query outlives its login's limit is cancelled by saedb_cancel_overdue_readers(), and
    large objects are not writable by readers."""
    import threading

    from saedb.readers import create_reader

    secret = "correct horse battery staple"
    with connect(pg_dsn) as admin:
        admin.run_script(read_sql("postgres", "reader_role.sql"))
        log = Path(admin.query("SELECT current_setting('data_directory')")[0][0]) / "log"
        create_reader(admin, "bi_secret", secret, "1s")
        with pytest.raises(InvalidInputError, match="is not a saedb reader"):
            create_reader(admin, "postgres", secret, "1s")  # fails inside the server: the statement is logged
        verifier = admin.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'bi_secret'")[0][0]
        assert verifier.startswith("SCRAM-SHA-256$")
    assert secret not in log.read_text(errors="replace")
    login = psycopg.conninfo.make_conninfo(pg_dsn.replace("postgresql://postgres:@", "postgresql://bi_secret@"), password=secret)
    with psycopg.connect(login, autocommit=True) as reader:
        reader.execute("SET statement_timeout = 0")
        reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT lo_from_bytea(0, 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT lo_create(0)")
        pid = reader.info.backend_pid
        outcome: list[BaseException] = []

        def sleep() -> None:
            try:
                reader.execute("SELECT pg_sleep(60)")
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        sleeper = threading.Thread(target=sleep)
        sleeper.start()
        with connect(pg_dsn) as admin:
            cancelled: list[int] = []
            deadline = time.monotonic() + 50
            while not cancelled and time.monotonic() < deadline:  # the watchdog cancels it once it is past 1 s
                cancelled = admin.query("SELECT saedb_cancel_overdue_readers()")[0][0] or []
                time.sleep(0.1)  # polling a condition (the query's age), not ordering anything
            assert cancelled == [pid]
        sleeper.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)


def test_saedb_reader_makes_a_login_from_the_command_line(pg_dsn: str) -> None:
    result = CliRunner().invoke(app, ["reader", "bi_cli", "--timeout", "30s", "--db", pg_dsn], env={"SAEDB_READER_PASSWORD": "pw-cli-1"})
    assert result.exit_code == 0 and "made reader bi_cli" in result.output, result.output
    login = psycopg.conninfo.make_conninfo(pg_dsn.replace("postgresql://postgres:@", "postgresql://bi_cli@"), password="pw-cli-1")
    with psycopg.connect(login) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
    # issue 54: a reader's password and timeout can be changed (rotation); other roles are refused
    again = CliRunner().invoke(app, ["reader", "bi_cli", "--timeout", "5s", "--db", pg_dsn], env={"SAEDB_READER_PASSWORD": "pw-cli-2"})
    assert again.exit_code == 0 and "updated reader bi_cli (statement timeout 5s, new password)" in again.output, again.output
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(login).close()
    with psycopg.connect(psycopg.conninfo.make_conninfo(login, password="pw-cli-2")) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    owner = psycopg.conninfo.conninfo_to_dict(pg_dsn).get("user", "postgres")
    taken = CliRunner().invoke(app, ["reader", owner, "--db", pg_dsn], env={"SAEDB_READER_PASSWORD": "x"})
    assert taken.exit_code == 2 and "exists and is not a saedb reader" in taken.output, taken.output
    duck = CliRunner().invoke(app, ["reader", "bi", "--db", "x.duckdb"], env={"SAEDB_READER_PASSWORD": "p"})
    assert duck.exit_code == 2 and "Postgres roles" in duck.output
