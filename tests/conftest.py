"""Shared fixtures: real DuckDB files, a real embedded PostgreSQL 18 + pgvector server
(one per test session, a fresh database per test) and slices of the real corpora."""

from __future__ import annotations

import gzip
import itertools
import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import psycopg
import pytest

from saedb.backends import Backend, connect
from saedb.embedders import WordLlamaEmbedder
from saedb.localpg import local_postgres
from saedb.sae import SAE

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
ASTRO = DATA / "hh_astro.jsonl.gz"
ML = DATA / "hh_ml.jsonl.gz"


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


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.replace("/postgres?", f"/{name}?")
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


@pytest.fixture
def loaded(backend: Backend, astro_slice: Path, embedder: WordLlamaEmbedder) -> Backend:
    """A backend holding the 400-paper astro slice."""
    from saedb.loaders import load_corpus

    load_corpus(backend, astro_slice, embedder, batch_size=128, progress=False)
    return backend


@pytest.fixture
def trained(loaded: Backend) -> tuple[Backend, int]:
    """The astro slice with a small SAE trained on it and published."""
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    model_id, _ = train_from_db(loaded, TrainConfig(k=8, n_latents=128, steps=180, batch_size=64, lr=1e-3, holdout_fraction=0.2),
                                 "analysis")
    return loaded, model_id


@pytest.fixture
def random_sae() -> SAE:
    return SAE.random(d=256, n=512, k=16, seed=7)


def embeddings_of(backend: Backend) -> tuple[np.ndarray, np.ndarray]:
    ids, parts = zip(*backend.iter_embeddings(10_000))
    return np.concatenate(ids), np.concatenate(parts)
