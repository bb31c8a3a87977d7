-- The change log: every task write appends one row, in the same transaction, numbered per user
-- by a counter that the write bumps. The counter's row lock serialises one user's writes, so a
-- user's positions are in commit order: a reader that has seen position n has seen every
-- position below it, however transactions elsewhere interleave. The log is the change feed
-- (GET /api/{user_id}/changes), the deletions' tombstones, the list's validator (the latest
-- position) and, later, the webhook outbox. The trash keeps deleted tasks as they were.

CREATE TABLE task_counters (
    user_id        bigint  PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- The position of the user's latest change.
    changes        bigint  NOT NULL DEFAULT 0,
    -- Tasks stored, live or in the trash: what MAX_TASKS_PER_USER caps.
    tasks          integer NOT NULL DEFAULT 0,
    -- Changes at or below this position have been purged (CHANGES_RETENTION_DAYS).
    purged_through bigint  NOT NULL DEFAULT 0,
    -- Until when a client long-polls for this user's changes. A write NOTIFYs only then:
    -- PostgreSQL commits notifying transactions one at a time under a database-wide lock, which
    -- every write would otherwise pay. Setting it takes this row's lock, as every write does,
    -- so a waiter either sees a write that was in flight or is seen by it.
    waiting_until  timestamptz
);

INSERT INTO task_counters (user_id, tasks)
SELECT users.id, count(tasks.id) FROM users LEFT JOIN tasks ON tasks.user_id = users.id GROUP BY users.id;

CREATE TABLE task_changes (
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    task_id    bigint      NOT NULL,
    event      text        NOT NULL CHECK (event IN ('created', 'updated', 'completed', 'deleted', 'restored')),
    -- The task as the change left it (to_jsonb of its row; read back with
    -- jsonb_populate_record(NULL::tasks, task)); null for a deletion.
    task       jsonb,
    changed_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (user_id, seq)
);

-- The retention chore finds old changes by this.
CREATE INDEX task_changes_changed_at_idx ON task_changes (changed_at);

-- Append one change for a task and return its position; every task write calls it once per
-- task it changes, in the same statement. Creating counts against the user's tasks. Clients
-- long-polling for this user's changes are woken at commit.
CREATE FUNCTION record_task_change(user_id bigint, task_id bigint, event text, task jsonb) RETURNS bigint
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

-- The event of a change to a live task: 'completed' when the statement completed it (the only
-- moment completed_at equals the statement's time), else 'updated'.
CREATE FUNCTION task_event(completed_at timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN completed_at = statement_timestamp() THEN 'completed' ELSE 'updated' END;

CREATE TABLE trashed_tasks (
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id         bigint      NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- The task as it was deleted, restored with jsonb_populate_record(NULL::tasks, task): the
    -- trash needs no copy of the tasks table's columns or indexes, and trashed rows stay out of
    -- every index the live listings use.
    task       jsonb       NOT NULL,
    PRIMARY KEY (user_id, id)
);

-- The trash listing (newest first, keyset pages) and the purge chore.
CREATE INDEX trashed_tasks_user_deleted_idx ON trashed_tasks (user_id, deleted_at DESC, id DESC);
CREATE INDEX trashed_tasks_deleted_idx ON trashed_tasks (deleted_at);

CREATE TABLE idempotency_keys (
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key         text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the method, path and body: the same key with another request is refused.
    fingerprint bytea       NOT NULL,
    status      smallint    NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
