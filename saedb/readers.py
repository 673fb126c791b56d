"""Read-only Postgres logins for dashboards (``saedb reader``), made without the password
ever appearing in SQL text: it is hashed on the client into a SCRAM-SHA-256 verifier, as
psql's ``\\password`` does, so neither the server log nor pg_stat_activity can show it."""

from __future__ import annotations

import psycopg
from psycopg import sql

from saedb.backends.postgres import PostgresBackend
from saedb.errors import InvalidInputError
from saedb.sqlfiles import read_sql


def create_reader(backend: PostgresBackend, login: str, password: str | None, timeout: str = "10s") -> bool:
    """A login in the saedb_reader role: read-only transactions, ``timeout`` per statement,
    SELECT/EXECUTE only. A reader made before gets the new password and timeout (rotation);
    another role of that name is refused. Returns whether the login is new."""
    conn = backend.conn
    backend.run_script(read_sql("postgres", "reader_role.sql"))  # idempotent; brings an older database's procedure up to date
    new = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (login,)).fetchone()[0]
    try:
        with conn.transaction():
            conn.execute("CALL saedb_create_reader(%s, %s)", (login, timeout))
            if password:
                verifier = conn.pgconn.encrypt_password(password.encode(), login.encode(), b"scram-sha-256")
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(login), sql.Literal(verifier.decode())))
    except psycopg.errors.DuplicateObject:
        raise InvalidInputError(f"a role named {login!r} exists and is not a saedb reader: choose another login name") from None
    except (psycopg.errors.InvalidDatetimeFormat, psycopg.errors.RaiseException) as exc:
        raise InvalidInputError(f"bad timeout {timeout!r}: {str(exc).splitlines()[0]}") from None
    return new
