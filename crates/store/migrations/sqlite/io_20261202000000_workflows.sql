-- Workflows (spec section 7). Times are INTEGER microseconds since the epoch; JSON is text.
-- Every version of a definition an instance started on, so an instance keeps its version.
CREATE TABLE io_wf_definitions (
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    VERSION TEXT NOT NULL,
    DEFINITION TEXT NOT NULL,
    CREATED_AT INTEGER NOT NULL,
    PRIMARY KEY (APP_UID, WF_UID, VERSION)
);
CREATE TABLE io_wf_instances (
    WF_INST_UID TEXT PRIMARY KEY,
    ORG_UID TEXT NOT NULL,
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    VERSION TEXT NOT NULL,
    STATE TEXT NOT NULL,
    INPUT TEXT NOT NULL,
    VARS TEXT NOT NULL,
    ERROR TEXT,
    STEPS INTEGER NOT NULL DEFAULT 0,
    -- `<schedule index>@<fire time>` for an instance a schedule started: one per firing.
    SCHEDULE_KEY TEXT UNIQUE,
    CREATED_BY TEXT NOT NULL,
    CREATION_DATE INTEGER NOT NULL,
    LAST_UPDATE_DATE INTEGER NOT NULL,
    FINISHED_AT INTEGER
);
CREATE INDEX io_wf_instances_finished ON io_wf_instances (FINISHED_AT);
-- `idempotencyKey` of /v1/wf/start: the first instance for 24 hours.
CREATE TABLE io_wf_idempotency (
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    IDEMPOTENCY_KEY TEXT NOT NULL,
    WF_INST_UID TEXT NOT NULL,
    CREATED_AT INTEGER NOT NULL,
    PRIMARY KEY (APP_UID, WF_UID, IDEMPOTENCY_KEY)
);
-- Executions are the queue: `queued` rows wait for RUN_AT, `running` rows hold a lease.
CREATE TABLE io_wf_executions (
    EXECUTION_ID TEXT PRIMARY KEY,
    WF_INST_UID TEXT NOT NULL REFERENCES io_wf_instances (WF_INST_UID) ON DELETE CASCADE,
    NODE_UID TEXT NOT NULL,
    ATTEMPT INTEGER NOT NULL,
    TRIES INTEGER NOT NULL,
    RERUNS INTEGER NOT NULL,
    STATE TEXT NOT NULL,
    TOKEN TEXT UNIQUE,
    RUN_AT INTEGER NOT NULL,
    LEASE_UNTIL INTEGER,
    CLAIMED_BY TEXT,
    QUEUED_AT INTEGER NOT NULL,
    STARTED_AT INTEGER,
    FINISHED_AT INTEGER,
    OUTPUT TEXT,
    ERROR TEXT
);
CREATE INDEX io_wf_executions_queue ON io_wf_executions (RUN_AT) WHERE STATE = 'queued';
CREATE INDEX io_wf_executions_lease ON io_wf_executions (LEASE_UNTIL) WHERE STATE = 'running';
CREATE INDEX io_wf_executions_instance ON io_wf_executions (WF_INST_UID, QUEUED_AT);
-- The callbacks' key/values and counters; WF_INST_UID '' holds workflow-level values.
CREATE TABLE io_wf_values (
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    WF_INST_UID TEXT NOT NULL,
    VALUE_KEY TEXT NOT NULL,
    CONTENT TEXT NOT NULL,
    PRIMARY KEY (APP_UID, WF_UID, WF_INST_UID, VALUE_KEY)
);
