"""No silent wrong answers from the SQL functions: ragged vectors, NaN/NULL activations and
nested arrays are errors, the same on DuckDB and Postgres."""

from __future__ import annotations

import numpy as np
import pytest

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.models import drop_model, publish_model
from saedb.sae import SAE
from tests.test_sql_functions import DB_ERRORS


@pytest.fixture
def model(loaded: Backend, random_sae: SAE) -> tuple[Backend, int]:
    return loaded, publish_model(loaded, random_sae, "inputs")


def literal(backend: Backend, values: list[float]) -> str:
    text = "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
    return f"CAST('{text}' AS DOUBLE[])" if backend.dialect == "duckdb" else f"'{text}'::vector"


@pytest.mark.parametrize("function", ["steer({e}, 0, 1.0, {m})", "sae_encode({e}, {m})", "steer_many({e}, [0, 1], [1.0, 0.5], {m})"])
def test_ragged_rows_in_one_call_are_errors(model: tuple[Backend, int], function: str) -> None:
    backend, model_id = model
    if backend.dialect == "postgres":
        function = function.replace("[0, 1], [1.0, 0.5]", "ARRAY[0, 1], ARRAY[1.0, 0.5]")
    rows = ", ".join(f"({literal(backend, [0.01] * n)})" for n in (257, 255))  # one chunk
    with pytest.raises(DB_ERRORS, match="dimensions"):
        backend.query(f"SELECT {function.format(e='t.e', m=model_id)} FROM (VALUES {rows}) AS t(e)")


@pytest.mark.parametrize("activation", ["'NaN'", "'Infinity'", "NULL"])
def test_decode_refuses_nan_infinite_and_null_activations(model: tuple[Backend, int], activation: str) -> None:
    backend, model_id = model
    if backend.dialect == "duckdb":
        codes = f"[{{'feature_id': 3, 'activation': 0.5}}, {{'feature_id': 4, 'activation': CAST({activation} AS FLOAT)}}]"
    else:
        codes = f"ARRAY[ROW(3, 0.5)::sae_feature, ROW(4, CAST({activation} AS real))::sae_feature]"
    with pytest.raises(DB_ERRORS, match="sae_decode: (activation is NaN or infinite|codes contain a NULL)"):
        backend.query(f"SELECT sae_decode({codes}, ?)", (model_id,))


def test_postgres_steer_many_refuses_nested_arrays(pg_dsn: str, random_sae: SAE, astro_slice, embedder) -> None:
    from saedb.backends import connect
    from saedb.loaders import load_corpus

    with connect(pg_dsn) as backend:
        load_corpus(backend, astro_slice, embedder, limit=10, progress=False)
        model_id = publish_model(backend, random_sae, "nested")
        x = backend.vector_param(np.full(256, 0.01, np.float32))
        with pytest.raises(DB_ERRORS, match="one-dimensional"):
            backend.query("SELECT steer_many(?, ARRAY[[0, 1], [2, 3]], ARRAY[[1.0, 1.0], [1.0, 1.0]], ?)", (x, model_id))


def test_concurrent_publishers_all_publish_with_distinct_ids(loaded: Backend, db_url: str) -> None:
    """Three trainings finishing at once each get a version (Postgres allocated the same model_id before)."""
    import threading

    from saedb.backends import connect

    results, errors = [], []

    def publish(seed: int) -> None:
        try:
            with connect(db_url) as backend:
                results.append(publish_model(backend, SAE.random(d=256, n=128, k=8, seed=seed), "concurrent"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(results) == [1, 2, 3]
    versions = loaded.query("SELECT version FROM sae_models WHERE name = 'concurrent' AND status = 'ready' ORDER BY version")
    assert [v for (v,) in versions] == [1, 2, 3]


def test_retired_deleted_and_reused_model_ids_never_serve_stale_weights(loaded: Backend) -> None:
    x = loaded.vector_param(np.full(256, 0.05, np.float32))
    first = publish_model(loaded, SAE.random(d=256, n=128, k=8, seed=1), "cached")
    assert len(loaded.query("SELECT unnest(sae_encode(?, ?))", (x, first))) == 8  # weights now cached
    loaded.execute("UPDATE sae_models SET status = 'retired' WHERE model_id = ?", (first,))
    with pytest.raises(DB_ERRORS, match="unknown model"):
        loaded.query("SELECT sae_encode(?, ?)", (x, first))
    assert drop_model(loaded, first) == [first]  # a retired version too
    reused = publish_model(loaded, SAE.random(d=256, n=128, k=4, seed=2), "cached")
    assert reused == first  # the id comes back with other weights
    assert len(loaded.query("SELECT unnest(sae_encode(?, ?))", (x, reused))) == 4


def test_finite_embeddings_whose_activations_overflow_are_errors_on_both_backends(loaded: Backend) -> None:
    """Activations past float32's range (8e38 here) were inf on DuckDB and Postgres: now an error on both."""
    n, d = 64, 256
    w_enc = np.zeros((n, d), np.float32)
    w_enc[:, :8] = 1.0
    sae = SAE(w_enc=w_enc, b_lat=np.linspace(0, 1, n, dtype=np.float32), w_dec=np.eye(n, d, dtype=np.float32),
              b_pre=np.zeros(d, np.float32), k=8)
    model_id = publish_model(loaded, sae, "huge")
    with pytest.raises(DB_ERRORS, match="sae_encode: activations overflow"):
        loaded.query("SELECT sae_encode(?, ?)", (loaded.vector_param(np.full(d, 1e38, np.float32)), model_id))
    with pytest.raises(InvalidInputError, match="activations overflow"):
        sae.encode(np.full(d, 1e38, np.float32))
    fine = loaded.query("SELECT f.activation FROM unnest(sae_encode(?, ?)) AS f", (loaded.vector_param(np.full(d, 1e30, np.float32)), model_id))
    np.testing.assert_allclose([a for (a,) in fine], sae.encode(np.full(d, 1e30, np.float32)).values[0], rtol=1e-5)


def test_steering_that_overflows_or_mismatches_is_an_error_on_both_backends(model: tuple[Backend, int]) -> None:
    """DuckDB's steer / steer_many returned ±inf past float32's range and applied one strength to
    two features; Postgres and the numpy core refuse both."""
    backend, model_id = model
    sae = backend.load_sae(model_id)
    huge = np.where(sae.w_dec[0] >= 0, 3.4e38, -3.4e38).astype(np.float32)  # steering along feature 0 leaves float32's range
    with pytest.raises(DB_ERRORS, match="overflow"):
        backend.query("SELECT steer(?, 0, 1e38, ?)", (backend.vector_param(huge), model_id))
    many = "steer_many(?, [0, 1], [0.5], ?)" if backend.dialect == "duckdb" else "steer_many(?, ARRAY[0, 1], ARRAY[0.5], ?)"
    with pytest.raises(DB_ERRORS, match="2 features but 1 strengths"):
        backend.query(f"SELECT {many}", (backend.vector_param(np.zeros(256, np.float32) + 0.1), model_id))
    with pytest.raises(InvalidInputError, match="overflow"):
        sae.steer(huge, 0, 1e38)
    with pytest.raises(InvalidInputError, match="2 features but 1 strengths"):
        sae.steer(np.zeros(256, np.float32), [0, 1], [0.5])


def test_decode_takes_any_numeric_literal(model: tuple[Backend, int]) -> None:
    """DuckDB's sae_decode refused a 0.5e0 literal (a DOUBLE) with an internal Binder Error."""
    backend, model_id = model
    sae = backend.load_sae(model_id)
    codes = ("[{'feature_id': 3, 'activation': 0.5e0}]" if backend.dialect == "duckdb"
             else "ARRAY[ROW(3, 0.5e0)::sae_feature]")
    got = np.asarray(backend.query(f"SELECT CAST(sae_decode({codes}, ?) AS {'FLOAT[]' if backend.dialect == 'duckdb' else 'real[]'})",
                                   (model_id,))[0][0], np.float32)
    np.testing.assert_allclose(got, sae.b_pre + 0.5 * sae.w_dec[3], rtol=1e-5, atol=1e-6)
