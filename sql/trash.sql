-- Queries on the trash: deleted tasks kept as they were (JSON, read back as rows of tasks) for
-- TRASH_RETENTION_DAYS, to restore or purge. Moving a task in or out of the trash records a
-- change (record_task_change); purging does not, as the client already saw it deleted.

-- name: list_trash(user_id, after_deleted_at, after_id, limit)
-- A page of the user's trash, most recently deleted first; keyset after (deleted_at, id).
SELECT trashed_tasks.deleted_at, t.*
FROM trashed_tasks, jsonb_populate_record(NULL::tasks, trashed_tasks.task) AS t
WHERE trashed_tasks.user_id = :user_id
  AND (trashed_tasks.deleted_at, trashed_tasks.id) < (coalesce(:after_deleted_at::timestamptz, 'infinity'), coalesce(:after_id::bigint, 0))
ORDER BY trashed_tasks.deleted_at DESC, trashed_tasks.id DESC
LIMIT :limit;

-- name: is_trashed(user_id, task_id)$
-- Whether the task is in the user's trash.
SELECT EXISTS (SELECT 1 FROM trashed_tasks WHERE user_id = :user_id AND id = :task_id);

-- name: restore_task(user_id, task_id)^
-- Move a task from the trash back among the live ones, its id kept and updated_at bumped.
WITH taken AS (
    DELETE FROM trashed_tasks WHERE user_id = :user_id AND id = :task_id RETURNING task
), restored AS (
    INSERT INTO tasks OVERRIDING SYSTEM VALUE
    SELECT t.*
    FROM taken,
         jsonb_populate_record(
             NULL::tasks,
             taken.task || jsonb_build_object(
                 'updated_at',
                 greatest(statement_timestamp(), (taken.task ->> 'updated_at')::timestamptz + interval '1 microsecond')
             )
         ) AS t
    RETURNING *
)
SELECT restored.*, record_task_change(restored.user_id, restored.id, 'restored', to_jsonb(restored)) AS change
FROM restored;

-- name: purge_trashed_task(user_id, task_id)$
-- Delete one task from the trash for good; returns its id, or null when there was none.
WITH purged AS (
    DELETE FROM trashed_tasks WHERE user_id = :user_id AND id = :task_id RETURNING id
), counted AS (
    UPDATE task_counters SET tasks = tasks - (SELECT count(*) FROM purged) WHERE user_id = :user_id
)
SELECT id FROM purged;

-- name: empty_trash(user_id)$
-- Delete every task in the user's trash for good; returns how many.
WITH purged AS (
    DELETE FROM trashed_tasks WHERE user_id = :user_id RETURNING id
), counted AS (
    UPDATE task_counters SET tasks = tasks - (SELECT count(*) FROM purged) WHERE user_id = :user_id
)
SELECT count(*)::int FROM purged;

-- name: purge_trash(retention_days)$
-- Background chore: delete tasks trashed longer than the retention period, at most 10,000 a
-- round, claiming rows with SKIP LOCKED so that purgers never wait on one another or on a
-- restore, and no row is purged twice.
WITH doomed AS (
    SELECT user_id, id FROM trashed_tasks
    WHERE deleted_at < statement_timestamp() - make_interval(days => :retention_days)
    LIMIT 10000
    FOR UPDATE SKIP LOCKED
), purged AS (
    DELETE FROM trashed_tasks USING doomed
    WHERE trashed_tasks.user_id = doomed.user_id AND trashed_tasks.id = doomed.id
    RETURNING trashed_tasks.user_id
), counted AS (
    UPDATE task_counters SET tasks = task_counters.tasks - gone.count
    FROM (SELECT user_id, count(*) AS count FROM purged GROUP BY user_id) AS gone
    WHERE task_counters.user_id = gone.user_id
)
SELECT count(*)::int FROM purged;
