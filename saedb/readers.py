"""Read-only Postgres logins for dashboards (``saedb reader``), made without the password
ever appearing in SQL text: it is hashed on the client into a SCRAM-SHA-256 verifier, as
psql's ``\\password`` does, so neither the server log nor pg_stat_activity can show it."""

from __future__ import annotations

import psycopg
from psycopg import sql

from saedb.backends.postgres import PostgresBackend
from saedb.errors import InvalidInputError
from saedb.sqlfiles import read_sql


def create_reader(backend: PostgresBackend, login: str, password: str | None, timeout: str = "10s") -> None:
    """A login in the saedb_reader role: read-only transactions, ``timeout`` per statement,
    SELECT/EXECUTE only. Sets up the role first where the database has none."""
    conn = backend.conn
    if conn.execute("SELECT to_regprocedure('saedb_create_reader(text, text)')").fetchone() == (None,):
        backend.run_script(read_sql("postgres", "reader_role.sql"))
    try:
        with conn.transaction():
            conn.execute("CALL saedb_create_reader(%s, %s)", (login, timeout))
            if password:
                verifier = conn.pgconn.encrypt_password(password.encode(), login.encode(), b"scram-sha-256")
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(login), sql.Literal(verifier.decode())))
    except psycopg.errors.DuplicateObject:
        raise InvalidInputError(f"a role named {login!r} already exists") from None
    except (psycopg.errors.InvalidDatetimeFormat, psycopg.errors.RaiseException) as exc:
        raise InvalidInputError(f"bad timeout {timeout!r}: {str(exc).splitlines()[0]}") from None
