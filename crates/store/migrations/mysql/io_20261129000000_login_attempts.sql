-- Login attempts are reserved before the password is checked (a row per attempt and key).
-- ATTEMPT_ID is set while the attempt is being checked (pending) and NULL once it failed;
-- a successful attempt deletes its rows.
ALTER TABLE io_login_failures ADD COLUMN ATTEMPT_ID VARCHAR(64);
CREATE INDEX io_login_failures_attempt ON io_login_failures (ATTEMPT_ID);
