"""Build PostgreSQL binary COPY payloads from numpy arrays in one vectorised pass.

Row-by-row ``write_row`` costs microseconds per value in Python; a structured numpy
array with big-endian fields serialises a whole batch at memory speed. Supported
column kinds: int2, int4, int8, float4 and pgvector ``vector``.
"""

from __future__ import annotations

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + np.array([0, 0], ">i4").tobytes()
TRAILER = np.array([-1], ">i2").tobytes()

_SCALARS = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4"}


def binary_copy(columns: list[tuple[str, np.ndarray]]) -> bytes:
    """Encode rows for ``COPY ... FROM STDIN (FORMAT BINARY)``.

    ``columns`` is a list of (kind, array); scalar kinds take a (rows,) array, ``vector``
    takes a (rows, dim) float32 matrix. NULLs are not supported (the schema forbids them).
    """
    n_rows = len(columns[0][1])
    fields: list[tuple] = [("n_fields", ">i2")]
    for i, (kind, values) in enumerate(columns):
        if len(values) != n_rows:
            raise ValueError(f"column {i} has {len(values)} rows, expected {n_rows}")
        fields.append((f"len{i}", ">i4"))
        if kind == "vector":
            fields += [(f"dim{i}", ">i2"), (f"unused{i}", ">i2"), (f"val{i}", ">f4", (values.shape[1],))]
        else:
            fields.append((f"val{i}", _SCALARS[kind]))
    rows = np.empty(n_rows, dtype=np.dtype(fields))
    rows["n_fields"] = len(columns)
    for i, (kind, values) in enumerate(columns):
        if kind == "vector":
            dim = values.shape[1]
            rows[f"len{i}"] = 4 + 4 * dim
            rows[f"dim{i}"] = dim
            rows[f"unused{i}"] = 0
        else:
            rows[f"len{i}"] = np.dtype(_SCALARS[kind]).itemsize
        rows[f"val{i}"] = values
    return HEADER + rows.tobytes() + TRAILER
