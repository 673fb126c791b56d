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
