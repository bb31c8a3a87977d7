-- Sessions and revocations.
-- A session is opened by each login or register and lives as long as its refresh token keeps
-- being rotated; only a SHA-256 hash of the current refresh token is stored. Hashes it has
-- rotated out are kept while the session lives, so presenting one again is recognised as theft.
-- Revocations are the one place that says which credentials stop working before they expire:
-- every worker keeps the live rows in memory, told of new ones by NOTIFY on 'revocations'.

CREATE TABLE sessions (
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    refresh_hash bytea       NOT NULL CHECK (octet_length(refresh_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    last_used_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at   timestamptz NOT NULL,
    user_agent   text                 CHECK (char_length(user_agent) <= 512),
    revoked_at   timestamptz,
    PRIMARY KEY (user_id, id)
);

-- A refresh token names its user, so every lookup is by (user_id, hash), as sharding wants.
CREATE UNIQUE INDEX sessions_refresh_hash_key ON sessions (user_id, refresh_hash);

-- The purge chore finds ended sessions by this (revoking a session ends it now).
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE session_rotations (
    user_id    bigint      NOT NULL,
    token_hash bytea       NOT NULL,
    session_id uuid        NOT NULL,
    rotated_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (user_id, token_hash),
    FOREIGN KEY (user_id, session_id) REFERENCES sessions (user_id, id) ON DELETE CASCADE
);

CREATE INDEX session_rotations_session_idx ON session_rotations (user_id, session_id, rotated_at);

CREATE TABLE revocations (
    -- What is revoked: 'session:<uuid>' for now.
    credential text        PRIMARY KEY,
    -- When the last token it covers expires anyway; the row can go after that.
    until      timestamptz NOT NULL
);

CREATE INDEX revocations_until_idx ON revocations (until);
