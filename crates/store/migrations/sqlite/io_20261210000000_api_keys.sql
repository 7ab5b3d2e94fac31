-- API keys (spec section 3, "Service accounts and API keys"). The first `io_api_keys` was never
-- used by any code, so it is replaced rather than altered: the `IoApiKeys` datasource needs WHO
-- columns, a description and a revocation flag, and SQLite cannot drop the old NOT NULL column.
-- SECRET_HASH is `sha256:<hex>` of a 256-bit random secret (see server::auth::apikey).
DROP TABLE io_api_keys;
CREATE TABLE io_api_keys (
    API_KEY TEXT PRIMARY KEY,
    ORG_UID TEXT NOT NULL,
    USER_NAME TEXT NOT NULL,
    DESCRIPTION TEXT,
    SECRET_HASH TEXT NOT NULL,
    REVOKED_FLAG TEXT NOT NULL DEFAULT 'N',
    CREATED_BY TEXT, CREATION_DATE TEXT, LAST_UPDATED_BY TEXT, LAST_UPDATE_DATE TEXT,
    FOREIGN KEY (ORG_UID, USER_NAME) REFERENCES io_users (ORG_UID, USER_NAME) ON DELETE CASCADE
);
CREATE INDEX io_api_keys_user ON io_api_keys (ORG_UID, USER_NAME);
-- The key a session was made with (NULL: a password or SSO login): revoking a key ends them.
ALTER TABLE io_sessions ADD COLUMN API_KEY TEXT;
CREATE INDEX io_sessions_api_key ON io_sessions (API_KEY);
