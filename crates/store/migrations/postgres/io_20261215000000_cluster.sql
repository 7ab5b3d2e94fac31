-- What the nodes sharing this database share besides data: secrets made at first start (the
-- JWT signing key) and counters every node watches (the metadata version, bumped by every
-- change of an app's metadata, so a node that missed a notification still reloads).
CREATE TABLE io_cluster (
    NAME VARCHAR(64) PRIMARY KEY,
    TEXT_VALUE TEXT,
    VERSION BIGINT NOT NULL DEFAULT 0
);
INSERT INTO io_cluster (NAME, VERSION) VALUES ('metadata', 0);
