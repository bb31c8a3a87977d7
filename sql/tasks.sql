-- Queries on tasks (listing pages come from list_tasks.sql.template). Every one has user_id in
-- its WHERE: a task that is not yours is not found. They return whole rows (tasks.*); the Task
-- schema decides what clients see. Writes bump updated_at strictly, so two versions of a task
-- never share a timestamp, and keep completed_at: set when a task becomes completed, cleared
-- when it is reopened.

-- name: get_task(user_id, task_id)^
-- One of the user's tasks.
SELECT * FROM tasks WHERE user_id = :user_id AND id = :task_id;

-- name: create_task(user_id, title, description, completed, priority, tags, due_date, remind_at, recurrence_every, recurrence_interval)^
-- Add a task for the user.
INSERT INTO tasks (user_id, title, description, completed, completed_at, priority, tags, due_date,
                   remind_at, recurrence_every, recurrence_interval)
VALUES (:user_id, :title, :description, :completed,
        CASE WHEN :completed THEN statement_timestamp() END,
        :priority, :tags, :due_date, :remind_at, :recurrence_every, :recurrence_interval)
RETURNING *;

-- name: update_task(user_id, task_id, title, set_description, description, completed, priority, tags, set_due_date, due_date, set_remind_at, remind_at, set_recurrence, recurrence_every, recurrence_interval)^
-- Change the given fields of one of the user's tasks: a null title, completed, priority or
-- tags keeps the old value; a nullable field changes only when its set_ flag is true.
UPDATE tasks
SET title               = coalesce(:title, title),
    description         = CASE WHEN :set_description THEN :description ELSE description END,
    completed           = coalesce(:completed, completed),
    completed_at        = CASE WHEN NOT coalesce(:completed, completed) THEN NULL
                               WHEN completed THEN completed_at
                               ELSE statement_timestamp() END,
    priority            = coalesce(:priority, priority),
    tags                = coalesce(:tags, tags),
    due_date            = CASE WHEN :set_due_date THEN :due_date ELSE due_date END,
    remind_at           = CASE WHEN :set_remind_at THEN :remind_at ELSE remind_at END,
    recurrence_every    = CASE WHEN :set_recurrence THEN :recurrence_every ELSE recurrence_every END,
    recurrence_interval = CASE WHEN :set_recurrence THEN :recurrence_interval ELSE recurrence_interval END,
    updated_at          = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
WHERE user_id = :user_id AND id = :task_id
RETURNING *;

-- name: complete_task(user_id, task_id, completed)^
-- Set completed on one of the user's tasks, or flip it when completed is null.
UPDATE tasks
SET completed    = coalesce(:completed, NOT completed),
    completed_at = CASE WHEN NOT coalesce(:completed, NOT completed) THEN NULL
                        WHEN completed THEN completed_at
                        ELSE statement_timestamp() END,
    updated_at   = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
WHERE user_id = :user_id AND id = :task_id
RETURNING *;

-- name: repeat_task(user_id, task_id)^
-- Create the next occurrence of a completed repeating task and link it as next_task_id. Its due
-- date (now, if it had none) and reminder move on by the rule, in UTC; month ends clamp, so
-- Jan 31 + 1 month is Feb 28, or Feb 29 in a leap year. A series ends (no row) rather than run
-- past the year 9000, which keeps every date far from the end of what can be stored.
WITH done AS (
    SELECT tasks.*,
           CASE recurrence_every
               WHEN 'day' THEN make_interval(days => recurrence_interval)
               WHEN 'week' THEN make_interval(weeks => recurrence_interval)
               WHEN 'month' THEN make_interval(months => recurrence_interval)
               WHEN 'year' THEN make_interval(years => recurrence_interval)
           END AS step
    FROM tasks
    WHERE user_id = :user_id AND id = :task_id
), next AS (
    INSERT INTO tasks (user_id, title, description, priority, tags, due_date, remind_at,
                       recurrence_every, recurrence_interval)
    SELECT user_id, title, description, priority, tags, next_due, next_remind,
           recurrence_every, recurrence_interval
    FROM done,
         LATERAL (SELECT (coalesce(due_date, statement_timestamp()) AT TIME ZONE 'UTC' + step) AT TIME ZONE 'UTC',
                         (remind_at AT TIME ZONE 'UTC' + step) AT TIME ZONE 'UTC') AS moved (next_due, next_remind)
    WHERE next_due < '9000-01-01T00:00:00Z' AND coalesce(next_remind < '9000-01-01T00:00:00Z', true)
    RETURNING id
)
UPDATE tasks
SET next_task_id = next.id,
    updated_at   = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
FROM next
WHERE tasks.user_id = :user_id AND tasks.id = :task_id
RETURNING tasks.*;

-- name: delete_task(user_id, task_id)$
-- Delete one of the user's tasks; returns its id, or null when there was none.
DELETE FROM tasks
WHERE user_id = :user_id AND id = :task_id
RETURNING id;

-- name: export_tasks(user_id, after_id, page_size)
-- A page of the user's tasks in id order, after after_id: the account export reads them so,
-- holding a connection for one page at a time, never while the client reads.
SELECT * FROM tasks WHERE user_id = :user_id AND id > :after_id ORDER BY id LIMIT :page_size;
