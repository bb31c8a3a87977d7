DROP INDEX tasks_search_idx;
DROP INDEX tasks_tag_keys_idx;
DROP INDEX tasks_user_due_desc_idx;
DROP INDEX tasks_user_due_asc_idx;
DROP INDEX tasks_user_priority_idx;
DROP FUNCTION task_tag_keys(text[]);
ALTER TABLE tasks
    DROP CONSTRAINT tasks_recurrence_whole,
    DROP COLUMN next_task_id,
    DROP COLUMN completed_at,
    DROP COLUMN recurrence_interval,
    DROP COLUMN recurrence_every,
    DROP COLUMN remind_at,
    DROP COLUMN due_date,
    DROP COLUMN tags,
    DROP COLUMN priority;
-- pg_trgm stays: other schemas in the database may use it, and it is harmless.
