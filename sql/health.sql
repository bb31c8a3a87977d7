-- Queries for the readiness probe.

-- name: applied_migrations()
-- The ids of the schema migrations yoyo has applied.
SELECT migration_id FROM _yoyo_migration;
