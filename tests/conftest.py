"""Shared fixtures: real DuckDB files, a real embedded PostgreSQL 18 + pgvector server
(one per test session, a fresh database per test) and slices of the real corpora."""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import psycopg
import pytest

from saedb.backends import Backend, connect, is_postgres_url
from saedb.embedders import WordLlamaEmbedder
from saedb.localpg import local_postgres
from saedb.sae import SAE

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ASTRO = DATA / "hh_astro.jsonl.gz"
ML = DATA / "hh_ml.jsonl.gz"
T = TypeVar("T")


def write_slice(source: Path, target: Path, rows: int) -> Path:
    with gzip.open(source, "rt") as src, gzip.open(target, "wt") as dst:
        dst.writelines(itertools.islice(src, rows))
    return target


@pytest.fixture(scope="session")
def astro_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 400 real astro-ph abstracts."""
    return write_slice(ASTRO, tmp_path_factory.mktemp("data") / "astro_400.jsonl.gz", 400)


@pytest.fixture(scope="session")
def ml_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slice(ML, tmp_path_factory.mktemp("data") / "ml_200.jsonl.gz", 200)


@pytest.fixture(scope="session")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One server per session, in its own directory: pytest's basetemp is private to root
    (the server runs as another user) and is rotated by later pytest sessions."""
    with tempfile.TemporaryDirectory(prefix="saedb-pg-") as directory:
        os.chmod(directory, 0o755)
        with local_postgres(Path(directory) / "data") as dsn:
            yield dsn


def database_url(server: str, name: str) -> str:
    """The URL of database ``name`` on the server whose URL (to its postgres database) is ``server``."""
    return server.replace("/postgres?", f"/{name}?")


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield database_url(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def duckdb_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.duckdb")


@pytest.fixture(params=["duckdb", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL of each backend kind."""
    if request.param == "duckdb":
        return str(tmp_path / "test.duckdb")
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def backend(db_url: str) -> Iterator[Backend]:
    with connect(db_url) as opened:
        yield opened


class DatabaseTemplates:
    """Databases built once per session (per pytest worker) and copied for each test that asks
    for one, in a fraction of the time it took each test to load 400 papers (1-3 s; more with
    training): a DuckDB file is copied, a Postgres database is created with the built one as its
    TEMPLATE. The built databases are never connected to again (Postgres: ALLOW_CONNECTIONS
    false, so that no session or autovacuum worker can hold one while it is copied)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.built: dict[tuple[str, str], tuple[str, object]] = {}  # (kind, name) -> (location, what the build returned)

    def copy(self, name: str, build: Callable[[Backend], T], target: str, pg_server: Callable[[], str]) -> T:
        """Make ``target`` (a DuckDB path not created yet, or an empty Postgres database of the
        session's server) a copy of the database ``build`` makes from an empty one; returns
        what ``build`` returned."""
        postgres = is_postgres_url(target)
        kind = "postgres" if postgres else "duckdb"
        if (kind, name) not in self.built:
            self.built[kind, name] = self._build_postgres(name, build, pg_server()) if postgres else self._build_duckdb(name, build)
        location, result = self.built[kind, name]
        if postgres:
            database = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
            with psycopg.connect(pg_server(), autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
                admin.execute(f"CREATE DATABASE {database} TEMPLATE {location}")
        else:
            shutil.copyfile(location, target)
        return result  # type: ignore[return-value]

    def _build_duckdb(self, name: str, build: Callable[[Backend], T]) -> tuple[str, T]:
        path = self.directory / f"{name}.duckdb"
        with connect(str(path)) as backend:
            result = build(backend)
        assert not path.with_name(path.name + ".wal").exists(), "the template was not checkpointed on close"
        return str(path), result

    def _build_postgres(self, name: str, build: Callable[[Backend], T], server: str) -> tuple[str, T]:
        database = f"template_{name}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        with connect(database_url(server, database)) as backend:
            result = build(backend)
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        return database, result


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> DatabaseTemplates:
    return DatabaseTemplates(tmp_path_factory.mktemp("templates"))


def copied(request: pytest.FixtureRequest, templates: DatabaseTemplates, name: str, build: Callable[[Backend], T],
           db_url: str) -> T:
    """``templates.copy`` into the test's database (its server started on demand)."""
    return templates.copy(name, build, db_url, lambda: request.getfixturevalue("pg_server"))


@pytest.fixture
def loaded(request: pytest.FixtureRequest, db_url: str, templates: DatabaseTemplates, astro_slice: Path,
           embedder: WordLlamaEmbedder) -> Iterator[Backend]:
    """A backend holding the 400-paper astro slice (a copy of the slice loaded once per session)."""
    copied(request, templates, "astro_400", load_slice(astro_slice, embedder), db_url)
    with connect(db_url) as opened:
        yield opened


def load_slice(astro_slice: Path, embedder: WordLlamaEmbedder) -> Callable[[Backend], None]:
    def build(backend: Backend) -> None:
        from saedb.loaders import load_corpus

        load_corpus(backend, astro_slice, embedder, batch_size=128, progress=False)

    return build


def load_and_train(astro_slice: Path, embedder: WordLlamaEmbedder) -> Callable[[Backend], int]:
    def build(backend: Backend) -> int:
        from saedb.trainer import TrainConfig
        from saedb.trainer.train import train_from_db

        load_slice(astro_slice, embedder)(backend)
        config = TrainConfig(k=8, n_latents=128, steps=180, batch_size=64, lr=1e-3, holdout_fraction=0.2)
        return train_from_db(backend, config, "analysis")[0]

    return build


@pytest.fixture
def trained(request: pytest.FixtureRequest, db_url: str, templates: DatabaseTemplates, astro_slice: Path,
            embedder: WordLlamaEmbedder) -> Iterator[tuple[Backend, int]]:
    """The astro slice with a small SAE trained on it and published (a copy of one trained once per session)."""
    model_id = copied(request, templates, "astro_400_trained", load_and_train(astro_slice, embedder), db_url)
    with connect(db_url) as opened:
        yield opened, model_id


@pytest.fixture
def random_sae() -> SAE:
    return SAE.random(d=256, n=512, k=16, seed=7)


def embeddings_of(backend: Backend) -> tuple[np.ndarray, np.ndarray]:
    ids, parts = zip(*backend.iter_embeddings(10_000))
    return np.concatenate(ids), np.concatenate(parts)


# Two kernels may order rows whose cosines to a query are this close either way: a reference in
# float64 against the product's rankers (BLAS, faiss, pgvector and DuckDB's array_cosine_distance
# sum in float32, in an order that depends on the CPU's vector width): a float32 sum of 384
# products of unit vectors is within 384 * 2^-24 = 2.3e-5 of exact, so twice that bounds a pair.
RANKING_TOLERANCE = 1e-4


def assert_nearest_first(found: list[int], doc_ids: np.ndarray, matrix: np.ndarray, query: np.ndarray, limit: int,
                         allowed: np.ndarray | None = None) -> None:
    """``found`` (doc ids) are the ``limit`` rows of ``matrix`` nearest ``query`` by cosine (among
    the ``allowed`` mask), nearest first, up to rows within RANKING_TOLERANCE of each other."""
    unit = np.asarray(matrix, np.float64) / np.linalg.norm(np.asarray(matrix, np.float64), axis=1, keepdims=True)
    similarity = unit @ (np.asarray(query, np.float64) / np.linalg.norm(np.asarray(query, np.float64)))
    if allowed is not None:
        similarity = np.where(allowed, similarity, -np.inf)
    row_of = {int(d): i for i, d in enumerate(doc_ids)}
    expected = min(limit, int(np.isfinite(similarity).sum()))
    assert len(found) == expected == len(set(found)), (found, expected)
    got = similarity[[row_of[int(d)] for d in found]]
    kth = np.sort(similarity)[::-1][expected - 1] if expected else np.inf
    assert np.all(got >= kth - RANKING_TOLERANCE), ("a row farther than the limit-th nearest", found, got, kth)
    assert np.all(np.diff(got) <= RANKING_TOLERANCE), ("not nearest first", found, got)
