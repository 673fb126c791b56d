"""sae_encode / sae_decode / steer / steer_many in SQL on real DuckDB and real Postgres,
against the numpy reference, on random and on real data, plus their error behaviour."""

from __future__ import annotations

import duckdb
import numpy as np
import psycopg
import pytest

from saedb.backends import Backend
from saedb.models import publish_model
from saedb.sae import SAE
from tests.conftest import embeddings_of

DB_ERRORS = (duckdb.Error, psycopg.Error)

# Portable SQL: the same text runs on both backends.
ENCODE_ALL = """
SELECT e.doc_id, f.feature_id, f.activation
FROM embeddings e, unnest(sae_encode(e.embedding, ?)) AS f
"""
ENCODE_ONE = "SELECT f.feature_id, f.activation FROM unnest(sae_encode(?, ?)) AS f"


def vector_sql(backend: Backend, expression: str, params: tuple) -> np.ndarray:
    """Evaluate a vector-valued SQL expression into numpy."""
    cast = "CAST({} AS FLOAT[])" if backend.dialect == "duckdb" else "CAST({} AS real[])"
    value = backend.query(f"SELECT {cast.format(expression)}", params)[0][0]
    return np.asarray(value, dtype=np.float32)


def assert_same_codes(sql_rows: list[tuple[int, float]], reference: list[tuple[int, float]], kth: float) -> None:
    """Same features and activations; membership may differ only between near-ties at the k-th value."""
    got, want = dict(sql_rows), dict(reference)
    for feature in got.keys() ^ want.keys():
        assert abs(got.get(feature, want.get(feature)) - kth) < 1e-5, f"feature {feature} differs beyond a tie"
    shared = sorted(got.keys() & want.keys())
    np.testing.assert_allclose([got[f] for f in shared], [want[f] for f in shared], rtol=1e-5, atol=1e-6)


def check_encode_parity(backend: Backend, sae: SAE, model_id: int, x: np.ndarray, from_table: bool) -> None:
    codes = sae.encode(x)
    if from_table:
        per_doc: dict[int, list] = {}
        for doc_id, feature, activation in backend.query(ENCODE_ALL, (model_id,)):
            per_doc.setdefault(doc_id, []).append((feature, activation))
        doc_ids, _ = embeddings_of(backend)
        assert len(per_doc) == len(doc_ids)
        rows = [per_doc[d] for d in doc_ids]
    else:
        rows = [backend.query(ENCODE_ONE, (backend.vector_param(v), model_id)) for v in x]
    for sql_row, ref_row, values in zip(rows, codes.rows(), codes.values):
        assert_same_codes(sql_row, ref_row, values[-1])


def test_encode_parity_on_real_embeddings(loaded: Backend, random_sae: SAE) -> None:
    model_id = publish_model(loaded, random_sae, "parity")
    _, x = embeddings_of(loaded)
    assert x.shape == (400, 256)
    check_encode_parity(loaded, random_sae, model_id, x, from_table=True)


def test_encode_parity_on_random_vectors(loaded: Backend) -> None:
    sae = SAE.random(d=256, n=300, k=40, seed=11)
    model_id = publish_model(loaded, sae, "random")
    x = np.random.default_rng(5).standard_normal((12, 256)).astype(np.float32)
    check_encode_parity(loaded, sae, model_id, x, from_table=False)


def test_codes_table_holds_exactly_the_encoded_documents(loaded: Backend, random_sae: SAE) -> None:
    model_id = publish_model(loaded, random_sae, "codes")
    doc_ids, x = embeddings_of(loaded)
    codes = random_sae.encode(x)
    stored = loaded.query(
        "SELECT doc_id, feature_id, activation FROM sae_codes WHERE model_id = ? ORDER BY doc_id, activation DESC, feature_id",
        (model_id,),
    )
    expected = [(int(d), f, a) for d, row in zip(doc_ids, codes.rows()) for f, a in row]
    assert [(d, f) for d, f, _ in stored] == [(d, f) for d, f, _ in expected]
    np.testing.assert_allclose([a for *_, a in stored], [a for *_, a in expected], rtol=1e-6)


def test_decode_and_steer_parity(loaded: Backend, random_sae: SAE) -> None:
    model_id = publish_model(loaded, random_sae, "steer")
    _, x = embeddings_of(loaded)
    v = x[3]
    param = loaded.vector_param(v)
    np.testing.assert_array_equal(vector_sql(loaded, "steer(?, 17, 0.75, ?)", (param, model_id)), random_sae.steer(v, 17, 0.75)[0])
    family = vector_sql(
        loaded, "steer_many(?, CAST(? AS INTEGER[]), CAST(? AS FLOAT8[]), ?)", (param, [4, 9, 300], [1.5, -0.5, 0.25], model_id)
    )
    np.testing.assert_allclose(family, random_sae.steer(v, [4, 9, 300], [1.5, -0.5, 0.25])[0], rtol=1e-6, atol=1e-6)
    decoded = vector_sql(loaded, "sae_decode(sae_encode(?, ?), ?)", (param, model_id, model_id))
    np.testing.assert_allclose(decoded, random_sae.decode(random_sae.encode(v))[0], rtol=1e-5, atol=1e-6)


def test_model_lookup_by_name_picks_latest_version(loaded: Backend, random_sae: SAE) -> None:
    first = publish_model(loaded, random_sae, "astro")
    second = publish_model(loaded, SAE.random(256, 64, 8, seed=2), "astro")
    publish_model(loaded, random_sae, "other")
    assert loaded.query("SELECT sae_model_id('astro')")[0][0] == second != first
    assert loaded.query("SELECT version FROM sae_models WHERE model_id = ?", (second,))[0][0] == 2
    with pytest.raises(DB_ERRORS, match="no published model named 'missing'"):  # was NULL: then every function returned NULL
        loaded.query("SELECT sae_model_id('missing')")


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT sae_encode(NULL, {m})", "embedding is NULL"),
        ("SELECT sae_encode({v3}, {m})", "3 dimensions"),
        ("SELECT sae_encode({v}, 999)", "unknown model 999"),
        ("SELECT sae_encode({v}, NULL)", "model is NULL"),
        ("SELECT steer({v}, 512, 1.0, {m})", "feature 512 does not exist"),
        ("SELECT steer({v}, -3, 1.0, {m})", "feature -3 does not exist"),
        ("SELECT steer({v}, NULL, 1.0, {m})", "NULL"),
        ("SELECT steer({v}, 1, 'NaN', {m})", "NaN"),
        ("SELECT steer({v3}, 1, 1.0, {m})", "3 dimensions"),
        ("SELECT steer_many({v}, {ints}, {floats3}, {m})", "2 features but 3 strengths"),
        ("SELECT sae_decode(sae_encode({v}, {m}), 999)", "unknown model 999"),
        ("SELECT steer({v}, 1, 0.5, NULL)", "model is NULL"),
        ("SELECT steer({v}, 1, 0.5, sae_model_id('typo'))", "no published model named 'typo'"),
    ],
)
def test_bad_input_is_a_clear_sql_error(loaded: Backend, random_sae: SAE, sql: str, message: str) -> None:
    model_id = publish_model(loaded, random_sae, "errors")
    pg = loaded.dialect == "postgres"
    literals = {
        "m": str(model_id),
        "v": "'[" + ",".join(["0.1"] * 256) + "]'::vector" if pg else "[" + ",".join(["0.1"] * 256) + "]",
        "v3": "'[1,2,3]'::vector" if pg else "[1.0, 2.0, 3.0]",
        "ints": "ARRAY[1, 2]" if pg else "[1, 2]",
        "floats3": "ARRAY[1.0, 2.0, 3.0]" if pg else "[1.0, 2.0, 3.0]",
    }
    with pytest.raises(DB_ERRORS, match=message):
        loaded.query(sql.format(**literals))
    assert loaded.count("papers") == 400  # nothing lost


def test_nan_embedding_is_rejected(loaded: Backend, random_sae: SAE) -> None:
    model_id = publish_model(loaded, random_sae, "nan")
    nan_vector = [float("nan")] + [0.0] * 255
    if loaded.dialect == "postgres":
        with pytest.raises(psycopg.Error, match="NaN not allowed in vector"):
            loaded.query("SELECT sae_encode(CAST(? AS vector), ?)", (str(nan_vector).replace("nan", "NaN"), model_id))
    else:
        with pytest.raises(duckdb.Error, match="NaN or infinite"):
            loaded.query("SELECT sae_encode(?, ?)", (nan_vector, model_id))


def test_sql_injection_through_parameters_is_inert(loaded: Backend, random_sae: SAE) -> None:
    hostile = "x'); DROP TABLE papers; --"
    model_id = publish_model(loaded, random_sae, hostile)
    assert loaded.query("SELECT name FROM sae_models WHERE model_id = ?", (model_id,))[0][0] == hostile
    assert loaded.query("SELECT sae_model_id(?)", (hostile,))[0][0] == model_id
    assert loaded.count("papers") == 400


def test_steer_toward_equals_numpy_and_means_the_same_for_every_feature(loaded: Backend, random_sae: SAE) -> None:
    """steer_toward(x, f, t): the unit vector a fraction t of the angle from x to the feature's
    direction, on both backends as in numpy: at 0.5 equally close to the query and the feature."""
    model_id = publish_model(loaded, random_sae, "toward")
    _, x = embeddings_of(loaded)
    x = x[:5]
    many = "steer_toward_many({v}, [3, 40], [0.3, -0.6], {m})" if loaded.dialect == "duckdb" else \
        "steer_toward_many({v}, ARRAY[3, 40], ARRAY[0.3, -0.6], {m})"
    for row in x:
        v, m = "?", str(model_id)
        for fraction in (0.0, 0.25, 0.5, 1.0, -0.5):
            got = vector_sql(loaded, f"steer_toward({v}, 3, {fraction}, {m})", (loaded.vector_param(row),))
            np.testing.assert_allclose(got, random_sae.steer_toward(row, 3, fraction)[0], atol=2e-6)
        middle = random_sae.steer_toward(row, 7, 0.5)[0]
        direction = random_sae.w_dec[7] / np.linalg.norm(random_sae.w_dec[7])
        assert abs(middle @ (row / np.linalg.norm(row)) - middle @ direction) < 1e-5
        got = vector_sql(loaded, many.format(v=v, m=m), (loaded.vector_param(row),))
        np.testing.assert_allclose(got, random_sae.steer_toward(row, [3, 40], [0.3, -0.6])[0], atol=2e-6)
    for bad, message in (("steer_toward(?, 3, 1.5, {m})", "between -1 and 1"), ("steer_toward(?, 3, 0.5, NULL)", "model is NULL"),
                         ("steer_toward(?, 9999, 0.5, {m})", "9999")):
        with pytest.raises(DB_ERRORS, match=message):
            vector_sql(loaded, bad.format(m=model_id), (loaded.vector_param(x[0]),))
