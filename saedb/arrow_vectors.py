"""Vectors as Arrow columns and back: float32 matrices <-> fixed-size lists (DuckDB FLOAT[dim])."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saedb.errors import InvalidInputError


def fixed_size_vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 (rows, dim) matrix as an Arrow fixed-size list column (DuckDB FLOAT[dim])."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])


def vectors_to_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow list / fixed-size-list column of equal-length float vectors as a float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if (lengths != lengths[0]).any():  # rows of 257 and 255 values must not pass as two of 256
            raise InvalidInputError(
                f"embedding rows have different numbers of dimensions ({int(lengths.min())} to {int(lengths.max())})")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(column), -1)


def hashed_rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(doc ids, float32 matrix, content hashes) of a (doc_id, embedding, embedding_hash) Arrow table."""
    ids, vectors = ids_and_vectors(table.select([0, 1]))
    return ids, vectors, (table.column(2).to_numpy().astype(np.uint64) if table.num_rows else np.zeros(0, np.uint64))


def ids_and_vectors(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(doc ids, float32 matrix) of a (doc_id, embedding) Arrow table."""
    if not table.num_rows:
        return np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
    return table.column(0).to_numpy().astype(np.int64), vectors_to_matrix(table.column(1))
