-- An app's files other than scripts, as they were loaded (app.json, roles.json, datasource
-- files, workflows and every migration, for all databases): what `create-patch` exports.
CREATE TABLE io_app_files (
    APP_UID TEXT NOT NULL REFERENCES io_apps (APP_UID),
    PATH TEXT NOT NULL,
    CONTENT TEXT NOT NULL,
    CREATED_BY TEXT, CREATION_DATE TIMESTAMPTZ, LAST_UPDATED_BY TEXT, LAST_UPDATE_DATE TIMESTAMPTZ,
    PRIMARY KEY (APP_UID, PATH)
);
