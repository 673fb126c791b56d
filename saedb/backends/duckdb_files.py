"""One DuckDB instance per file per process, shared by every backend on it, with the search
indexes of each of its schemas; and how saedb opens a file (its storage format)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import duckdb
import numpy as np

from saedb.backends.approximate_index import ApproximateIndex
from saedb.backends.exact_index import ExactIndex, Stamp
from saedb.backends.paper_rows import PaperRows, PaperTable
from saedb.errors import ConfigurationError, DatabaseBusyError

if TYPE_CHECKING:
    from saedb.udfs.duckdb import ModelCache

# New files are written in DuckDB 1.5's storage format, which DuckDB 1.5 and 2.0 read: the
# duckdb CLI that installs from PyPI (duckdb-cli 1.5.6) cannot open 2.0's format ("version
# number 69, but we can only read versions between 64 and 68"). Existing files keep theirs.
STORAGE_COMPATIBILITY = "v1.5.0"
FILTERS_KEPT = 32  # a read-only instance's filters kept in memory (8 bytes a document each)


def open_file(path: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path``; a new file is first created in STORAGE_COMPATIBILITY's
    format, which it keeps. Later connections carry no special configuration, so other code in
    the process can still open the file with a plain ``duckdb.connect`` (DuckDB refuses a second
    connection to an open file with another configuration)."""
    if not read_only and path != ":memory:" and not Path(path).exists():
        duckdb.connect(path, config={"storage_compatibility_version": STORAGE_COMPATIBILITY}).close()
    return duckdb.connect(path, read_only=read_only)


def shadow_functions(con: duckdb.DuckDBPyConnection, functions: dict[str, int]) -> None:
    """Route saedb's function names to its UDFs (``saedb_udf_<name>``) on one connection, ahead
    of the pure-SQL macros of the same names in the file."""
    for name, arity in functions.items():
        args = ", ".join(f"arg{i}" for i in range(arity))
        con.execute(f"CREATE OR REPLACE TEMP MACRO {name}({args}) AS saedb_udf_{name}({args})")


def in_schema(con: duckdb.DuckDBPyConnection, schema: str | None) -> duckdb.DuckDBPyConnection:
    """``con``, resolving names in the workspace ``schema`` first (if any)."""
    if schema is not None:
        con.execute(f"SET search_path = '{schema},main'")
    return con


@dataclass
class SearchIndexes:
    """What searches rank from: one pair per database file, schema and process, shared by the
    backends on it. On a read-only instance no process can change the file while it is open
    (DuckDB's file lock), so the embeddings' stamp is read once (``fixed_stamp``), searches
    there skip the change check, and their hits' papers come from memory once loaded (``papers``)."""

    exact: ExactIndex  # the embeddings in memory, loaded by the first exact search
    approximate: ApproximateIndex  # the HNSW graph beside the file, when one was built
    read_only: bool = False
    fixed_stamp: Stamp | None = None  # read_only: the embeddings' stamp, read by the first search
    papers: PaperRows | None = None  # read_only: every paper's row, loaded in the background
    # writable: every paper's row as the last snapshot that searched read them, and their stamp
    snapshot_papers: tuple[tuple, PaperTable] | None = None
    # read_only: the sorted doc ids a filter allows, by its SQL and parameters, the most recent FILTERS_KEPT
    filters: OrderedDict[tuple, np.ndarray] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allowed(self, key: tuple, read: Callable[[], np.ndarray]) -> np.ndarray:
        """A filter's documents on a read-only instance: read once, then from memory."""
        with self.lock:
            if key in self.filters:
                self.filters.move_to_end(key)
                return self.filters[key]
        ids = np.sort(read())
        with self.lock:
            self.filters[key] = ids
            while len(self.filters) > FILTERS_KEPT:
                self.filters.popitem(last=False)
        return ids


class SharedDatabase:
    """One DuckDB instance per file per process, reference-counted.

    UDFs are registered on its root connection and live as long as it does: DuckDB crashes
    if a UDF is called after the connection that registered it has closed, so backends
    never own the registration — each works on its own cursor of the root.
    """

    _open: ClassVar[dict[str, "SharedDatabase"]] = {}
    _lock = threading.Lock()

    def __init__(self, key: str, path: str, read_only: bool) -> None:
        try:
            self.root = open_file(path, read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():  # DuckDB has no finer class for a file held by another process
                raise DatabaseBusyError(f"{path} is open in another process: {exc}") from None
            raise ConfigurationError(f"cannot open {path}: {exc}") from None
        except duckdb.ConnectionException as exc:  # this process holds the file with another configuration
            mode = "read-only" if read_only else "writable"
            raise ConfigurationError(
                f"cannot open {path} {mode}: this process already holds a DuckDB connection to it opened another way "
                "(DuckDB shares one file between the connections of a process only when all open it alike, e.g. a "
                "duckdb.connect(path, read_only=True) and a writable one cannot both be open): open it as the other "
                f"connection does (saedb.connect(path, read_only=True) beside a read-only one), or close that one first ({exc})"
            ) from None
        except duckdb.Error as exc:
            raise ConfigurationError(f"cannot open {path}: {exc}") from None
        self.key, self.read_only, self.users = key, read_only, 0
        self.functions: dict[str, int] = {}  # registered UDFs: name -> number of arguments
        self.udfs_for: tuple[str, int] | None = None  # the embedder binding the UDFs were built for
        self.models: ModelCache | None = None  # the UDFs' weights, shared by in-process steering
        self.file = None if path == ":memory:" else Path(path).resolve()
        self.search_indexes: dict[str | None, SearchIndexes] = {}  # per workspace schema (None: main)
        self.publish_lock = threading.Lock()  # one model write-back at a time per database (DuckDB would abort the second)

    @classmethod
    def acquire(cls, path: str, read_only: bool) -> "SharedDatabase":
        in_memory = path == ":memory:"
        key = path if in_memory else str(Path(path).resolve())
        with cls._lock:
            shared = None if in_memory else cls._open.get(key)
            if shared is None:
                shared = cls(key, path, read_only)
                if not in_memory:
                    cls._open[key] = shared
            elif shared.read_only and not read_only:
                # A writable instance also serves read-only users of the same process (DuckDB allows one
                # instance per file and process); only those users' own code then keeps them from writing.
                raise ConfigurationError(f"{path} is already open read-only in this process")
            shared.users += 1
            return shared

    def indexes(self, schema: str | None) -> SearchIndexes:
        """The search indexes of one schema's embeddings (a workspace's graph has its own files)."""
        with self._lock:
            if schema not in self.search_indexes:
                graph_of = None if self.file is None else self.file.with_name(self.file.name + (f".{schema}" if schema else ""))
                self.search_indexes[schema] = SearchIndexes(ExactIndex(), ApproximateIndex(graph_of, writable=not self.read_only),
                                                             read_only=self.read_only,
                                                             papers=PaperRows(lambda: in_schema(self.root.cursor(), schema))
                                                             if self.read_only else None)
            return self.search_indexes[schema]

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users == 0:
                if self._open.get(self.key) is self:
                    del self._open[self.key]
                for indexes in self.search_indexes.values():
                    if indexes.papers is not None:
                        indexes.papers.stop()
                self.root.close()
