"""A SQLAlchemy dialect for saedb DuckDB files: duckdb-engine's, with the table reflection that
DuckDB 2.0 answers. URL: ``duckdb+saedb:///path/to/file.duckdb`` (an entry point of saedb).

duckdb-engine 0.17 inherits Postgres's queries for keys, constraints and comments; they cast
to REGCLASS, which DuckDB 2.0 does not have ("Type with name REGCLASS does not exist!"), so
``Table(name, MetaData(), autoload_with=engine)`` — what Superset does for a dataset — fails.
This dialect answers those one table at a time from ``duckdb_constraints()``,
``duckdb_tables()`` and ``duckdb_views()``; everything else is duckdb-engine's.
"""

from __future__ import annotations

from typing import Any

from duckdb_engine import Dialect as DuckDBEngineDialect
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultDialect

CONSTRAINTS_SQL = text(
    "SELECT constraint_name, constraint_column_names, referenced_table, referenced_column_names, expression "
    "FROM duckdb_constraints() WHERE schema_name = :schema AND table_name = :table AND constraint_type = :kind "
    "ORDER BY constraint_index")
COMMENT_SQL = text(
    "SELECT comment FROM duckdb_tables() WHERE schema_name = :schema AND table_name = :table "
    "UNION ALL SELECT comment FROM duckdb_views() WHERE schema_name = :schema AND view_name = :table")


class SaedbDuckDBDialect(DuckDBEngineDialect):
    driver = "saedb"
    supports_statement_cache = False

    if hasattr(DefaultDialect, "get_multi_pk_constraint"):  # SQLAlchemy 2 (Superset 6.1 runs 1.4, which has none)
        # Many tables at once: SQLAlchemy's generic loop over the one-table methods below.
        get_multi_pk_constraint = DefaultDialect.get_multi_pk_constraint
        get_multi_foreign_keys = DefaultDialect.get_multi_foreign_keys
        get_multi_unique_constraints = DefaultDialect.get_multi_unique_constraints
        get_multi_check_constraints = DefaultDialect.get_multi_check_constraints
        get_multi_table_comment = DefaultDialect.get_multi_table_comment

    def _constraints(self, connection: Connection, table_name: str, schema: str | None, kind: str) -> list[Any]:
        return list(connection.execute(CONSTRAINTS_SQL, {"schema": schema or "main", "table": table_name, "kind": kind}))

    def get_pk_constraint(self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any) -> dict:
        rows = self._constraints(connection, table_name, schema, "PRIMARY KEY")
        return {"constrained_columns": list(rows[0][1]) if rows else [], "name": rows[0][0] if rows else None}

    def get_foreign_keys(self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any) -> list[dict]:
        return [{"name": name, "constrained_columns": list(columns), "referred_schema": schema, "referred_table": table,
                 "referred_columns": list(referred), "options": {}}
                for name, columns, table, referred, _ in self._constraints(connection, table_name, schema, "FOREIGN KEY")]

    def get_unique_constraints(self, connection: Connection, table_name: str, schema: str | None = None,
                               **kw: Any) -> list[dict]:
        return [{"name": name, "column_names": list(columns)}
                for name, columns, *_ in self._constraints(connection, table_name, schema, "UNIQUE")]

    def get_check_constraints(self, connection: Connection, table_name: str, schema: str | None = None,
                              **kw: Any) -> list[dict]:
        return [{"name": name, "sqltext": expression}
                for name, _, _, _, expression in self._constraints(connection, table_name, schema, "CHECK")]

    def get_table_comment(self, connection: Connection, table_name: str, schema: str | None = None, **kw: Any) -> dict:
        rows = list(connection.execute(COMMENT_SQL, {"schema": schema or "main", "table": table_name}))
        return {"text": rows[0][0] if rows else None}
