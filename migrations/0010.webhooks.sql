-- Webhooks and reminders. A subscription is fanned out from the change log (task_changes, the
-- outbox that every task write already appends to in its own transaction): a background job
-- turns the user's changes past `fanned_through` into one delivery per subscription, rendered
-- once, so every retry sends the same bytes. Reminders are fired by a scheduler that marks the
-- task (reminded_at) and queues its deliveries in one transaction. Nothing here is written on
-- the request path of a task write but the one column that re-arms a moved reminder.

-- When the task's reminder was fired; null while it is armed. A write that moves remind_at
-- clears it (sql/tasks.sql), so the new time fires again.
ALTER TABLE tasks ADD COLUMN reminded_at timestamptz;

-- The scheduler's work: armed reminders, by time. Small (one entry per armed reminder), and
-- read by range up to now. Not limited to open tasks: a condition on `completed` would make
-- every completion change an indexed column, which rules out PostgreSQL's HOT updates and
-- made completing a task 35% dearer (pgbench, 16 clients). The scheduler disarms a completed
-- task's reminder when its time comes instead, without telling anyone.
CREATE INDEX tasks_due_reminders_idx ON tasks (remind_at)
    WHERE remind_at IS NOT NULL AND reminded_at IS NULL;

CREATE TABLE webhooks (
    user_id         bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    url             text        NOT NULL CHECK (char_length(url) <= 2000),
    events          text[]      NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 5),
    description     text                 CHECK (char_length(description) <= 500),
    -- whsec_<base64 of 32 random bytes>, the Standard Webhooks form; the service signs with it.
    secret          text        NOT NULL,
    enabled         boolean     NOT NULL DEFAULT true,
    -- Why the service disabled it (null when it did not).
    disabled_reason text,
    -- Since when every attempt has failed: WEBHOOK_DISABLE_AFTER seconds of it disable it.
    failing_since   timestamptz,
    -- The user's change position (task_counters.changes) fanned out already: set to the
    -- current one when made or enabled again, so it hears only of what follows.
    fanned_through  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (user_id, id)
);

CREATE TABLE webhook_deliveries (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint      NOT NULL,
    webhook_id   bigint      NOT NULL,
    -- The webhook-id header: the same on every attempt.
    event_id     text        NOT NULL DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', '') UNIQUE,
    type         text        NOT NULL,
    -- The change it reports (task_changes.seq), if any.
    change_seq   bigint,
    -- The JSON body, rendered when the event was queued: what every attempt sends.
    body         bytea       NOT NULL,
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    -- When a pending delivery is due. Claiming it moves this past the attempt's timeout (the
    -- lease): a worker that dies mid-attempt leaves it due again once the lease runs out.
    next_attempt_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    finished_at  timestamptz,
    FOREIGN KEY (user_id, webhook_id) REFERENCES webhooks (user_id, id) ON DELETE CASCADE
);

-- The delivery job's claims: pending deliveries by when they are due.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- The retention chore.
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (finished_at) WHERE state <> 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (user_id, webhook_id);

CREATE TABLE webhook_attempts (
    delivery_id   bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    user_id       bigint      NOT NULL,
    webhook_id    bigint      NOT NULL,
    attempted_at  timestamptz NOT NULL,
    -- The answer's status, or null with `error` saying why there was none.
    status_code   smallint,
    error         text,
    duration_ms   integer     NOT NULL,
    -- When the next attempt is due; null when this one ended the delivery.
    next_retry_at timestamptz,
    PRIMARY KEY (delivery_id, attempt)
);

-- GET /api/{user_id}/webhooks/{id}/deliveries: a webhook's latest attempts.
CREATE INDEX webhook_attempts_webhook_idx ON webhook_attempts (user_id, webhook_id, attempted_at DESC);
