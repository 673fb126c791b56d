"""Embeddings made elsewhere: a Parquet or Arrow file with an id column and one vector column.

Rules (checked before anything is written, so a load never stops half-way on them):
- the vector column is a fixed-size list of floats, or a list column whose rows all have
  the same length; any dimension (384-d MiniLM, 1536-d OpenAI, ...);
- ids are non-empty and unique: a duplicate id is an error (which vector is right is unknown);
- a vector with NaN/Inf values or zero norm is a row error of its paper (kept in load_errors);
- a paper with no vector in the file is a row error; vectors with no paper are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saedb.errors import InvalidInputError

VECTOR_COLUMN_NAMES = ("embedding", "embeddings", "vector", "emb")


@dataclass
class PrecomputedEmbeddings:
    """Vectors by document id, with the rows that cannot be used and why."""

    source: str
    index: dict[str, int]
    matrix: np.ndarray  # float32 (rows, dim), rows as given (not renormalised)
    unusable: dict[str, str] = field(default_factory=dict)  # id -> reason

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def lookup(self, arxiv_id: str) -> np.ndarray:
        """The vector of one id; InvalidInputError (a row error) when there is none or it is unusable."""
        if arxiv_id in self.unusable:
            raise InvalidInputError(f"embedding of {arxiv_id!r} in {self.source} {self.unusable[arxiv_id]}")
        row = self.index.get(arxiv_id)
        if row is None:
            raise InvalidInputError(f"no embedding for id {arxiv_id!r} in {self.source}")
        return self.matrix[row]

    def unmatched(self, loaded_ids: set[str]) -> int:
        """Vectors whose id is not among the given paper ids."""
        return sum(1 for i in self.index if i not in loaded_ids)


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such embeddings file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if name.endswith((".arrow", ".feather", ".ipc")):
            import pyarrow.feather as feather

            return feather.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable Parquet/Arrow file: {exc}") from None
    raise InvalidInputError(f"{path}: embeddings must be a .parquet or .arrow/.feather file")


def _vector_column(table: pa.Table, name: str | None, source: str) -> str:
    if name is not None:
        if name not in table.column_names:
            raise InvalidInputError(f"{source}: no column {name!r} (columns: {', '.join(table.column_names)})")
        return name
    lists = [f.name for f in table.schema if pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type)
             or pa.types.is_large_list(f.type)]
    named = [c for c in VECTOR_COLUMN_NAMES if c in lists]
    if named:
        return named[0]
    if len(lists) == 1:
        return lists[0]
    raise InvalidInputError(f"{source}: cannot tell which column holds the vectors ({lists or 'no list column'}); name it")


def _as_matrix(column: pa.ChunkedArray, source: str) -> np.ndarray:
    array = column.combine_chunks()
    if array.null_count:
        first = int(pc.index(pc.is_null(array), True).as_py())
        raise InvalidInputError(f"{source}: row {first + 1} has no vector (null)")
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    else:
        lengths = pc.list_value_length(array).to_numpy()
        dim = int(lengths[0]) if len(lengths) else 0
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            raise InvalidInputError(
                f"{source}: vectors have different lengths ({dim} in row 1, {lengths[wrong[0]]} in row {wrong[0] + 1}; "
                f"{wrong.size} rows differ from the first)"
            )
    if not pa.types.is_floating(array.type.value_type) and not pa.types.is_integer(array.type.value_type):
        raise InvalidInputError(f"{source}: vector values must be numbers, not {array.type.value_type}")
    if dim < 1:
        raise InvalidInputError(f"{source}: vectors are empty")
    values = array.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.astype(np.float32, copy=False).reshape(-1, dim))


def read_embeddings(path: str | Path, id_column: str = "id", vector_column: str | None = None) -> PrecomputedEmbeddings:
    """Read and validate an embeddings file; raises InvalidInputError for file-level problems."""
    path = Path(path)
    source = path.name
    table = _read_table(path)
    if id_column not in table.column_names:
        raise InvalidInputError(f"{source}: no id column {id_column!r} (columns: {', '.join(table.column_names)})")
    ids_array = table.column(id_column)
    if ids_array.null_count:
        raise InvalidInputError(f"{source}: {ids_array.null_count} rows have no id")
    ids = [str(i).strip() for i in ids_array.to_pylist()]
    if any(not i for i in ids):
        raise InvalidInputError(f"{source}: {sum(1 for i in ids if not i)} rows have an empty id")
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise InvalidInputError(
            f"{source}: {len(duplicates)} ids occur more than once (e.g. {', '.join(map(repr, duplicates[:3]))}); "
            "keep one vector per id"
        )
    matrix = _as_matrix(table.column(_vector_column(table, vector_column, source)), source)
    del table  # the matrix is a copy: do not hold the file's columns twice
    finite = np.isfinite(matrix).all(axis=1)
    # float64: no temporary the size of the matrix, and no float32 overflow (1e30-scale rows) or underflow
    squared_norms = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
    unusable = {ids[r]: "has NaN or infinite values" for r in np.flatnonzero(~finite)}
    unusable.update({ids[r]: "is all zeros" for r in np.flatnonzero(finite & (squared_norms == 0))})
    return PrecomputedEmbeddings(source=source, index={i: r for r, i in enumerate(ids)}, matrix=matrix, unusable=unusable)
