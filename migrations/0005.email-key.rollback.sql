CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
DROP INDEX users_email_key;
DROP FUNCTION email_key(text);
