-- Queries on user accounts. Emails compare case-insensitively through users_email_lower_key.

-- name: create_user(email, name, password_hash)^
-- Register a user; returns no row when the email is already taken in any case.
INSERT INTO users (email, name, password_hash)
VALUES (:email, :name, :password_hash)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING id, email, name, created_at;

-- name: get_login(email)^
-- The user with this email, in any case, with the password hash to check.
SELECT id, email, name, created_at, password_hash
FROM users
WHERE lower(email) = lower(:email);

-- name: get_user(user_id)^
-- One user's public profile.
SELECT id, email, name, created_at
FROM users
WHERE id = :user_id;

-- name: set_password_hash(user_id, password_hash)!
-- Store a new hash of the same password, made when the hashing parameters were raised.
UPDATE users SET password_hash = :password_hash WHERE id = :user_id;
