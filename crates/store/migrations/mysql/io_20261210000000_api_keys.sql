-- API keys (spec section 3, "Service accounts and API keys"); see the PostgreSQL file of the
-- same name. SECRET_HASH is `sha256:<hex>` of a 256-bit random secret (server::auth::apikey).
DROP TABLE io_api_keys;
CREATE TABLE io_api_keys (
    API_KEY VARCHAR(128) PRIMARY KEY,
    ORG_UID VARCHAR(64) NOT NULL,
    USER_NAME VARCHAR(256) NOT NULL,
    DESCRIPTION TEXT,
    SECRET_HASH TEXT NOT NULL,
    REVOKED_FLAG VARCHAR(1) NOT NULL DEFAULT 'N',
    CREATED_BY VARCHAR(256), CREATION_DATE DATETIME(6), LAST_UPDATED_BY VARCHAR(256), LAST_UPDATE_DATE DATETIME(6),
    FOREIGN KEY (ORG_UID, USER_NAME) REFERENCES io_users (ORG_UID, USER_NAME) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX io_api_keys_user ON io_api_keys (ORG_UID, USER_NAME);
-- The key a session was made with (NULL: a password or SSO login): revoking a key ends them.
ALTER TABLE io_sessions ADD COLUMN API_KEY VARCHAR(128);
CREATE INDEX io_sessions_api_key ON io_sessions (API_KEY);
