-- Queries on user accounts. Two emails are the same account when email_key() says so (the
-- unique index users_email_key and every lookup use it; see migration 0005).

-- name: create_user(email, name, password_hash, time_zone)^
-- Register a user; returns no row when the email is already taken in any case.
INSERT INTO users (email, name, password_hash, time_zone)
VALUES (:email, :name, :password_hash, :time_zone)
ON CONFLICT ((email_key(email))) DO NOTHING
RETURNING id, email, name, time_zone, created_at;

-- name: get_login(email)^
-- The email's key, for the login limiter, whether or not an account has it; and that account,
-- if one does, with the password hash to check (its columns null otherwise).
SELECT email_key(:email) AS email_key, users.id, users.email, users.name, users.time_zone,
       users.created_at, users.password_hash
FROM (SELECT) AS one
LEFT JOIN users ON email_key(users.email) = email_key(:email);

-- name: get_user(user_id)^
-- One user's public profile.
SELECT id, email, name, time_zone, created_at
FROM users
WHERE id = :user_id;

-- name: get_password(user_id)^
-- What a password change checks: the current hash, and the email's key for the limiter.
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
