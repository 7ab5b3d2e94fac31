-- Single sign-on (spec section 9). A sign-in's state, its hand-off code and the SAML assertions
-- already used are rows, not memory, so that every node of a cluster sees them.
-- A sign-in under way: an OIDC `state` (with its nonce and PKCE verifier in DATA) or a SAML
-- AuthnRequest ID; taken (deleted) once, until EXPIRES_AT (micros).
CREATE TABLE io_sso_pending (
    PENDING_ID TEXT PRIMARY KEY,
    PROVIDER TEXT NOT NULL,
    DATA TEXT NOT NULL,
    EXPIRES_AT INTEGER NOT NULL
);
-- One-time hand-off codes (`?sso_code=`), kept as SHA-256 hashes.
CREATE TABLE io_sso_codes (
    CODE_HASH TEXT PRIMARY KEY,
    ORG_UID TEXT NOT NULL,
    USER_NAME TEXT NOT NULL,
    EXPIRES_AT INTEGER NOT NULL
);
-- SAML assertion IDs already accepted, kept until the assertion would expire anyway.
CREATE TABLE io_sso_seen (
    SEEN_ID TEXT PRIMARY KEY,
    EXPIRES_AT INTEGER NOT NULL
);
