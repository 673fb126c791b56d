-- A read-only role for `saedb serve` and BI dashboards. Run once per database as an
-- administrator, then make each login with `saedb reader LOGIN --timeout 30s` (or
-- CALL saedb_create_reader('dashboard', '30s') and psql's \password dashboard).
-- Passwords never appear in SQL text: Postgres writes a failing statement to its log, so a
-- password passed to a procedure ends up there in plain text. saedb hashes it on the client
-- (SCRAM-SHA-256, as psql's \password does) and sends only the verifier.
-- Postgres applies ALTER ROLE ... SET only to the role that logs in, never through group
-- membership, so the procedure sets read-only transactions and the statement timeout on
-- each login itself. A login can still SET statement_timeout = 0 (no Postgres privilege
-- stops a user-settable parameter): saedb_cancel_overdue_readers() cancels any reader query
-- older than its login's limit; schedule it (pg_cron, below, where installed; or cron with
-- psql -c) to enforce the limit. Temporary tables: TEMPORARY is revoked from PUBLIC (readers
-- cannot create them); the database owner keeps it, other writer roles need an explicit
-- GRANT. Large objects: the functions that create or write them are revoked from PUBLIC
-- (readers could write large objects after switching read-only off) and granted back to the
-- database owner.
DO $$ BEGIN
    CREATE ROLE saedb_reader NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

GRANT USAGE ON SCHEMA public TO saedb_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO saedb_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO saedb_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO saedb_reader;
ALTER ROLE saedb_reader SET default_transaction_read_only = on;
ALTER ROLE saedb_reader SET statement_timeout = '10s';

DO $$
DECLARE
    owner text := (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database());
    writers text := 'lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea), lo_import(text), lo_import(text, oid), '
                    'lowrite(integer, bytea), lo_put(oid, bigint, bytea), lo_truncate(integer, integer), '
                    'lo_truncate64(integer, bigint), lo_unlink(oid)';
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE 'REVOKE EXECUTE ON FUNCTION ' || writers || ' FROM PUBLIC';
    EXECUTE 'GRANT EXECUTE ON FUNCTION ' || writers || format(' TO %I', owner);
END $$;

CREATE TABLE IF NOT EXISTS saedb_reader_limits (login name PRIMARY KEY, statement_timeout interval NOT NULL);
GRANT SELECT ON saedb_reader_limits TO saedb_reader;

DROP PROCEDURE IF EXISTS saedb_create_reader(text, text, text);  -- took a plain-text password
CREATE OR REPLACE PROCEDURE saedb_create_reader(login text, timeout text DEFAULT '10s')
LANGUAGE plpgsql AS $$
DECLARE
    limit_interval interval := timeout::interval;
BEGIN
    IF limit_interval <= interval '0' THEN
        RAISE EXCEPTION 'the statement timeout of a reader must be positive, not %', timeout;
    END IF;
    -- a login this procedure made before is updated (its timeout; saedb reader sets its password
    -- again): any other role of that name is refused, never turned into a reader
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = login) THEN
        EXECUTE format('CREATE ROLE %I LOGIN IN ROLE saedb_reader', login);
    ELSIF NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
                      WHERE r.rolname = login AND g.rolname = 'saedb_reader' AND NOT r.rolsuper) THEN
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object', MESSAGE = format('role %I exists and is not a saedb reader', login);
    END IF;
    EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', login);
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', login, (extract(epoch FROM limit_interval) * 1000)::bigint);
    INSERT INTO saedb_reader_limits VALUES (login, limit_interval)
    ON CONFLICT ON CONSTRAINT saedb_reader_limits_pkey DO UPDATE SET statement_timeout = excluded.statement_timeout;
END $$;

-- Cancel every query of a saedb_reader member that has run longer than its login's limit
-- (10s for members made without the procedure); returns the cancelled backends' pids.
CREATE OR REPLACE FUNCTION saedb_cancel_overdue_readers() RETURNS int[]
LANGUAGE sql AS $$
    SELECT array_agg(a.pid ORDER BY a.pid) FILTER (WHERE pg_cancel_backend(a.pid))
    FROM pg_stat_activity a
    JOIN pg_roles r ON r.rolname = a.usename
    LEFT JOIN saedb_reader_limits l ON l.login = r.rolname
    WHERE a.state = 'active' AND a.pid <> pg_backend_pid()
      AND pg_has_role(r.oid, 'saedb_reader', 'MEMBER') AND NOT r.rolsuper
      AND now() - a.query_start > coalesce(l.statement_timeout, interval '10s')
$$;
REVOKE EXECUTE ON FUNCTION saedb_cancel_overdue_readers() FROM PUBLIC, saedb_reader;

DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM cron.schedule_in_database('saedb-reader-timeouts-' || current_database(), '5 seconds',
                                          'SELECT saedb_cancel_overdue_readers()', current_database());
    END IF;
END $$;
