-- One definition of when two emails are the same account, used by the unique index and every
-- lookup: ASCII letters compare without case, every other character as written. lower() alone
-- folds by the database's locale, which differs between servers (under most locales it turns
-- 'İ' into 'i̇'); under the C collation it folds only A-Z, the same on every server.
CREATE FUNCTION email_key(email text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN lower(email COLLATE "C");

CREATE UNIQUE INDEX users_email_key ON users (email_key(email));
DROP INDEX users_email_lower_key;
