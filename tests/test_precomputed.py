"""Loading embeddings made elsewhere (Parquet/Arrow with an id column and a vector column),
on real DuckDB and Postgres: the real MiniLM vectors of hh_ml, any dimension, and every
kind of bad file as a clear error with nothing half-loaded."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from saedb.backends import Backend
from saedb.embedders import get_embedder
from saedb.errors import ConfigurationError, InvalidInputError
from saedb.loaders import load_corpus
from saedb.loaders.corpus import read_papers
from tests.conftest import DATA

ML_MINILM = DATA / "hh_ml_minilm.parquet"


def write_vectors(path: Path, ids: list[str], vectors: np.ndarray | list, fixed: bool = True) -> Path:
    if fixed:
        array = np.asarray(vectors, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(array.ravel()), array.shape[1])
    else:
        column = pa.array([list(map(float, v)) for v in vectors], type=pa.list_(pa.float32()))
    table = pa.table({"id": ids, "embedding": column})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        feather.write_feather(table, path)
    return path


@pytest.fixture
def slice_ids(astro_slice: Path) -> list[str]:
    return [p.arxiv_id for p in read_papers(astro_slice)]


@pytest.fixture
def wordllama_vectors(astro_slice: Path, embedder, tmp_path: Path) -> tuple[list[str], np.ndarray]:
    papers = list(read_papers(astro_slice))
    return [p.arxiv_id for p in papers], embedder.embed([p.text for p in papers])


def test_real_minilm_vectors_of_hh_ml_load_and_bind_the_embedder(backend: Backend, tmp_path: Path) -> None:
    corpus = tmp_path / "ml_300.jsonl.gz"
    with gzip.open(DATA / "hh_ml.jsonl.gz", "rt") as src, gzip.open(corpus, "wt") as dst:
        dst.writelines(itertools.islice(src, 300))
    report = load_corpus(backend, corpus, "minilm", embeddings=ML_MINILM, batch_size=128, progress=False)
    assert (report.added, report.rejected) == (300, 0)
    assert report.unmatched_vectors == 38_116 - 300
    assert backend.embedder() == ("minilm", 384)
    table = pq.read_table(ML_MINILM).slice(0, 300)
    expected = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    first_id = table.column("id")[7].as_py()
    stored = backend.fetch_vectors("SELECT e.embedding FROM embeddings e JOIN papers p USING (doc_id) WHERE p.arxiv_id = ?", (first_id,))
    np.testing.assert_allclose(stored[0], expected[7], rtol=1e-5, atol=1e-6)
    # Queries are embedded by the recorded embedder: the paper's own title finds it first.
    title = backend.query("SELECT title FROM papers WHERE arxiv_id = ?", (first_id,))[0][0]
    query = get_embedder(backend.embedder()[0]).embed([title])[0]
    ranked = backend.fetch_vectors("SELECT embedding FROM embeddings ORDER BY doc_id") @ query
    nearest = backend.query("SELECT arxiv_id FROM papers ORDER BY doc_id")[int(np.argmax(ranked))][0]
    assert nearest == first_id
    again = load_corpus(backend, corpus, "minilm", embeddings=ML_MINILM, progress=False)
    assert (again.added, again.already_loaded) == (0, 300)


def test_1536_d_vectors_of_an_embedder_saedb_does_not_run(backend: Backend, astro_slice: Path, slice_ids, tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((len(slice_ids), 1536)).astype(np.float32)
    path = write_vectors(tmp_path / "openai.arrow", slice_ids, vectors, fixed=False)
    report = load_corpus(backend, astro_slice, "openai:text-embedding-3-small", embeddings=path, progress=False)
    assert report.added == 400 and backend.embedder() == ("openai:text-embedding-3-small", 1536)
    stored = backend.fetch_vectors("SELECT embedding FROM embeddings ORDER BY doc_id")
    np.testing.assert_allclose(stored, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInputError, match="1536-d vectors but minilm makes 384-d"):
        load_corpus(backend, astro_slice, "minilm", embeddings=path, progress=False)
    with pytest.raises(InvalidInputError, match="unknown embedder 'my-encoder'.*query vectors"):
        get_embedder("my-encoder")


def test_rows_without_a_usable_vector_are_row_errors_and_the_rest_loads(
    backend: Backend, astro_slice: Path, wordllama_vectors, tmp_path: Path
) -> None:
    ids, vectors = wordllama_vectors
    vectors = vectors.copy()
    vectors[10, 3] = np.nan  # line 11 of the corpus
    vectors[20] = 0.0  # line 21
    keep = [i for i in range(len(ids)) if i != 30]  # line 31 has no vector
    path = write_vectors(tmp_path / "v.parquet", [ids[i] for i in keep] + ["extra-1", "extra-2"],
                         np.concatenate([vectors[keep], vectors[:2]]))
    report = load_corpus(backend, astro_slice, "wordllama-256", embeddings=path, batch_size=128, progress=False)
    assert (report.added, report.rejected, report.unmatched_vectors) == (397, 3, 2)
    errors = backend.query("SELECT line, reason FROM load_errors ORDER BY line")
    assert [line for line, _ in errors] == [11, 21, 31]
    assert "NaN" in errors[0][1] and "all zeros" in errors[1][1] and "no embedding for id" in errors[2][1]
    assert backend.count("papers") == backend.count("embeddings") == 397
    assert "2 vectors of the embeddings file have no paper" in report.summary()


def test_vectors_of_huge_or_tiny_scale_keep_their_direction(backend: Backend, astro_slice: Path, wordllama_vectors, tmp_path: Path) -> None:
    """A vector of 1e30-scale values was stored as all zeros (its float32 norm overflowed to inf)."""
    ids, vectors = wordllama_vectors
    scaled = vectors.copy()
    scaled[5] = np.sign(vectors[5]) * 1e30
    scaled[6] = vectors[6] * 1e-30
    load_corpus(backend, astro_slice, "wordllama-256", embeddings=write_vectors(tmp_path / "v.parquet", ids, scaled),
                batch_size=128, progress=False)
    for row in (5, 6):
        doc_id = backend.query("SELECT doc_id FROM papers WHERE arxiv_id = ?", (ids[row],))[0][0]
        stored = backend.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (doc_id,))[0]
        want = scaled[row].astype(np.float64) / np.linalg.norm(scaled[row].astype(np.float64))
        np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("problem", ["duplicate", "ragged", "wrong_dim", "no_id_column", "wrong_embedder", "null_vector"])
def test_bad_embedding_files_fail_before_anything_is_written(
    problem: str, backend: Backend, astro_slice: Path, wordllama_vectors, tmp_path: Path
) -> None:
    ids, vectors = wordllama_vectors
    path = tmp_path / "bad.parquet"
    expected: tuple[type[Exception], str]
    if problem == "duplicate":
        write_vectors(path, ids[:-1] + [ids[0]], vectors)
        expected = (InvalidInputError, "1 ids occur more than once")
    elif problem == "ragged":
        rows = [list(v) for v in vectors]
        rows[5] = rows[5][:-1]
        write_vectors(path, ids, rows, fixed=False)
        expected = (InvalidInputError, "vectors have different lengths .*255 in row 6")
    elif problem == "wrong_dim":
        write_vectors(path, ids, np.ones((len(ids), 300)))
        expected = (InvalidInputError, "300-d vectors but wordllama-256 makes 256-d")
    elif problem == "no_id_column":
        pq.write_table(pa.table({"key": ids, "embedding": [list(v) for v in vectors]}), path)
        expected = (InvalidInputError, "no id column 'id'")
    elif problem == "null_vector":
        pq.write_table(pa.table({"id": ids, "embedding": [None] + [list(map(float, v)) for v in vectors[1:]]}), path)
        expected = (InvalidInputError, "row 1 has no vector")
    else:  # vectors that are not wordllama's, declared as wordllama's
        write_vectors(path, ids, np.random.default_rng(1).standard_normal(vectors.shape))
        expected = (ConfigurationError, "do not come from wordllama-256.*mean cosine")
    with pytest.raises(expected[0], match=expected[1]):
        load_corpus(backend, astro_slice, "wordllama-256", embeddings=path, progress=False)
    assert backend.count("papers") == 0 and backend.count("load_errors") == 0
    assert backend.embedder() is None  # not even bound: the right file can still be loaded


def test_cli_load_with_embeddings_needs_the_embedder_name(tmp_path: Path, astro_slice: Path, wordllama_vectors) -> None:
    from typer.testing import CliRunner

    from saedb.cli import app

    ids, vectors = wordllama_vectors
    path = write_vectors(tmp_path / "v.parquet", ids, vectors)
    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    unnamed = runner.invoke(app, ["load", str(astro_slice), "--db", db, "--embeddings", str(path)])
    assert unnamed.exit_code == 2 and "name the embedder that made v.parquet with --embedder" in unnamed.output
    named = runner.invoke(app, ["load", str(astro_slice), "--db", db, "--embeddings", str(path), "--embedder", "wordllama-256"])
    assert named.exit_code == 0 and "added 400" in named.output
    bound = runner.invoke(app, ["sql", "SELECT value FROM saedb_meta WHERE key = 'embedder'", "--db", db])
    assert bound.output.strip() == "value\nwordllama-256"
