-- Queries on tasks (listing pages come from list_tasks.sql.template). Every one has user_id in
-- its WHERE: a task that is not yours is not found. They return whole rows (tasks.*); the Task
-- schema decides what clients see. Writes bump updated_at strictly, so two versions of a task
-- never share a timestamp (it is the task's ETag), and keep completed_at: set when a task
-- becomes completed, cleared when it is reopened. Every write records its change in the same
-- statement (record_task_change, migration 0009), and a conditional one compares if_match (the
-- updated_at values an If-Match header accepts; null for any) in its own WHERE, so that the
-- check and the write are one atomic step.

-- name: get_task(user_id, task_id)^
-- One of the user's tasks.
SELECT * FROM tasks WHERE user_id = :user_id AND id = :task_id;

-- name: create_task(user_id, max_tasks, title, description, completed, priority, tags, due_date, due_local, due_on, remind_at, remind_local, recurrence_every, recurrence_interval)^
-- Add a task for the user, unless they already keep max_tasks (live or in the trash): then no
-- row. The counter's row lock makes concurrent creates of one user count one after another. A
-- due date comes as an instant (due_date), a wall-clock time in the user's zone (due_local) or
-- the date of an all-day task (due_on), at most one of them; a reminder as an instant
-- (remind_at) or a wall-clock time (remind_local).
WITH room AS (
    SELECT coalesce((SELECT tasks FROM task_counters WHERE user_id = :user_id FOR UPDATE), 0) < :max_tasks AS ok
), zone AS (
    -- Read only for a wall-clock time or a date, and FOR SHARE: a zone change waits for this
    -- write to commit (or it for the change), so no all-day task keeps the old zone's instant.
    SELECT time_zone FROM users WHERE id = :user_id FOR SHARE
), created AS (
    INSERT INTO tasks (user_id, title, description, completed, completed_at, priority, tags, due_date, due_on,
                       remind_at, recurrence_every, recurrence_interval)
    SELECT :user_id, :title, :description, :completed,
           CASE WHEN :completed THEN statement_timestamp() END,
           :priority, :tags,
           CASE WHEN :due_local::timestamp IS NOT NULL THEN :due_local AT TIME ZONE (SELECT time_zone FROM zone)
                WHEN :due_on::date IS NOT NULL THEN all_day_due(:due_on, (SELECT time_zone FROM zone))
                ELSE :due_date END,
           :due_on,
           CASE WHEN :remind_local::timestamp IS NOT NULL THEN :remind_local AT TIME ZONE (SELECT time_zone FROM zone)
                ELSE :remind_at END,
           :recurrence_every, :recurrence_interval
    FROM room
    WHERE room.ok
    RETURNING *
)
SELECT created.*, record_task_change(created.user_id, created.id, 'created', to_jsonb(created)) AS change
FROM created;

-- name: update_task(user_id, task_id, if_match, title, set_description, description, completed, priority, tags, set_due_date, due_date, due_local, due_on, set_remind_at, remind_at, remind_local, set_recurrence, recurrence_every, recurrence_interval)^
-- Change the given fields of one of the user's tasks: a null title, completed, priority or
-- tags keeps the old value; a nullable field changes only when its set_ flag is true. Due dates
-- and reminders come as in create_task.
WITH zone AS (
    SELECT time_zone FROM users WHERE id = :user_id FOR SHARE  -- as in create_task
), updated AS (
UPDATE tasks
SET title               = coalesce(:title, title),
    description         = CASE WHEN :set_description THEN :description ELSE description END,
    completed           = coalesce(:completed, completed),
    completed_at        = CASE WHEN NOT coalesce(:completed, completed) THEN NULL
                               WHEN completed THEN completed_at
                               ELSE statement_timestamp() END,
    priority            = coalesce(:priority, priority),
    tags                = coalesce(:tags, tags),
    due_date            = CASE WHEN NOT :set_due_date THEN due_date
                               WHEN :due_local::timestamp IS NOT NULL
                                   THEN :due_local AT TIME ZONE (SELECT time_zone FROM zone)
                               WHEN :due_on::date IS NOT NULL THEN all_day_due(:due_on, (SELECT time_zone FROM zone))
                               ELSE :due_date END,
    due_on              = CASE WHEN :set_due_date THEN :due_on ELSE due_on END,
    remind_at           = CASE WHEN NOT :set_remind_at THEN remind_at
                               WHEN :remind_local::timestamp IS NOT NULL
                                   THEN :remind_local AT TIME ZONE (SELECT time_zone FROM zone)
                               ELSE :remind_at END,
    -- A reminder moved to another time is armed again (the scheduler, sql/webhooks.sql).
    reminded_at         = CASE WHEN :set_remind_at AND remind_at IS DISTINCT FROM
                                        coalesce(:remind_local AT TIME ZONE (SELECT time_zone FROM zone), :remind_at)
                               THEN NULL ELSE reminded_at END,
    recurrence_every    = CASE WHEN :set_recurrence THEN :recurrence_every ELSE recurrence_every END,
    recurrence_interval = CASE WHEN :set_recurrence THEN :recurrence_interval ELSE recurrence_interval END,
    updated_at          = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
WHERE user_id = :user_id AND id = :task_id
  AND (:if_match::timestamptz[] IS NULL OR updated_at = ANY (:if_match))
RETURNING *
)
SELECT updated.*,
       record_task_change(updated.user_id, updated.id, task_event(updated.completed_at), to_jsonb(updated)) AS change
FROM updated;

-- name: complete_task(user_id, task_id, if_match, completed)^
-- Set completed on one of the user's tasks, or flip it when completed is null.
WITH updated AS (
    UPDATE tasks
    SET completed    = coalesce(:completed, NOT completed),
        completed_at = CASE WHEN NOT coalesce(:completed, NOT completed) THEN NULL
                            WHEN completed THEN completed_at
                            ELSE statement_timestamp() END,
        updated_at   = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
    WHERE user_id = :user_id AND id = :task_id
      AND (:if_match::timestamptz[] IS NULL OR updated_at = ANY (:if_match))
    RETURNING *
)
SELECT updated.*,
       record_task_change(updated.user_id, updated.id, task_event(updated.completed_at), to_jsonb(updated)) AS change
FROM updated;

-- name: repeat_task(user_id, task_id, change, max_tasks)^
-- Create the next occurrence of a completed repeating task and link it as next_task_id; the
-- change that completed it (its position in change) is rewritten to show the link, so one
-- completion stays one change, and the occurrence is recorded as created. When the user keeps
-- max_tasks already, nothing is created and the row says quota_full. Its due date (now, if it
-- had none) and reminder move on by the rule as wall-clock times in the user's zone, so a task
-- due at 09:00 there stays due at 09:00 across DST changes (converted back as any wall-clock
-- time is: one the change skips moves forward by the gap, one it repeats is the later); an
-- all-day task moves by its date. Month ends clamp, so Jan 31 + 1 month is Feb 28, or Feb 29
-- in a leap year. A series ends (no row) rather than run past the year 9000, which keeps every
-- date far from the end of what can be stored.
WITH room AS (
    SELECT coalesce((SELECT tasks FROM task_counters WHERE user_id = :user_id FOR UPDATE) >= :max_tasks, false) AS quota_full
), done AS (
    SELECT tasks.*, zone.time_zone,
           CASE recurrence_every
               WHEN 'day' THEN make_interval(days => recurrence_interval)
               WHEN 'week' THEN make_interval(weeks => recurrence_interval)
               WHEN 'month' THEN make_interval(months => recurrence_interval)
               WHEN 'year' THEN make_interval(years => recurrence_interval)
           END AS step
    FROM tasks,
         -- FOR SHARE as in create_task: the next all-day task gets the zone that is current.
         LATERAL (SELECT time_zone FROM users WHERE id = :user_id FOR SHARE) AS zone
    WHERE tasks.user_id = :user_id AND tasks.id = :task_id AND NOT (SELECT quota_full FROM room)
), next AS (
    INSERT INTO tasks (user_id, title, description, priority, tags, due_date, due_on, remind_at,
                       recurrence_every, recurrence_interval)
    SELECT user_id, title, description, priority, tags, next_due, next_on, next_remind,
           recurrence_every, recurrence_interval
    FROM done,
         LATERAL (SELECT (due_on + step)::date) AS day (next_on),
         LATERAL (SELECT coalesce(all_day_due(next_on, time_zone),
                                  (coalesce(due_date, statement_timestamp()) AT TIME ZONE time_zone + step)
                                      AT TIME ZONE time_zone),
                         (remind_at AT TIME ZONE time_zone + step) AT TIME ZONE time_zone) AS moved (next_due, next_remind)
    WHERE next_due < '9000-01-01T00:00:00Z' AND coalesce(next_remind < '9000-01-01T00:00:00Z', true)
    RETURNING *
), linked AS (
    UPDATE tasks
    SET next_task_id = next.id,
        updated_at   = greatest(statement_timestamp(), tasks.updated_at + interval '1 microsecond')
    FROM next
    WHERE tasks.user_id = :user_id AND tasks.id = :task_id
    RETURNING tasks.*
), recorded AS (
    UPDATE task_changes SET task = to_jsonb(linked)
    FROM linked
    WHERE task_changes.user_id = :user_id AND task_changes.seq = :change
)
SELECT linked.*, false AS quota_full, record_task_change(next.user_id, next.id, 'created', to_jsonb(next)) AS change
FROM linked, next
UNION ALL
SELECT (NULL::tasks).*, true, NULL FROM room WHERE quota_full;

-- name: set_all_day_due_dates(user_id)!
-- After a change of the user's zone (update_user, in the same transaction): every all-day task
-- keeps its date, and so is due at the end of that day in the new zone. What clients see of a
-- task does not change, so neither does updated_at; but the order and the due filters of the
-- user's lists may, so each is recorded as a change, which moves the lists' ETag on.
WITH moved AS (
    UPDATE tasks
    SET due_date = all_day_due(due_on, (SELECT time_zone FROM users WHERE id = :user_id))
    WHERE user_id = :user_id AND due_on IS NOT NULL
    RETURNING *
)
SELECT count(record_task_change(moved.user_id, moved.id, 'updated', to_jsonb(moved))) FROM moved;

-- name: delete_task(user_id, task_id, if_match)$
-- Move one of the user's tasks to the trash (sql/trash.sql), as it was; returns its id, or null
-- when there was none (or If-Match did not match).
WITH gone AS (
    DELETE FROM tasks
    WHERE user_id = :user_id AND id = :task_id
      AND (:if_match::timestamptz[] IS NULL OR updated_at = ANY (:if_match))
    RETURNING *
), trashed AS (
    INSERT INTO trashed_tasks (user_id, id, task)
    SELECT user_id, id, to_jsonb(gone) FROM gone
    RETURNING user_id, id
)
SELECT id FROM trashed WHERE record_task_change(user_id, id, 'deleted', NULL) IS NOT NULL;

-- name: export_tasks(user_id, after_id, page_size)
-- A page of the user's tasks, live and trashed (with deleted_at), in id order, after after_id:
-- the account export reads them so, holding a connection for one page at a time, never while
-- the client reads. Both sides are read in id order from their primary keys and merged.
(SELECT tasks.*, NULL::timestamptz AS deleted_at
 FROM tasks WHERE user_id = :user_id AND id > :after_id ORDER BY id LIMIT :page_size)
UNION ALL
(SELECT t.*, trashed_tasks.deleted_at
 FROM trashed_tasks, jsonb_populate_record(NULL::tasks, trashed_tasks.task) AS t
 WHERE trashed_tasks.user_id = :user_id AND trashed_tasks.id > :after_id
 ORDER BY trashed_tasks.id LIMIT :page_size)
ORDER BY id
LIMIT :page_size;
