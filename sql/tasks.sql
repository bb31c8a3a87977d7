-- Queries on tasks. Every one has user_id in its WHERE: a task that is not yours is not found.
-- Writes bump updated_at strictly, so two versions of a task never share a timestamp.

-- name: list_tasks(user_id)
-- The user's tasks, newest first (served by tasks_user_created_idx).
SELECT id, user_id, title, description, completed, created_at, updated_at
FROM tasks
WHERE user_id = :user_id
ORDER BY created_at DESC, id DESC;

-- name: get_task(user_id, task_id)^
-- One of the user's tasks.
SELECT id, user_id, title, description, completed, created_at, updated_at
FROM tasks
WHERE user_id = :user_id AND id = :task_id;

-- name: create_task(user_id, title, description, completed)^
-- Add a task for the user.
INSERT INTO tasks (user_id, title, description, completed)
VALUES (:user_id, :title, :description, :completed)
RETURNING id, user_id, title, description, completed, created_at, updated_at;

-- name: update_task(user_id, task_id, title, set_description, description, completed)^
-- Change the given fields of one of the user's tasks; a null title or completed keeps the old
-- value, and description changes only when set_description is true (it may become null).
UPDATE tasks
SET title       = coalesce(:title, title),
    description = CASE WHEN :set_description THEN :description ELSE description END,
    completed   = coalesce(:completed, completed),
    updated_at  = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
WHERE user_id = :user_id AND id = :task_id
RETURNING id, user_id, title, description, completed, created_at, updated_at;

-- name: complete_task(user_id, task_id, completed)^
-- Set completed on one of the user's tasks, or flip it when completed is null.
UPDATE tasks
SET completed  = coalesce(:completed, NOT completed),
    updated_at = greatest(statement_timestamp(), updated_at + interval '1 microsecond')
WHERE user_id = :user_id AND id = :task_id
RETURNING id, user_id, title, description, completed, created_at, updated_at;

-- name: delete_task(user_id, task_id)$
-- Delete one of the user's tasks; returns its id, or null when there was none.
DELETE FROM tasks
WHERE user_id = :user_id AND id = :task_id
RETURNING id;
