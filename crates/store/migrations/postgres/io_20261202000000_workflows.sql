-- Workflows (spec section 7). Times are BIGINT microseconds since the epoch; JSON is text.
-- Every version of a definition an instance started on, so an instance keeps its version.
CREATE TABLE io_wf_definitions (
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    VERSION TEXT NOT NULL,
    DEFINITION TEXT NOT NULL,
    CREATED_AT BIGINT NOT NULL,
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
    STEPS BIGINT NOT NULL DEFAULT 0,
    -- `<schedule index>@<fire time>` for an instance a schedule started: one per firing.
    SCHEDULE_KEY TEXT UNIQUE,
    CREATED_BY TEXT NOT NULL,
    CREATION_DATE BIGINT NOT NULL,
    LAST_UPDATE_DATE BIGINT NOT NULL,
    FINISHED_AT BIGINT
);
CREATE INDEX io_wf_instances_finished ON io_wf_instances (FINISHED_AT);
-- `idempotencyKey` of /v1/wf/start: the first instance for 24 hours.
CREATE TABLE io_wf_idempotency (
    APP_UID TEXT NOT NULL,
    WF_UID TEXT NOT NULL,
    IDEMPOTENCY_KEY TEXT NOT NULL,
    WF_INST_UID TEXT NOT NULL,
    CREATED_AT BIGINT NOT NULL,
    PRIMARY KEY (APP_UID, WF_UID, IDEMPOTENCY_KEY)
);
-- Executions are the queue: `queued` rows wait for RUN_AT, `running` rows hold a lease.
CREATE TABLE io_wf_executions (
    EXECUTION_ID TEXT PRIMARY KEY,
    WF_INST_UID TEXT NOT NULL REFERENCES io_wf_instances (WF_INST_UID) ON DELETE CASCADE,
    NODE_UID TEXT NOT NULL,
    ATTEMPT BIGINT NOT NULL,
    TRIES BIGINT NOT NULL,
    RERUNS BIGINT NOT NULL,
    STATE TEXT NOT NULL,
    TOKEN TEXT UNIQUE,
    RUN_AT BIGINT NOT NULL,
    LEASE_UNTIL BIGINT,
    CLAIMED_BY TEXT,
    QUEUED_AT BIGINT NOT NULL,
    STARTED_AT BIGINT,
    FINISHED_AT BIGINT,
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
