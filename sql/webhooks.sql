-- Queries on webhooks: the subscriptions (user-owned, with user_id in every WHERE), and the
-- background jobs of service/webhooks.py: the fan-out of the change log into deliveries, the
-- reminder scheduler, and the delivery job's claims and outcomes. A claim takes its rows with
-- FOR UPDATE SKIP LOCKED, so any number of workers of any number of instances share the work
-- and no row is taken twice.

-- name: lock_webhook_owner(user_id)$
-- Take the user's counter row lock (making the row if the user has none) and return their
-- latest change position: a new or re-enabled subscription starts there, and the lock makes
-- the 10-per-user check that follows atomic.
INSERT INTO task_counters AS counters (user_id) VALUES (:user_id)
ON CONFLICT ON CONSTRAINT task_counters_pkey DO UPDATE SET user_id = counters.user_id
RETURNING changes;

-- name: create_webhook(user_id, url, events, description, secret, fanned_through, max_webhooks)^
-- Add a subscription, unless the user has max_webhooks already (no row then); call it after
-- lock_webhook_owner, in the same transaction.
INSERT INTO webhooks (user_id, url, events, description, secret, fanned_through)
SELECT :user_id::bigint, :url::text, :events::text[], :description::text, :secret::text, :fanned_through::bigint
WHERE (SELECT count(*) FROM webhooks WHERE user_id = :user_id) < :max_webhooks
RETURNING *;

-- name: list_webhooks(user_id)
-- The user's subscriptions, oldest first.
SELECT * FROM webhooks WHERE user_id = :user_id ORDER BY id;

-- name: get_webhook(user_id, webhook_id)^
-- One of the user's subscriptions.
SELECT * FROM webhooks WHERE user_id = :user_id AND id = :webhook_id;

-- name: update_webhook(user_id, webhook_id, url, events, set_description, description, enabled, fanned_through)^
-- Change the given fields of a subscription (a null url, events or enabled keeps the old one).
-- Enabled again, it starts afresh from fanned_through (lock_webhook_owner's position), with its
-- failures forgotten; disabled, its pending deliveries fail.
WITH updated AS (
    UPDATE webhooks
    SET url             = coalesce(:url, url),
        events          = coalesce(:events, events),
        description     = CASE WHEN :set_description THEN :description ELSE description END,
        enabled         = coalesce(:enabled, enabled),
        fanned_through  = CASE WHEN :enabled AND NOT enabled THEN :fanned_through ELSE fanned_through END,
        failing_since   = CASE WHEN :enabled AND NOT enabled THEN NULL ELSE failing_since END,
        disabled_reason = CASE WHEN :enabled AND NOT enabled THEN NULL ELSE disabled_reason END
    WHERE user_id = :user_id AND id = :webhook_id
    RETURNING *
), dropped AS (
    UPDATE webhook_deliveries
    SET state = 'failed', finished_at = statement_timestamp()
    FROM updated
    WHERE NOT updated.enabled AND webhook_deliveries.state = 'pending'
      AND webhook_deliveries.user_id = updated.user_id AND webhook_deliveries.webhook_id = updated.id
)
SELECT * FROM updated;

-- name: delete_webhook(user_id, webhook_id)$
-- Delete a subscription with its deliveries; returns its id, or null when there was none.
DELETE FROM webhooks WHERE user_id = :user_id AND id = :webhook_id RETURNING id;

-- name: queue_test_event(user_id, webhook_id, body)$
-- Queue a webhook.test event for an enabled subscription; returns its event id (null when the
-- subscription is not there or is disabled).
INSERT INTO webhook_deliveries (user_id, webhook_id, type, body)
SELECT user_id, id, 'webhook.test', :body FROM webhooks
WHERE user_id = :user_id AND id = :webhook_id AND enabled
RETURNING event_id;

-- name: list_webhook_attempts(user_id, webhook_id, limit)
-- A subscription's latest delivery attempts, newest first.
SELECT d.event_id, d.type, d.state, a.attempt, a.attempted_at, a.status_code, a.error, a.duration_ms,
       a.next_retry_at
FROM webhook_attempts a
JOIN webhook_deliveries d ON d.id = a.delivery_id
WHERE a.user_id = :user_id AND a.webhook_id = :webhook_id
ORDER BY a.attempted_at DESC, a.delivery_id DESC, a.attempt DESC
LIMIT :limit;

-- name: claim_fan_out(limit)
-- Fan-out: claim enabled subscriptions whose user has changes past what they were fanned out
-- through, with the position to fan out up to. Nothing new costs one pass over the enabled
-- subscriptions and their users' counter rows, and reads no change.
SELECT w.user_id, w.id, w.events, w.fanned_through, c.changes
FROM webhooks w
JOIN task_counters c ON c.user_id = w.user_id
WHERE w.enabled AND c.changes > w.fanned_through
LIMIT :limit
FOR UPDATE OF w SKIP LOCKED;

-- name: changes_to_fan_out(user_ids, after, upto)
-- The changes of each user in (after, upto], oldest first, each with the task as it left it.
SELECT c.user_id AS change_user_id, c.seq, c.event, c.changed_at, c.task_id, t.*
FROM unnest(:user_ids::bigint[], :after::bigint[], :upto::bigint[]) AS r (user_id, after, upto)
JOIN task_changes c ON c.user_id = r.user_id AND c.seq > r.after AND c.seq <= r.upto
LEFT JOIN LATERAL jsonb_populate_record(NULL::tasks, c.task) AS t ON true
ORDER BY c.user_id, c.seq;

-- name: queue_deliveries(user_ids, webhook_ids, types, change_seqs, bodies)!
-- Queue deliveries, each due at once.
INSERT INTO webhook_deliveries (user_id, webhook_id, type, change_seq, body)
SELECT * FROM unnest(:user_ids::bigint[], :webhook_ids::bigint[], :types::text[], :change_seqs::bigint[],
                     :bodies::bytea[]);

-- name: advance_fan_out(user_ids, webhook_ids, upto)!
-- Note how far subscriptions are fanned out, in the fan-out's transaction.
UPDATE webhooks w SET fanned_through = r.upto
FROM unnest(:user_ids::bigint[], :webhook_ids::bigint[], :upto::bigint[]) AS r (user_id, id, upto)
WHERE w.user_id = r.user_id AND w.id = r.id;

-- name: fire_reminders(limit)
-- Reminder scheduler: mark due reminders fired, claiming the tasks with SKIP LOCKED (so each
-- fires once, whatever runs this at the same time), and return each task with the
-- subscriptions to tell: none for a completed task, whose reminder is only disarmed. It is not
-- a change of the task: updated_at stays, and no change is recorded. How late each fires, in
-- lag_seconds.
WITH due AS (
    SELECT user_id, id FROM tasks
    WHERE remind_at <= statement_timestamp() AND remind_at IS NOT NULL AND reminded_at IS NULL
    ORDER BY remind_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), fired AS (
    UPDATE tasks SET reminded_at = statement_timestamp()
    FROM due
    WHERE tasks.user_id = due.user_id AND tasks.id = due.id
    RETURNING tasks.*
)
SELECT fired.*,
       extract(epoch FROM statement_timestamp() - fired.remind_at)::float8 AS lag_seconds,
       ARRAY(SELECT w.id FROM webhooks w
             WHERE w.user_id = fired.user_id AND w.enabled AND 'task.reminder' = ANY (w.events)
               AND NOT fired.completed
             ORDER BY w.id) AS webhook_ids
FROM fired;

-- name: claim_deliveries(limit, lease_seconds)
-- Delivery job: claim due deliveries and lease them for one attempt: each is counted as
-- attempted and due again only after lease_seconds, the attempt's timeout and a margin, when a
-- worker that died mid-attempt has left it to be tried again. Commit before sending.
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= statement_timestamp()
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = statement_timestamp() + make_interval(secs => :lease_seconds)
FROM due, webhooks w
WHERE d.id = due.id AND w.user_id = d.user_id AND w.id = d.webhook_id
RETURNING d.id, d.user_id, d.webhook_id, d.event_id, d.type, d.body, d.attempts, w.url, w.secret;

-- name: record_attempt(delivery_id, attempt, attempted_at, status_code, error, duration_ms, delivered, retry_seconds, disable_after)^
-- The outcome of an attempt, if the delivery is still this attempt's (its lease not taken over):
-- delivered, due again after retry_seconds, or failed (retry_seconds null). The attempt is
-- logged, and the subscription's health noted on its locked row: failing since its first
-- failure after a success, and disabled, with the reason, once that is disable_after seconds
-- ago; then this delivery and its other pending ones fail. Returns the delivery's state, and
-- whether this disabled the webhook; no row when the delivery was no longer this attempt's.
WITH current AS (
    SELECT user_id, webhook_id FROM webhook_deliveries
    WHERE id = :delivery_id AND attempts = :attempt AND state = 'pending'
), health AS (
    -- FOR UPDATE reads the row's latest version, so concurrent attempts count one another.
    SELECT w.user_id, w.id,
           CASE WHEN :delivered THEN NULL ELSE coalesce(w.failing_since, :attempted_at) END AS failing_since,
           w.enabled AND NOT :delivered
               AND coalesce(w.failing_since, :attempted_at)
                   <= statement_timestamp() - make_interval(secs => :disable_after) AS disabling
    FROM webhooks w, current
    WHERE w.user_id = current.user_id AND w.id = current.webhook_id
    FOR UPDATE OF w
), delivery AS (
    UPDATE webhook_deliveries
    SET state = CASE WHEN :delivered THEN 'delivered'
                     WHEN :retry_seconds::float8 IS NULL OR (SELECT disabling FROM health) THEN 'failed'
                     ELSE 'pending' END,
        next_attempt_at = CASE WHEN :delivered OR :retry_seconds::float8 IS NULL THEN next_attempt_at
                               ELSE statement_timestamp() + make_interval(secs => :retry_seconds) END,
        finished_at = CASE WHEN :delivered OR :retry_seconds::float8 IS NULL OR (SELECT disabling FROM health)
                           THEN statement_timestamp() END
    WHERE id = :delivery_id AND attempts = :attempt AND state = 'pending'
    RETURNING id, user_id, webhook_id, state, next_attempt_at
), logged AS (
    INSERT INTO webhook_attempts (delivery_id, attempt, user_id, webhook_id, attempted_at, status_code, error,
                                  duration_ms, next_retry_at)
    SELECT id, :attempt, user_id, webhook_id, :attempted_at, :status_code, :error, :duration_ms,
           CASE WHEN state = 'pending' THEN next_attempt_at END
    FROM delivery
), noted AS (
    UPDATE webhooks w
    SET failing_since = health.failing_since,
        enabled = w.enabled AND NOT health.disabling,
        disabled_reason = CASE WHEN health.disabling
                               THEN format('Disabled at %s: every delivery has failed since %s (the last: %s).',
                                           to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                           to_char(health.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                           coalesce('HTTP ' || :status_code::int, :error::text))
                               ELSE w.disabled_reason END
    FROM health
    WHERE w.user_id = health.user_id AND w.id = health.id
), dropped AS (
    UPDATE webhook_deliveries d
    SET state = 'failed', finished_at = statement_timestamp()
    FROM health
    WHERE health.disabling AND d.user_id = health.user_id AND d.webhook_id = health.id AND d.state = 'pending'
      AND d.id <> :delivery_id
)
SELECT delivery.state, (SELECT disabling FROM health) AS disabled
FROM delivery;

-- name: webhook_queue()^
-- For the metrics: pending deliveries, and how long the oldest has waited.
SELECT count(*)::int AS pending,
       coalesce(extract(epoch FROM statement_timestamp() - min(created_at)), 0)::float8 AS oldest_seconds
FROM webhook_deliveries
WHERE state = 'pending';

-- name: purge_webhook_deliveries(retention_days)$
-- Background chore: forget deliveries (and their attempts) delivered or failed longer ago than
-- the retention period, at most 10,000 a round.
WITH purged AS (
    DELETE FROM webhook_deliveries
    WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE state <> 'pending' AND finished_at < statement_timestamp() - make_interval(days => :retention_days)
        LIMIT 10000
    )
    RETURNING 1
)
SELECT count(*)::int FROM purged;
