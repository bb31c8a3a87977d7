DROP TABLE revocations;
DROP TABLE session_rotations;
DROP TABLE sessions;
