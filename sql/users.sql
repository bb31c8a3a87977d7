-- Queries on user accounts. Two emails are the same account when email_key() says so (the
-- unique index users_email_key and every lookup use it; see migration 0005).

-- name: create_user(email, name, password_hash)^
-- Register a user; returns no row when the email is already taken in any case.
INSERT INTO users (email, name, password_hash)
VALUES (:email, :name, :password_hash)
ON CONFLICT ((email_key(email))) DO NOTHING
RETURNING id, email, name, created_at;

-- name: get_login(email)^
-- The email's key, for the login limiter, whether or not an account has it; and that account,
-- if one does, with the password hash to check (its columns null otherwise).
SELECT email_key(:email) AS email_key, users.id, users.email, users.name, users.created_at,
       users.password_hash
FROM (SELECT) AS one
LEFT JOIN users ON email_key(users.email) = email_key(:email);

-- name: get_user(user_id)^
-- One user's public profile.
SELECT id, email, name, created_at
FROM users
WHERE id = :user_id;

-- name: get_password(user_id)^
-- What a password change checks: the current hash, and the email's key for the limiter.
SELECT email_key(email) AS email_key, password_hash
FROM users
WHERE id = :user_id;

-- name: set_password_hash(user_id, password_hash)!
-- Store a new password hash: a new password, or the same one hashed with stronger parameters.
UPDATE users SET password_hash = :password_hash WHERE id = :user_id;
