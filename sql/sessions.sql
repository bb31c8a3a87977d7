-- Queries on sessions, their refresh tokens, and revocations. A refresh token is stored only as
-- its SHA-256 hash; one that has been rotated out is kept in session_rotations while its
-- session lives, so that presenting it again is recognised. Revoking writes a revocations row
-- and notifies every worker in the same statement; the notification goes out at commit.

-- name: open_session(user_id, refresh_hash, ttl_seconds, user_agent)$
-- Open a session for a login or a registration; returns its id.
INSERT INTO sessions (user_id, refresh_hash, expires_at, user_agent)
VALUES (:user_id, :refresh_hash, statement_timestamp() + make_interval(secs => :ttl_seconds), :user_agent)
RETURNING id::text;

-- name: rotate_refresh_token(user_id, refresh_hash, new_hash, ttl_seconds)$
-- Replace a live session's current refresh token with a new one and count the session's
-- lifetime again from now; the old hash is remembered as rotated. No row when the token is not
-- the current one of a live session. Two refreshes racing with the same token: the second
-- waits for the first's row lock, then finds the hash changed, and gets no row.
WITH rotated AS (
    UPDATE sessions
    SET refresh_hash = :new_hash,
        last_used_at = statement_timestamp(),
        expires_at   = statement_timestamp() + make_interval(secs => :ttl_seconds)
    WHERE user_id = :user_id AND refresh_hash = :refresh_hash
      AND revoked_at IS NULL AND expires_at > statement_timestamp()
    RETURNING id
), remembered AS (
    INSERT INTO session_rotations (user_id, token_hash, session_id)
    SELECT :user_id, :refresh_hash, id FROM rotated
)
SELECT id::text FROM rotated;

-- name: find_rotated(user_id, token_hash)^
-- A refresh token that was rotated out: its session, how long ago, and whether it was the
-- session's latest rotation (the token the current one replaced).
SELECT r.session_id::text,
       extract(epoch FROM statement_timestamp() - r.rotated_at)::float8 AS age_seconds,
       r.rotated_at = (SELECT max(rotated_at) FROM session_rotations l
                       WHERE l.user_id = r.user_id AND l.session_id = r.session_id) AS latest
FROM session_rotations r
JOIN sessions s ON s.user_id = r.user_id AND s.id = r.session_id
WHERE r.user_id = :user_id AND r.token_hash = :token_hash AND s.revoked_at IS NULL;

-- name: find_session_by_refresh(user_id, refresh_hash)$
-- The live session whose current refresh token this is, for logout with a refresh token.
SELECT id::text FROM sessions
WHERE user_id = :user_id AND refresh_hash = :refresh_hash
  AND revoked_at IS NULL AND expires_at > statement_timestamp();

-- name: prune_rotations(user_id, session_id, ttl_seconds)!
-- Forget rotated tokens older than a refresh token can live: they would be refused anyway.
DELETE FROM session_rotations
WHERE user_id = :user_id AND session_id = :session_id::uuid
  AND rotated_at < statement_timestamp() - make_interval(secs => :ttl_seconds);

-- name: list_sessions(user_id)
-- The user's live sessions, most recently used first.
SELECT id::text, created_at, last_used_at, expires_at, user_agent
FROM sessions
WHERE user_id = :user_id AND revoked_at IS NULL AND expires_at > statement_timestamp()
ORDER BY last_used_at DESC, id;

-- name: revoke_sessions(user_id, session_id, keep_session_id, access_ttl_seconds)
-- End the user's live sessions: the one given, or every one (session_id null) but
-- keep_session_id. Their refresh tokens stop working at once; their access tokens are refused
-- by every worker through the revocation rows, kept until the last of them would expire.
-- Returns the revocations made, for this worker to apply at once.
WITH ended AS (
    UPDATE sessions
    SET revoked_at = statement_timestamp(),
        expires_at = least(expires_at, statement_timestamp())
    WHERE user_id = :user_id
      AND (id = :session_id::uuid OR :session_id::uuid IS NULL)
      AND id IS DISTINCT FROM :keep_session_id::uuid
      AND revoked_at IS NULL AND expires_at > statement_timestamp()
    RETURNING id
), recorded AS (
    INSERT INTO revocations (credential, until)
    SELECT 'session:' || id, statement_timestamp() + make_interval(secs => :access_ttl_seconds)
    FROM ended
    ON CONFLICT (credential) DO UPDATE SET until = greatest(revocations.until, excluded.until)
    RETURNING credential, extract(epoch FROM until)::float8 AS until
)
SELECT credential, until, pg_notify('revocations', credential || ' ' || until) AS notified
FROM recorded;

-- name: live_revocations()
-- Every revocation whose tokens could still be valid, for a worker's listener to load.
SELECT credential, extract(epoch FROM until)::float8 AS until
FROM revocations
WHERE until > statement_timestamp();

-- name: purge_sessions()$
-- Background chore: forget sessions that ended (expired or revoked) more than a day ago, with
-- their rotated tokens. The day keeps a just-ended session's reused token recognised as such.
WITH purged AS (
    DELETE FROM sessions WHERE expires_at < statement_timestamp() - interval '1 day' RETURNING 1
)
SELECT count(*)::int FROM purged;

-- name: purge_revocations()$
-- Background chore: forget revocations whose tokens have all expired.
WITH purged AS (
    DELETE FROM revocations WHERE until < statement_timestamp() RETURNING 1
)
SELECT count(*)::int FROM purged;
