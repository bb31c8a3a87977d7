-- Queries on user accounts. Two emails are the same account when email_key() says so (the
-- unique index users_email_key and every lookup use it; see migration 0005). Emails identify
-- password accounts only; a provider's user is known by its issuer and subject (migration 0007).

-- name: create_user(email, name, password_hash, time_zone)^
-- Register a user; returns no row when the email is already taken in any case.
INSERT INTO users (email, name, password_hash, time_zone)
VALUES (:email, :name, :password_hash, :time_zone)
ON CONFLICT ((email_key(email))) WHERE auth_issuer IS NULL DO NOTHING
RETURNING id, email, name, time_zone, created_at;

-- name: get_login(email)^
-- The email's key, for the login limiter, whether or not an account has it; and that account,
-- if one does, with the password hash to check (its columns null otherwise).
SELECT email_key(:email) AS email_key, users.id, users.email, users.name, users.time_zone,
       users.created_at, users.password_hash
FROM (SELECT) AS one
LEFT JOIN users ON email_key(users.email) = email_key(:email) AND users.auth_issuer IS NULL;

-- name: get_user(user_id)^
-- One user's public profile.
SELECT id, email, name, time_zone, created_at
FROM users
WHERE id = :user_id;

-- name: get_password(user_id)^
-- What a password change checks: the current hash (null for a provider's user), and the
-- email's key for the limiter.
SELECT email_key(email) AS email_key, password_hash
FROM users
WHERE id = :user_id;

-- name: update_user(user_id, name, time_zone)^
-- Change a user's name or time zone (null keeps it); returns no row when there is no such user.
-- It locks the user's row until the transaction ends, so no task write that reads the zone
-- (FOR SHARE) runs between this and set_all_day_due_dates.
UPDATE users
SET name      = coalesce(:name, name),
    time_zone = coalesce(:time_zone, time_zone)
WHERE id = :user_id
RETURNING id, email, name, time_zone, created_at;

-- name: set_password_hash(user_id, password_hash)!
-- Store a new password hash: a new password, or the same one hashed with stronger parameters.
UPDATE users SET password_hash = :password_hash WHERE id = :user_id;

-- name: provider_user(issuer, subject, issued_at, email, name)$
-- The local user of a provider's subject, made on first sight (just in time) with the email and
-- name its token gave. 0 when the token was issued before that identity's account was deleted
-- (it may not bring the account back); no row when another worker made the user at the same
-- moment (ask again).
WITH revoked AS (
    SELECT FROM revocations
    WHERE credential = identity_credential(:issuer, :subject) AND revoked_at >= to_timestamp(:issued_at)
), found AS (
    SELECT id FROM users
    WHERE auth_issuer = :issuer AND auth_subject = :subject AND NOT EXISTS (SELECT FROM revoked)
), created AS (
    INSERT INTO users (auth_issuer, auth_subject, email, name)
    SELECT :issuer, :subject, :email, :name
    WHERE NOT EXISTS (SELECT FROM found) AND NOT EXISTS (SELECT FROM revoked)
    ON CONFLICT (auth_issuer, auth_subject) DO NOTHING
    RETURNING id
)
SELECT id FROM found
UNION ALL SELECT id FROM created
UNION ALL SELECT 0 WHERE EXISTS (SELECT FROM revoked);

-- name: get_identity(user_id)^
-- The provider's issuer and subject of a provider's user (nulls for a password account).
SELECT auth_issuer, auth_subject FROM users WHERE id = :user_id;

-- name: delete_user(user_id, user_seconds, identity_seconds)
-- Delete the account: everything it owns goes with it (every table of user-owned rows refers to
-- users ON DELETE CASCADE), in this one statement. Every worker is told to refuse the user's
-- tokens (user:<id>), and a provider's user's identity is revoked for tokens issued until now,
-- so that none of them makes the account again. Returns the revocations, for this worker.
WITH deleted AS (
    DELETE FROM users WHERE id = :user_id
    RETURNING id, identity_credential(auth_issuer, auth_subject) AS identity
), recorded AS (
    INSERT INTO revocations (credential, until)
    SELECT 'user:' || id, statement_timestamp() + make_interval(secs => :user_seconds) FROM deleted
    UNION ALL
    SELECT identity, statement_timestamp() + make_interval(secs => :identity_seconds)
    FROM deleted WHERE identity IS NOT NULL
    ON CONFLICT (credential) DO UPDATE
        SET until = greatest(revocations.until, excluded.until), revoked_at = excluded.revoked_at
    RETURNING credential, extract(epoch FROM until)::float8 AS until
)
SELECT credential, until, pg_notify('revocations', credential || ' ' || until) AS notified
FROM recorded;
