-- Users and their tasks.
-- Tasks are keyed by (user_id, id) and every unique key on them starts with user_id, so the
-- table can later be distributed by user (Citus) without a rewrite.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    name          text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Emails are unique whatever their case; login looks them up through this index too.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE tasks (
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 255),
    description text                 CHECK (char_length(description) <= 1000),
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (user_id, id)
);

-- The list query: one user's tasks, newest first.
CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at DESC, id DESC);
