DROP TABLE idempotency_keys;
DROP TABLE trashed_tasks;
DROP FUNCTION task_event(timestamptz);
DROP FUNCTION record_task_change(bigint, bigint, text, jsonb);
DROP TABLE task_changes;
DROP TABLE task_counters;
