"""SQL functions: DuckDB Python UDFs here; the Postgres versions live in sql/postgres/functions.sql."""
