DELETE FROM revocations WHERE credential LIKE 'api_token:%';
DROP TABLE api_tokens;
