-- Queries on stored answers of requests sent with an Idempotency-Key, per user and key.

-- name: lock_idempotency_key(user_id, key)$
-- Try to take the key for this transaction: false while another request with it is running.
SELECT pg_try_advisory_xact_lock(hashtextextended((:user_id::bigint)::text || ':' || :key, 0));

-- name: get_idempotent_answer(user_id, key)^
-- The answer stored for the key, unless it has expired.
SELECT fingerprint, status, headers, body
FROM idempotency_keys
WHERE user_id = :user_id AND key = :key AND expires_at > statement_timestamp();

-- name: store_idempotent_answer(user_id, key, fingerprint, status, headers, body, ttl_seconds)!
-- Store a request's answer in the transaction of its write; an expired one is replaced.
INSERT INTO idempotency_keys (user_id, key, fingerprint, status, headers, body, expires_at)
VALUES (:user_id, :key, :fingerprint, :status, :headers, :body,
        statement_timestamp() + make_interval(secs => :ttl_seconds))
ON CONFLICT (user_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, status = excluded.status, headers = excluded.headers,
    body = excluded.body, created_at = excluded.created_at, expires_at = excluded.expires_at;

-- name: purge_idempotency_keys()$
-- Background chore: forget stored answers that have expired, at most 10,000 a round.
WITH purged AS (
    DELETE FROM idempotency_keys
    WHERE (user_id, key) IN (
        SELECT user_id, key FROM idempotency_keys WHERE expires_at < statement_timestamp() LIMIT 10000
    )
    RETURNING 1
)
SELECT count(*)::int FROM purged;
