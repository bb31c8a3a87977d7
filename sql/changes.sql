-- Queries on the change log (task_changes, task_counters) for the change feed. A change's task is
-- stored as JSON and read back as a row of tasks, so it renders like a live one.

-- name: changes_after(user_id, after, limit)
-- The user's changes after a position, oldest first, each with the task as it left it.
SELECT c.seq, c.task_id, c.event, c.changed_at, t.*
FROM task_changes c
LEFT JOIN LATERAL jsonb_populate_record(NULL::tasks, c.task) AS t ON true
WHERE c.user_id = :user_id AND c.seq > :after
ORDER BY c.seq
LIMIT :limit;

-- name: snapshot_page(user_id, after_id, limit)
-- A page of the user's live tasks by id, for a client starting from nothing; with the position
-- of the latest change, read in the same statement (so the same snapshot), from which the
-- client goes on. Always one row at least: with no task left, one whose task columns are null.
SELECT counter.head, page.*
FROM (SELECT coalesce((SELECT changes FROM task_counters WHERE user_id = :user_id), 0) AS head) AS counter
LEFT JOIN LATERAL (
    SELECT * FROM tasks WHERE user_id = :user_id AND id > :after_id ORDER BY id LIMIT :limit
) AS page ON true;

-- name: change_head(user_id)^
-- The position of the user's latest change, and below which changes have been purged.
SELECT coalesce(max(changes), 0) AS head, coalesce(max(purged_through), 0) AS purged_through
FROM task_counters
WHERE user_id = :user_id;

-- name: wait_for_changes(user_id, seconds)^
-- Mark the user as long-polled for the next seconds, so that writes NOTIFY; returns the
-- latest position. It takes the counter's row lock as writes do: a write still in flight has
-- committed by the time this returns (and is counted), and a later one sees the mark.
INSERT INTO task_counters AS counters (user_id, waiting_until)
VALUES (:user_id, statement_timestamp() + make_interval(secs => :seconds))
ON CONFLICT ON CONSTRAINT task_counters_pkey DO UPDATE
SET waiting_until = greatest(counters.waiting_until, excluded.waiting_until)
RETURNING changes AS head, purged_through;

-- name: purge_changes(retention_days)$
-- Background chore: forget changes older than the retention period, at most 10,000 a round,
-- and note per user up to where, so that an older cursor is answered 410 Gone.
WITH purged AS (
    DELETE FROM task_changes
    WHERE (user_id, seq) IN (
        SELECT user_id, seq FROM task_changes
        WHERE changed_at < statement_timestamp() - make_interval(days => :retention_days)
        LIMIT 10000
    )
    RETURNING user_id, seq
), noted AS (
    UPDATE task_counters
    SET purged_through = greatest(task_counters.purged_through, upto.seq)
    FROM (SELECT user_id, max(seq) AS seq FROM purged GROUP BY user_id) AS upto
    WHERE task_counters.user_id = upto.user_id
)
SELECT count(*)::int FROM purged;
