-- record_task_change as migration 0009 made it: a LANGUAGE sql function.
CREATE OR REPLACE FUNCTION record_task_change(user_id bigint, task_id bigint, event text, task jsonb) RETURNS bigint
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH counter AS (
        INSERT INTO task_counters AS counters (user_id, changes, tasks)
        VALUES (record_task_change.user_id, 1, CASE WHEN record_task_change.event = 'created' THEN 1 ELSE 0 END)
        ON CONFLICT ON CONSTRAINT task_counters_pkey DO UPDATE
        SET changes = counters.changes + 1, tasks = counters.tasks + excluded.tasks
        RETURNING counters.changes, counters.waiting_until > statement_timestamp() AS someone_waits
    ), logged AS (
        INSERT INTO task_changes (user_id, seq, task_id, event, task)
        SELECT record_task_change.user_id, counter.changes, record_task_change.task_id,
               record_task_change.event, record_task_change.task
        FROM counter
    ), woken AS (
        -- WHERE comes before the select list: pg_notify runs only when someone waits.
        SELECT pg_notify('task_changes', record_task_change.user_id::text) FROM counter WHERE someone_waits
    )
    SELECT counter.changes FROM counter LEFT JOIN woken ON true;
END;
