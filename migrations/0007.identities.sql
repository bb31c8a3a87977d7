-- Users from an identity provider, and revocations that say when they were made.
-- A provider's user is known here by the provider's issuer and subject (unique together), made
-- on first sight, and has no password; a password account has no issuer. Emails identify
-- password accounts only: a provider's user with the same email as a password account is
-- another account, never merged into it (that would hand the account to whoever controls the
-- address at the provider).

ALTER TABLE users
    ADD COLUMN auth_issuer  text CHECK (char_length(auth_issuer) BETWEEN 1 AND 2048),
    ADD COLUMN auth_subject text CHECK (char_length(auth_subject) BETWEEN 1 AND 255),
    ALTER COLUMN password_hash DROP NOT NULL,
    ALTER COLUMN email DROP NOT NULL,
    ALTER COLUMN name DROP NOT NULL,
    -- A password account has a password, an email and a name; a provider's user has an issuer
    -- and a subject, no password, and whatever email and name the provider's token gave.
    ADD CONSTRAINT users_one_way_in CHECK (
        CASE WHEN auth_issuer IS NULL
             THEN auth_subject IS NULL AND password_hash IS NOT NULL AND email IS NOT NULL AND name IS NOT NULL
             ELSE auth_subject IS NOT NULL AND password_hash IS NULL
        END);

CREATE UNIQUE INDEX users_identity_key ON users (auth_issuer, auth_subject);

DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (email_key(email)) WHERE auth_issuer IS NULL;

-- When each revocation was made: a deleted provider account's identity is revoked for the
-- tokens issued until then, so that one issued before the deletion cannot sign up again.
ALTER TABLE revocations ADD COLUMN revoked_at timestamptz NOT NULL DEFAULT statement_timestamp();

-- How a provider's user is named in the revocations: a hash, so that no identifier of a deleted
-- account is kept in the clear.
CREATE FUNCTION identity_credential(issuer text, subject text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN 'identity:' || encode(sha256(convert_to(issuer || E'\n' || subject, 'UTF8')), 'hex');
