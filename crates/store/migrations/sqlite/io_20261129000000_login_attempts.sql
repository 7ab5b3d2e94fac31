-- Login attempts are reserved before the password is checked (a row per attempt and key);
-- the id lets a successful attempt take its own reservation back.
ALTER TABLE io_login_failures ADD COLUMN ATTEMPT_ID TEXT;
