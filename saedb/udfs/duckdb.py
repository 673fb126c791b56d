"""DuckDB UDFs ``sae_encode``, ``sae_decode``, the ``steer`` family and ``embed``.

Each is a vectorised Arrow UDF: DuckDB hands over a chunk of rows (2048 by default),
the chunk becomes one numpy matrix, and the numpy core in ``saedb.sae`` does the math.
Registered as ``saedb_udf_<name>`` and called through per-connection temporary macros
``<name>``, which shadow the pure-SQL macros of the same names persisted in the file for
other DuckDB clients (sql/duckdb/macros.sql). Signatures and errors match the Postgres functions:

    sae_encode(embedding DOUBLE[], model INTEGER) -> STRUCT(feature_id INTEGER, activation FLOAT)[]
    sae_decode(codes STRUCT(feature_id INTEGER, activation FLOAT)[], model INTEGER) -> FLOAT[dim]
    steer(embedding DOUBLE[], feature INTEGER, strength DOUBLE, model INTEGER) -> FLOAT[dim]
    steer_many(embedding DOUBLE[], features INTEGER[], strengths DOUBLE[], model INTEGER) -> FLOAT[dim]
    steer_label(embedding DOUBLE[], label VARCHAR, strength DOUBLE, model INTEGER) -> FLOAT[dim]
    steer_family(embedding DOUBLE[], family INTEGER, strength DOUBLE, model INTEGER) -> FLOAT[dim]
    steer_toward(embedding DOUBLE[], feature INTEGER, fraction DOUBLE, model INTEGER) -> FLOAT[dim]
    steer_toward_many(embedding DOUBLE[], features INTEGER[], fractions DOUBLE[], model INTEGER) -> FLOAT[dim]
    steer_toward_family(embedding DOUBLE[], family INTEGER, fraction DOUBLE, model INTEGER) -> FLOAT[dim]
    sae_feature_by_label(label VARCHAR, model INTEGER) -> INTEGER
    embed(text VARCHAR) -> FLOAT[dim]          (only once the database has an embedder)

Vectors come back as FLOAT[dim], the type of the embeddings column, so they compare
directly with ``array_cosine_distance(embedding, steer(...))`` (FLOAT[] before any load).
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import sqltypes as st

from saedb.arrow_vectors import fixed_size_vectors, vectors_to_matrix
from saedb.backends.base import Backend
from saedb.concepts import concept_feature
from saedb.embedders import get_embedder, runnable_here
from saedb.errors import InvalidInputError, UnknownModelError
from saedb.sae import SAE, SparseCodes, as_matrix, toward


FEATURE = duckdb.struct_type({"feature_id": st.INTEGER, "activation": st.FLOAT})
VECTOR_IN = duckdb.list_type(st.DOUBLE)  # accepts FLOAT[d] columns and DOUBLE / DECIMAL literals
CODES = duckdb.list_type(FEATURE)
CODES_IN = duckdb.list_type(duckdb.struct_type({"feature_id": st.INTEGER, "activation": st.DOUBLE}))  # takes 0.5e0 literals too


def _dense(column: pa.ChunkedArray, fn: str, what: str = "embedding") -> pa.Array:
    array = column.combine_chunks()
    if array.null_count:
        raise InvalidInputError(f"{fn}: {what} is NULL")
    return array


def _ints(column: pa.ChunkedArray, fn: str, what: str) -> np.ndarray:
    return _dense(column, fn, what).to_numpy(zero_copy_only=False).astype(np.int64)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def _list_vectors(matrix: np.ndarray) -> pa.ListArray:
    rows, dim = matrix.shape
    return _list_array(np.arange(0, rows * dim + 1, dim), pa.array(np.ascontiguousarray(matrix, np.float32).ravel()))


def codes_to_arrow(codes: SparseCodes) -> pa.ListArray:
    """Sparse codes as STRUCT(feature_id, activation)[] per row, inactive slots dropped."""
    active = codes.active_mask()
    offsets = np.concatenate([[0], np.cumsum(active.sum(axis=1))])
    structs = pa.StructArray.from_arrays(
        [pa.array(codes.indices[active], pa.int32()), pa.array(codes.values[active], pa.float32())],
        names=["feature_id", "activation"],
    )
    return _list_array(offsets, structs)


class ModelCache:
    """Weights read once per published model version. Each call checks the version's
    fingerprint (its creation time while 'ready'), so a retired or deleted model is an
    error and a reused model id never serves the old weights."""

    def __init__(self, reader: Backend, embedder_name: str | None = None, fixed: bool = False) -> None:
        self.reader = reader
        self.embedder_name = embedder_name
        self.fixed = fixed  # a read-only database: no model can change while it is open, weights are checked once
        self.models: dict[int, tuple[object, SAE]] = {}
        self.lock = threading.Lock()  # DuckDB may call a UDF from several threads at once

    def get(self, model_id: int) -> SAE:
        with self.lock:
            if self.fixed and model_id in self.models:
                return self.models[model_id][1]
            rows = self.reader.query("SELECT created_at FROM sae_models WHERE model_id = ? AND status = 'ready'", (model_id,))
            if not rows:
                self.models.pop(model_id, None)
                raise UnknownModelError(f"unknown model {model_id} (no published model with that id)")
            cached = self.models.get(model_id)
            if cached is None or cached[0] != rows[0][0]:
                cached = self.models[model_id] = (rows[0][0], self.reader.load_sae(model_id))
            return cached[1]

    def feature_by_label(self, model_id: int, label: str) -> int:
        """The concept's feature by ``saedb.concepts``' rule (Postgres' sae_feature_by_label
        follows it too, without the embedding step)."""
        sae = self.get(model_id)
        with self.lock:
            return concept_feature(self.reader, model_id, label, self.embed, decoder=sae.w_dec).feature_id

    @cached_property
    def embed(self) -> Callable[[str], np.ndarray] | None:
        """The database's embedder for one text, when it runs here."""
        if self.embedder_name is None or not runnable_here(self.embedder_name):
            return None
        embedder = get_embedder(self.embedder_name)
        return lambda text: embedder.embed([text])[0]

    def family_members(self, model_id: int, family_id: int) -> list[int]:
        with self.lock:
            rows = self.reader.query(
                "SELECT feature_id FROM family_members WHERE model_id = ? AND family_id = ? ORDER BY feature_id", (model_id, family_id)
            )
        if not rows:
            raise InvalidInputError(f"model {model_id} has no family {family_id}")
        return [r[0] for r in rows]

    def per_model(self, fn: str, models: pa.ChunkedArray, compute: Callable[[SAE, np.ndarray], np.ndarray | SparseCodes]):
        """Run ``compute(sae, row_positions)`` for each distinct model id in a chunk."""
        ids = _ints(models, fn, "model")
        for model_id in np.unique(ids):
            try:
                sae = self.get(int(model_id))
            except LookupError as exc:
                raise InvalidInputError(f"{fn}: {exc}") from None
            rows = np.flatnonzero(ids == model_id)
            yield rows, compute(sae, rows)


UDF_PREFIX = "saedb_udf_"


def added(sae: SAE, x: np.ndarray, features: list[int], strengths: list[float] | np.ndarray) -> np.ndarray:
    """Additive steering of one row: x + sum of strength * decoder row."""
    return sae.steer(x, features, strengths)[0]


def register_udfs(con: duckdb.DuckDBPyConnection, registered: dict[str, int], reader: Backend,
                  bound: tuple[str, int] | None, read_only: bool = False) -> ModelCache:
    """(Re-)register saedb's SQL functions on ``con`` (the database's root connection), as
    ``saedb_udf_<name>``, recording each name and arity in ``registered``; ``reader`` (a
    connection of its own) reads weights and labels, ``bound`` is the embedder binding. Returns
    the functions' weight cache, which in-process steering shares.
    Each connection then shadows the file's pure-SQL macros of the same names with temporary
    macros over these (the backend's ``shadow_sql_macros``). Like datasette's
    ``prepare_connection``: the backend hands over its connection, this module never imports it."""
    cache = ModelCache(reader, bound[0] if bound else None, fixed=read_only)
    vector_out = duckdb.array_type(st.FLOAT, bound[1]) if bound else duckdb.list_type(st.FLOAT)
    vectors_out = fixed_size_vectors if bound else _list_vectors

    def embeddings_for(sae: SAE, column: pa.Array, rows: np.ndarray, fn: str) -> np.ndarray:
        try:
            return as_matrix(vectors_to_matrix(column.take(pa.array(rows))), sae.d)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{fn}: {exc}") from None
        except ValueError:  # ragged rows cannot form a matrix
            raise InvalidInputError(f"{fn}: embedding has the wrong number of dimensions (model expects {sae.d})") from None

    def encode_rows(sae: SAE, x: np.ndarray) -> SparseCodes:
        try:
            return sae.encode(x)
        except InvalidInputError as exc:
            raise InvalidInputError(f"sae_encode: {exc}") from None

    def sae_encode(embedding: pa.ChunkedArray, model: pa.ChunkedArray) -> pa.Array:
        emb = _dense(embedding, "sae_encode")
        results: list[tuple[np.ndarray, SparseCodes]] = list(
            cache.per_model("sae_encode", model, lambda sae, rows: encode_rows(sae, embeddings_for(sae, emb, rows, "sae_encode")))
        )
        if len(results) == 1:
            return codes_to_arrow(results[0][1])
        k = max(codes.indices.shape[1] for _, codes in results)
        indices = np.zeros((len(emb), k), np.int32)
        values = np.zeros((len(emb), k), np.float32)
        for rows, codes in results:
            indices[rows, : codes.indices.shape[1]] = codes.indices
            values[rows, : codes.values.shape[1]] = codes.values
        return codes_to_arrow(SparseCodes(indices, values))

    def sae_decode(codes: pa.ChunkedArray, model: pa.ChunkedArray) -> pa.Array:
        lists = _dense(codes, "sae_decode", "codes")
        flat = lists.flatten()
        feature_ids = flat.field("feature_id").to_numpy(zero_copy_only=False)
        activations = flat.field("activation").to_numpy(zero_copy_only=False).astype(np.float32)
        offsets = lists.offsets.to_numpy()
        if flat.field("feature_id").null_count or flat.field("activation").null_count:
            raise InvalidInputError("sae_decode: codes contain a NULL feature_id or activation")
        if not np.isfinite(activations).all():
            raise InvalidInputError("sae_decode: activation is NaN or infinite")  # or past float32's range

        def decode(sae: SAE, rows: np.ndarray) -> np.ndarray:
            out = np.tile(sae.b_pre, (len(rows), 1))
            for out_row, row in enumerate(rows):
                ids = feature_ids[offsets[row] : offsets[row + 1]].astype(np.int64)
                try:
                    sae.check_features(ids)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"sae_decode: {exc}") from None
                out[out_row] += activations[offsets[row] : offsets[row + 1]] @ sae.w_dec[ids]
            return out

        return vectors_out(_scatter(len(lists), cache.per_model("sae_decode", model, decode)))

    def steering(fn: str, resolve: Callable[[SAE, int, object, object], tuple[list[int], list[float] | np.ndarray]],
                 apply: Callable[[SAE, np.ndarray, list[int], list[float] | np.ndarray], np.ndarray] = added):
        """A steering UDF (embedding, what, strength, model) -> the steered embedding, where
        ``resolve(sae, model_id, what, strength)`` gives a row's features and strengths and
        ``apply(sae, x, features, strengths)`` steers one row."""

        def udf(embedding, what, strength, model) -> pa.Array:
            emb = _dense(embedding, fn)
            whats = _dense(what, fn, "feature, label or family").to_pylist()
            strengths = _dense(strength, fn, "strength").to_pylist()
            model_ids = _ints(model, fn, "model")

            def steer_rows(sae: SAE, rows: np.ndarray) -> np.ndarray:
                x = embeddings_for(sae, emb, rows, fn)
                out = np.empty_like(x)
                for out_row, row in enumerate(rows):
                    try:
                        features, weights = resolve(sae, int(model_ids[row]), whats[row], strengths[row])
                        out[out_row] = apply(sae, x[out_row], features, weights)
                    except InvalidInputError as exc:
                        raise InvalidInputError(f"{fn}: {str(exc).removeprefix(fn + ': ')}") from None
                return out

            return vectors_out(_scatter(len(emb), cache.per_model(fn, model, steer_rows)))

        return udf

    def listed(values: object, what: str) -> list:
        values = values if isinstance(values, list) else [values]
        if not values or None in values:
            raise InvalidInputError(f"{what} must be non-empty and not NULL")
        return values

    def by_family(sae: SAE, model_id: int, family: object, strength: object) -> tuple[list[int], np.ndarray]:
        members = cache.family_members(model_id, int(family))  # type: ignore[arg-type]
        return members, sae.family_strengths(members, float(strength))  # type: ignore[arg-type]

    def by_label(fn: str) -> Callable[[pa.ChunkedArray, pa.ChunkedArray], pa.Array]:
        def sae_feature_by_label(labels: pa.ChunkedArray, model: pa.ChunkedArray) -> pa.Array:
            texts, model_ids = _dense(labels, fn, "label").to_pylist(), _ints(model, fn, "model")
            try:
                return pa.array([cache.feature_by_label(int(m), str(t)) for t, m in zip(texts, model_ids)], pa.int32())
            except InvalidInputError as exc:
                raise InvalidInputError(f"{fn}: {exc}") from None
        return sae_feature_by_label

    steer = steering("steer", lambda sae, m, f, s: (listed(f, "features"), listed(s, "strengths")))
    steer_label = steering("steer_label", lambda sae, m, label, s: ([cache.feature_by_label(m, str(label))], [float(s)]))
    steer_family = steering("steer_family", by_family)
    steer_toward = steering("steer_toward", lambda sae, m, f, s: (listed(f, "features"), listed(s, "fractions")),
                            lambda sae, x, features, fractions: sae.steer_toward(x, features, fractions)[0])
    steer_toward_family = steering(
        "steer_toward_family", lambda sae, m, family, t: (cache.family_members(m, int(family)), [float(t)]),  # type: ignore[arg-type]
        lambda sae, x, members, fraction: toward(x[None], sae.family_direction(members), float(fraction[0]))[0])

    functions = {
        "sae_encode": (sae_encode, [VECTOR_IN, st.INTEGER], CODES),
        "sae_decode": (sae_decode, [CODES_IN, st.INTEGER], vector_out),
        "steer": (steer, [VECTOR_IN, st.INTEGER, st.DOUBLE, st.INTEGER], vector_out),
        "steer_many": (steer, [VECTOR_IN, duckdb.list_type(st.INTEGER), duckdb.list_type(st.DOUBLE), st.INTEGER], vector_out),
        "steer_label": (steer_label, [VECTOR_IN, st.VARCHAR, st.DOUBLE, st.INTEGER], vector_out),
        "steer_family": (steer_family, [VECTOR_IN, st.INTEGER, st.DOUBLE, st.INTEGER], vector_out),
        "steer_toward": (steer_toward, [VECTOR_IN, st.INTEGER, st.DOUBLE, st.INTEGER], vector_out),
        "steer_toward_many": (steer_toward, [VECTOR_IN, duckdb.list_type(st.INTEGER), duckdb.list_type(st.DOUBLE), st.INTEGER],
                              vector_out),
        "steer_toward_family": (steer_toward_family, [VECTOR_IN, st.INTEGER, st.DOUBLE, st.INTEGER], vector_out),
        "sae_feature_by_label": (by_label("steer_label"), [st.VARCHAR, st.INTEGER], st.INTEGER),
    }
    if bound:
        functions["embed"] = (_embed_function(bound[0]), [st.VARCHAR], vector_out)
    for name, (fn, params, returns) in functions.items():
        if name in registered:
            con.remove_function(UDF_PREFIX + name)
        con.create_function(UDF_PREFIX + name, fn, params, returns, type="arrow", null_handling="special")
        registered[name] = len(params)
    return cache


def _scatter(n_rows: int, parts) -> np.ndarray:
    """Assemble per-model row results back into chunk order."""
    out: np.ndarray | None = None
    for rows, values in parts:
        if out is None:
            out = np.empty((n_rows, values.shape[1]), np.float32)
        out[rows] = values
    assert out is not None
    return out


def _embed_function(embedder_name: str) -> Callable[[pa.ChunkedArray], pa.Array]:
    """``embed(text)`` with the database's embedder, loaded on first use."""
    embedder = None

    def embed(texts: pa.ChunkedArray) -> pa.Array:
        nonlocal embedder
        values = _dense(texts, "embed", "text").to_pylist()
        if any(not v.strip() for v in values):
            raise InvalidInputError("embed: text is empty")
        if embedder is None:
            embedder = get_embedder(embedder_name)
        return fixed_size_vectors(embedder.embed(values))

    return embed
