-- A read-only role for `saedb serve` and BI dashboards. Run once per database as an
-- administrator, then make each login with the procedure below:
--   CALL saedb_create_reader('dashboard', 'its password');           -- statement timeout 10s
--   CALL saedb_create_reader('superset', 'its password', '30s');
-- Postgres applies ALTER ROLE ... SET only to the role that logs in, never through group
-- membership, so the procedure sets read-only transactions and the statement timeout on
-- each login itself. Temporary tables: TEMPORARY is revoked from PUBLIC (readers cannot
-- create them); the database owner keeps it, other writer roles need an explicit GRANT.
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

DO $$ BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END $$;

CREATE OR REPLACE PROCEDURE saedb_create_reader(login text, password text DEFAULT NULL, timeout text DEFAULT '10s')
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE ROLE %I LOGIN IN ROLE saedb_reader', login);
    IF password IS NOT NULL THEN
        EXECUTE format('ALTER ROLE %I PASSWORD %L', login, password);
    END IF;
    EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', login);
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', login, timeout);
END $$;
