-- An app's files other than scripts, as they were loaded (app.json, roles.json, datasource
-- files, workflows and every migration, for all databases): what `create-patch` exports.
CREATE TABLE io_app_files (
    APP_UID VARCHAR(64) NOT NULL,
    PATH VARCHAR(255) NOT NULL,
    CONTENT MEDIUMTEXT NOT NULL,
    CREATED_BY VARCHAR(256), CREATION_DATE DATETIME(6), LAST_UPDATED_BY VARCHAR(256), LAST_UPDATE_DATE DATETIME(6),
    PRIMARY KEY (APP_UID, PATH),
    FOREIGN KEY (APP_UID) REFERENCES io_apps (APP_UID)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
