-- Personal API tokens for scripts: each with a name, scopes and perhaps an expiry. Only the
-- SHA-256 hash of the secret is stored; the secret names its user, so every lookup is by
-- (user_id, hash), as elsewhere.

CREATE TABLE api_tokens (
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    scopes       text[]      NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 2
                                             AND scopes <@ ARRAY['tasks:read', 'tasks:write']),
    secret_hash  bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    PRIMARY KEY (user_id, id)
);

CREATE UNIQUE INDEX api_tokens_secret_hash_key ON api_tokens (user_id, secret_hash);

-- The purge chore finds expired tokens by this.
CREATE INDEX api_tokens_expires_idx ON api_tokens (expires_at) WHERE expires_at IS NOT NULL;
