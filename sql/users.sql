-- Queries on user accounts. Emails compare case-insensitively through users_email_lower_key.

-- name: create_user(email, name, password_hash, time_zone)^
-- Register a user; returns no row when the email is already taken in any case.
INSERT INTO users (email, name, password_hash, time_zone)
VALUES (:email, :name, :password_hash, :time_zone)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING id, email, name, time_zone, created_at;

-- name: get_login(email)^
-- The user with this email, in any case, with the password hash to check.
SELECT id, email, name, time_zone, created_at, password_hash
FROM users
WHERE lower(email) = lower(:email);

-- name: get_user(user_id)^
-- One user's public profile.
SELECT id, email, name, time_zone, created_at
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
-- Store a new hash of the same password, made when the hashing parameters were raised.
UPDATE users SET password_hash = :password_hash WHERE id = :user_id;
