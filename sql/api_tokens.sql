-- Queries on personal API tokens. A token is `tapi_<user id>_<43 random characters>`; only its
-- SHA-256 hash is stored, and it is looked up by (user_id, hash). Deleting one revokes it on
-- every worker in the same statement, as revoking a session does (sessions.sql).

-- name: create_api_token(user_id, name, scopes, secret_hash, expires_in_days, max_tokens)^
-- Add a token for the user, unless they have max_tokens already (no row then); it expires
-- after expires_in_days, or never when that is null.
INSERT INTO api_tokens (user_id, name, scopes, secret_hash, expires_at)
SELECT :user_id::bigint, :name::text, :scopes::text[], :secret_hash::bytea,
       statement_timestamp() + make_interval(days => :expires_in_days)
WHERE (SELECT count(*) FROM api_tokens WHERE user_id = :user_id) < :max_tokens
RETURNING id, name, scopes, created_at, expires_at, last_used_at;

-- name: list_api_tokens(user_id)
-- The user's tokens, oldest first, without their hashes.
SELECT id, name, scopes, created_at, expires_at, last_used_at
FROM api_tokens
WHERE user_id = :user_id
ORDER BY id;

-- name: find_api_token(user_id, secret_hash)^
-- The token with this hash, for a worker that has not checked it lately.
SELECT id, scopes, extract(epoch FROM expires_at)::float8 AS expires
FROM api_tokens
WHERE user_id = :user_id AND secret_hash = :secret_hash;

-- name: delete_api_token(user_id, token_id, revoked_seconds)
-- Delete one of the user's tokens, and revoke it (api_token:<id>) on every worker at commit, for
-- as long as a worker may remember having checked it. Returns the revocation, for this worker.
WITH deleted AS (
    DELETE FROM api_tokens WHERE user_id = :user_id AND id = :token_id RETURNING id
), recorded AS (
    INSERT INTO revocations (credential, until)
    SELECT 'api_token:' || id, statement_timestamp() + make_interval(secs => :revoked_seconds)
    FROM deleted
    ON CONFLICT (credential) DO UPDATE SET until = greatest(revocations.until, excluded.until)
    RETURNING credential, extract(epoch FROM until)::float8 AS until
)
SELECT credential, until, pg_notify('revocations', credential || ' ' || until) AS notified
FROM recorded;

-- name: touch_api_tokens(user_ids, token_ids, used_at)!
-- Record when tokens were last used (Unix seconds), a worker's batch at a time; a token's row
-- is written at most once a minute, however many workers report it.
UPDATE api_tokens AS t
SET last_used_at = to_timestamp(u.used_at)
FROM unnest(:user_ids::bigint[], :token_ids::bigint[], :used_at::float8[]) AS u (user_id, id, used_at)
WHERE t.user_id = u.user_id AND t.id = u.id
  AND (t.last_used_at IS NULL OR t.last_used_at < to_timestamp(u.used_at) - interval '1 minute');

-- name: purge_api_tokens()$
-- Background chore: forget tokens that expired more than a day ago.
WITH purged AS (
    DELETE FROM api_tokens WHERE expires_at < statement_timestamp() - interval '1 day' RETURNING 1
)
SELECT count(*)::int FROM purged;
