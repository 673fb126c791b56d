-- A read-only role for `saedb serve` and BI dashboards. Run once as an administrator,
-- then give people logins in it:
--   CREATE ROLE dashboard LOGIN PASSWORD '...' IN ROLE saedb_reader;
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
