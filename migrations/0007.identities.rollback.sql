DROP FUNCTION identity_credential(text, text);
DELETE FROM revocations WHERE credential LIKE 'identity:%';
ALTER TABLE revocations DROP COLUMN revoked_at;
-- Provider users have no password and perhaps no email: the older schema cannot hold them.
DELETE FROM users WHERE auth_issuer IS NOT NULL;
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (email_key(email));
ALTER TABLE users
    DROP CONSTRAINT users_one_way_in,
    DROP COLUMN auth_subject,
    DROP COLUMN auth_issuer,
    ALTER COLUMN password_hash SET NOT NULL,
    ALTER COLUMN email SET NOT NULL,
    ALTER COLUMN name SET NOT NULL;
