//! Workflow tables (spec section 7): definitions by version, instances, executions (the queue),
//! idempotency keys and the callbacks' key/values and counters.
//!
//! The queue is the executions table itself: a `queued` row waits for its `RUN_AT`, a claim
//! makes it `running` with a fresh token and a lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`;
//! SQLite: inside a write transaction, which its single writer serialises). Every change of an
//! execution's state is guarded by `STATE = 'running'` (and its id), so an execution completes
//! at most once and a token stops working the moment its execution is no longer running.
//! Times are microseconds since the epoch; JSON is stored as text on both databases.

use query::{AttrType, Dialect, Value};
use serde_json::Value as Json;

use crate::db::{Raw, Tx, portable};
use crate::error::Result;
use crate::platform::Store;

/// Channel of PostgreSQL `NOTIFY` when an execution is queued.
pub const WF_CHANNEL: &str = "cloudio_wf";

/// How long an idempotency key returns its first instance.
pub const IDEMPOTENCY_MICROS: i64 = 24 * 3600 * 1_000_000;

fn text(v: &str) -> Value {
    Value::Text(v.to_string())
}

fn opt_text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, text)
}

fn json_text(v: &Json) -> Value {
    Value::Text(v.to_string())
}

fn take_text(v: Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn take_int(v: Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(i),
        Value::Float(f) => Some(f as i64),
        Value::Text(s) => s.parse().ok(),
        _ => None,
    }
}

fn take_json(v: Value) -> Json {
    take_text(v)
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Json::Null)
}

/// Runs a transaction again while the database aborts it for a lock conflict (MySQL), with a
/// short, growing pause: for up to about 6 s (200 concurrent counters on two cores under load
/// needed more than the 1.7 s of 20 tries).
async fn retrying<T, F, Fut>(mut run: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = std::time::Duration::from_millis(2);
    for _ in 0..64 {
        match run().await {
            Err(crate::StoreError::Retry(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
    run().await
}

/// A row's cells in order, `Null` past its end.
struct Cells(std::vec::IntoIter<Value>);

impl Cells {
    fn new(row: Vec<Value>) -> Cells {
        Cells(row.into_iter())
    }
    fn cell(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Null)
    }
    fn text(&mut self) -> String {
        take_text(self.cell()).unwrap_or_default()
    }
    fn opt_text(&mut self) -> Option<String> {
        take_text(self.cell())
    }
    fn int(&mut self) -> i64 {
        take_int(self.cell()).unwrap_or(0)
    }
    fn opt_int(&mut self) -> Option<i64> {
        take_int(self.cell())
    }
    fn json(&mut self) -> Json {
        take_json(self.cell())
    }
}

/// A new instance for [`Store::wf_start`].
#[derive(Debug, Clone)]
pub struct NewInstance<'a> {
    pub org_uid: &'a str,
    pub app_uid: &'a str,
    pub wf_uid: &'a str,
    pub version: &'a str,
    /// The definition's text, kept by version for the instance's life.
    pub definition: &'a str,
    pub start_node: &'a str,
    pub input: &'a Json,
    pub user_name: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// `<schedule>@<fire time>`: at most one instance per key, ever.
    pub schedule_key: Option<&'a str>,
    pub now: i64,
}

/// See [`Store::wf_new_instance`]: each a statement and its parameters.
pub struct NewInstanceStatements {
    /// The definition's text under its version (kept once).
    pub definition: (String, Vec<Value>),
    /// The instance; inserts nothing when its schedule key was taken.
    pub instance: (String, Vec<Value>),
    /// The start node's first execution.
    pub first: (String, Vec<Value>),
    /// On PostgreSQL, the wake-up every node receives at commit.
    pub notify: Option<(String, Vec<Value>)>,
}

/// What [`Store::wf_start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new instance.
    New { wf_inst_uid: String },
    /// The instance an earlier start with the same idempotency key (or schedule firing) made.
    Existing {
        wf_inst_uid: String,
        version: String,
    },
}

/// An instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub wf_inst_uid: String,
    pub org_uid: String,
    pub app_uid: String,
    pub wf_uid: String,
    pub version: String,
    pub state: String,
    pub input: Json,
    pub vars: Json,
    pub error: Option<String>,
    pub steps: i64,
    pub created_by: String,
    pub creation_date: i64,
    pub last_update_date: i64,
}

/// An execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    pub execution_id: String,
    pub node_uid: String,
    pub attempt: i64,
    pub state: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub output: Option<Json>,
    pub error: Option<String>,
}

/// An execution this process has claimed: it runs until its lease ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub execution_id: String,
    pub token: String,
    pub wf_inst_uid: String,
    pub node_uid: String,
    /// 1 for a node's first execution, one more for each retry or re-run.
    pub attempt: i64,
    /// Tries that count against the node's `attempts` (this one included).
    pub tries: i64,
    /// Re-runs after a lost lease (they do not count against `attempts`).
    pub reruns: i64,
}

/// The next thing an instance does after an execution ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Queue an execution of `node_uid` to run at `run_at`.
    Queue {
        node_uid: String,
        attempt: i64,
        tries: i64,
        reruns: i64,
        run_at: i64,
    },
    /// The instance ends in `state` (`completed`, `failed`).
    Finish {
        state: &'static str,
        error: Option<String>,
    },
}

/// How an execution ended, and what follows: one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub execution_id: String,
    pub wf_inst_uid: String,
    /// The execution's output, or why it failed.
    pub result: std::result::Result<Json, String>,
    /// The instance's new `vars`; `None` keeps them.
    pub vars: Option<Json>,
    pub next: Next,
    pub now: i64,
    /// Only if the execution's lease ran out before this time (a re-run after a lost lease:
    /// an owner that renewed meanwhile keeps it).
    pub expired_before: Option<i64>,
    /// The next execution (a `Next::Queue` due now), claimed at once by the server recording
    /// this completion: it runs next without a claim of its own or a wake-up.
    pub claim: Option<ChainClaim>,
}

/// Why a job of SQLite's writer undid its work: an answer that is not an error (a completion
/// whose execution was no longer running, a refused callback), or a failure.
enum Undone<T> {
    Answer(T),
    Store(crate::StoreError),
}

impl<T> From<crate::StoreError> for Undone<T> {
    fn from(e: crate::StoreError) -> Self {
        Undone::Store(e)
    }
}

/// What a writing callback does to its key.
enum Change {
    Put(Json),
    Increment,
}

/// [`CallbackFields`] owned, for a job of SQLite's writer.
struct OwnedFields([String; 6]);

impl From<&CallbackFields<'_>> for OwnedFields {
    fn from(f: &CallbackFields<'_>) -> Self {
        OwnedFields(
            [
                f.token,
                f.wf_uid,
                f.wf_inst_uid,
                f.version,
                f.node_uid,
                f.execution_id,
            ]
            .map(str::to_string),
        )
    }
}

impl OwnedFields {
    fn fields(&self) -> CallbackFields<'_> {
        let [token, wf_uid, wf_inst_uid, version, node_uid, execution_id] = &self.0;
        CallbackFields {
            token,
            wf_uid,
            wf_inst_uid,
            version,
            node_uid,
            execution_id,
        }
    }
}

/// See [`Completion::claim`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainClaim {
    pub execution_id: String,
    pub token: String,
    pub owner: String,
    pub lease_until: i64,
}

/// What a callback's token stands for: the execution it was issued to, while that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub execution_id: String,
    pub node_uid: String,
    pub wf_inst_uid: String,
    pub wf_uid: String,
    pub version: String,
    pub app_uid: String,
}

/// The six fields a callback names, all of which must match its token's execution.
#[derive(Debug, Clone, Copy)]
pub struct CallbackFields<'a> {
    pub token: &'a str,
    pub wf_uid: &'a str,
    pub wf_inst_uid: &'a str,
    pub version: &'a str,
    pub node_uid: &'a str,
    pub execution_id: &'a str,
}

impl TokenOwner {
    fn matches(&self, f: &CallbackFields<'_>) -> bool {
        self.execution_id == f.execution_id
            && self.node_uid == f.node_uid
            && self.wf_inst_uid == f.wf_inst_uid
            && self.wf_uid == f.wf_uid
            && self.version == f.version
    }
}

/// Where a callback's key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Shared by every instance and version of the workflow.
    Workflow,
    /// The instance's own (its `vars`).
    Instance,
}

/// A callback's answer, before HTTP.
#[derive(Debug, Clone, PartialEq)]
pub enum Callback {
    Ok(Json),
    /// The token is not (or no longer) valid for these fields.
    InvalidToken,
    /// `incrementAndGet` on a value that is not a 64-bit integer (or would overflow).
    NotANumber,
}

const INSTANCE_COLUMNS: &str = "WF_INST_UID, ORG_UID, APP_UID, WF_UID, VERSION, STATE, INPUT, VARS, \
     ERROR, STEPS, CREATED_BY, CREATION_DATE, LAST_UPDATE_DATE";
const INSTANCE_TYPES: [AttrType; 13] = [
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::Integer,
    AttrType::String,
    AttrType::Integer,
    AttrType::Integer,
];

fn instance_from(row: Vec<Value>) -> InstanceRow {
    let mut c = Cells::new(row);
    InstanceRow {
        wf_inst_uid: c.text(),
        org_uid: c.text(),
        app_uid: c.text(),
        wf_uid: c.text(),
        version: c.text(),
        state: c.text(),
        input: c.json(),
        vars: c.json(),
        error: c.opt_text(),
        steps: c.int(),
        created_by: c.text(),
        creation_date: c.int(),
        last_update_date: c.int(),
    }
}

const CLAIM_TYPES: [AttrType; 6] = [
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::Integer,
    AttrType::Integer,
    AttrType::Integer,
];

impl Store {
    fn wf_sql(&self, sql: &str) -> String {
        let sql = sql
            .replace("{inst}", &self.t("io_wf_instances"))
            .replace("{exec}", &self.t("io_wf_executions"))
            .replace("{defs}", &self.t("io_wf_definitions"))
            .replace("{idem}", &self.t("io_wf_idempotency"))
            .replace("{vals}", &self.t("io_wf_values"));
        portable(self.dialect(), &sql).into_owned()
    }

    /// The statement that inserts the queued execution `next` names (`None` for a finish).
    fn wf_queue_statement(
        &self,
        wf_inst_uid: &str,
        next: &Next,
        now: i64,
        claim: Option<&ChainClaim>,
    ) -> Option<(String, Vec<Value>)> {
        let Next::Queue {
            node_uid,
            attempt,
            tries,
            reruns,
            run_at,
        } = next
        else {
            return None;
        };
        let mut params = vec![
            text(&claim.map_or_else(
                || uuid::Uuid::new_v4().to_string(),
                |c| c.execution_id.clone(),
            )),
            text(wf_inst_uid),
            text(node_uid),
            Value::Int(*attempt),
            Value::Int(*tries),
            Value::Int(*reruns),
            Value::Int(*run_at),
            Value::Int(now),
        ];
        Some(match claim {
            None => (
                self.wf_sql(
                    "INSERT INTO {exec} (EXECUTION_ID, WF_INST_UID, NODE_UID, ATTEMPT, TRIES, \
                     RERUNS, RUN_AT, QUEUED_AT, STATE) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
                ),
                params,
            ),
            Some(c) => {
                params.extend([
                    text(&c.token),
                    text(&c.owner),
                    Value::Int(now),
                    Value::Int(c.lease_until),
                ]);
                (
                    self.wf_sql(
                        "INSERT INTO {exec} (EXECUTION_ID, WF_INST_UID, NODE_UID, ATTEMPT, TRIES, \
                         RERUNS, RUN_AT, QUEUED_AT, STATE, TOKEN, CLAIMED_BY, STARTED_AT, \
                         LEASE_UNTIL) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    ),
                    params,
                )
            }
        })
    }

    /// On PostgreSQL, wakes every node's engine when the transaction commits.
    async fn wf_notify(&self, raw: &mut Raw<'_>) -> Result<()> {
        if self.dialect() == Dialect::Postgres {
            raw.execute(&format!("SELECT pg_notify('{WF_CHANNEL}', '')"), &[])
                .await?;
        }
        Ok(())
    }

    /// The statements that create instance `inst` of `n` and queue its start node, run in
    /// this order in one transaction (by [`Store::wf_start`], or by a script's
    /// `db.startWorkflow` inside its request's transaction, so that the start takes effect
    /// only if the request commits). `n`'s idempotency key is not looked at here.
    pub fn wf_new_instance(&self, n: &NewInstance<'_>, inst: &str) -> NewInstanceStatements {
        let definition = (
            self.wf_sql(
                "INSERT INTO {defs} (APP_UID, WF_UID, VERSION, DEFINITION, CREATED_AT) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ),
            vec![
                text(n.app_uid),
                text(n.wf_uid),
                text(n.version),
                text(n.definition),
                Value::Int(n.now),
            ],
        );
        let instance = (
            self.wf_sql(
                "INSERT INTO {inst} (WF_INST_UID, ORG_UID, APP_UID, WF_UID, VERSION, STATE, \
                 INPUT, VARS, STEPS, SCHEDULE_KEY, CREATED_BY, CREATION_DATE, LAST_UPDATE_DATE) \
                 VALUES (?, ?, ?, ?, ?, 'running', ?, '{}', 1, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ),
            vec![
                text(inst),
                text(n.org_uid),
                text(n.app_uid),
                text(n.wf_uid),
                text(n.version),
                json_text(n.input),
                opt_text(n.schedule_key),
                text(n.user_name),
                Value::Int(n.now),
                Value::Int(n.now),
            ],
        );
        let first = Next::Queue {
            node_uid: n.start_node.to_string(),
            attempt: 1,
            tries: 1,
            reruns: 0,
            run_at: n.now,
        };
        let first = self
            .wf_queue_statement(inst, &first, n.now, None)
            .unwrap_or_default();
        let notify = (self.dialect() == Dialect::Postgres)
            .then(|| (format!("SELECT pg_notify('{WF_CHANNEL}', '')"), Vec::new()));
        NewInstanceStatements {
            definition,
            instance,
            first,
            notify,
        }
    }

    /// Creates an instance and queues its start node, or finds the instance an earlier start
    /// with the same idempotency key (within 24 hours) or the same schedule firing made.
    pub async fn wf_start(&self, n: &NewInstance<'_>) -> Result<Started> {
        retrying(|| self.wf_start_once(n)).await
    }

    async fn wf_start_once(&self, n: &NewInstance<'_>) -> Result<Started> {
        let mut tx = self.db.begin_write().await?;
        let inst = uuid::Uuid::new_v4().to_string();
        if let Some(key) = n.idempotency_key {
            let mut raw = tx.raw();
            raw.execute(
                &self.wf_sql(
                    "DELETE FROM {idem} WHERE APP_UID = ? AND WF_UID = ? AND IDEMPOTENCY_KEY = ? \
                     AND CREATED_AT < ?",
                ),
                &[
                    text(n.app_uid),
                    text(n.wf_uid),
                    text(key),
                    Value::Int(n.now - IDEMPOTENCY_MICROS),
                ],
            )
            .await?;
            let inserted = raw
                .execute(
                    &self.wf_sql(
                        "INSERT INTO {idem} (APP_UID, WF_UID, IDEMPOTENCY_KEY, WF_INST_UID, \
                         CREATED_AT) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    ),
                    &[
                        text(n.app_uid),
                        text(n.wf_uid),
                        text(key),
                        text(&inst),
                        Value::Int(n.now),
                    ],
                )
                .await?;
            if inserted == 0 {
                let rows = raw
                    .fetch_all(
                        &self.wf_sql(
                            "SELECT i.WF_INST_UID, i.VERSION FROM {idem} k JOIN {inst} i \
                             ON i.WF_INST_UID = k.WF_INST_UID WHERE k.APP_UID = ? AND \
                             k.WF_UID = ? AND k.IDEMPOTENCY_KEY = ?",
                        ),
                        &[text(n.app_uid), text(n.wf_uid), text(key)],
                        &[AttrType::String, AttrType::String],
                    )
                    .await?;
                if let Some(row) = rows.into_iter().next() {
                    let mut c = Cells::new(row);
                    return Ok(Started::Existing {
                        wf_inst_uid: c.text(),
                        version: c.text(),
                    });
                }
                // The instance was purged: the key starts a new one.
                raw.execute(
                    &self.wf_sql(
                        "UPDATE {idem} SET WF_INST_UID = ?, CREATED_AT = ? WHERE APP_UID = ? \
                         AND WF_UID = ? AND IDEMPOTENCY_KEY = ?",
                    ),
                    &[
                        text(&inst),
                        Value::Int(n.now),
                        text(n.app_uid),
                        text(n.wf_uid),
                        text(key),
                    ],
                )
                .await?;
            }
        }
        let mut raw = tx.raw();
        let st = self.wf_new_instance(n, &inst);
        raw.execute(&st.definition.0, &st.definition.1).await?;
        let inserted = raw.execute(&st.instance.0, &st.instance.1).await?;
        if inserted == 0 {
            // Only SCHEDULE_KEY can collide: another node fired this schedule first.
            let rows = raw
                .fetch_all(
                    &self.wf_sql("SELECT WF_INST_UID, VERSION FROM {inst} WHERE SCHEDULE_KEY = ?"),
                    &[opt_text(n.schedule_key)],
                    &[AttrType::String, AttrType::String],
                )
                .await?;
            let mut c = Cells::new(rows.into_iter().next().unwrap_or_default());
            return Ok(Started::Existing {
                wf_inst_uid: c.text(),
                version: c.text(),
            });
        }
        raw.execute(&st.first.0, &st.first.1).await?;
        self.wf_notify(&mut raw).await?;
        tx.commit().await?;
        Ok(Started::New { wf_inst_uid: inst })
    }

    /// A definition's text by version, as an instance started on it.
    pub async fn wf_definition(
        &self,
        app_uid: &str,
        wf_uid: &str,
        version: &str,
    ) -> Result<Option<String>> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql(
                    "SELECT DEFINITION FROM {defs} WHERE APP_UID = ? AND WF_UID = ? AND VERSION = ?",
                ),
                &[text(app_uid), text(wf_uid), text(version)],
                &[AttrType::String],
            )
            .await?;
        Ok(rows.into_iter().next().map(|r| Cells::new(r).text()))
    }

    pub async fn wf_instance(&self, wf_inst_uid: &str) -> Result<Option<InstanceRow>> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql(&format!(
                    "SELECT {INSTANCE_COLUMNS} FROM {{inst}} WHERE WF_INST_UID = ?"
                )),
                &[text(wf_inst_uid)],
                &INSTANCE_TYPES,
            )
            .await?;
        Ok(rows.into_iter().next().map(instance_from))
    }

    /// An instance's executions that have started, in order.
    pub async fn wf_executions(&self, wf_inst_uid: &str) -> Result<Vec<ExecutionRow>> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql(
                    "SELECT EXECUTION_ID, NODE_UID, ATTEMPT, STATE, STARTED_AT, FINISHED_AT, \
                     OUTPUT, ERROR FROM {exec} WHERE WF_INST_UID = ? AND STARTED_AT IS NOT NULL \
                     ORDER BY STARTED_AT, QUEUED_AT",
                ),
                &[text(wf_inst_uid)],
                &[
                    AttrType::String,
                    AttrType::String,
                    AttrType::Integer,
                    AttrType::String,
                    AttrType::Integer,
                    AttrType::Integer,
                    AttrType::String,
                    AttrType::String,
                ],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                ExecutionRow {
                    execution_id: c.text(),
                    node_uid: c.text(),
                    attempt: c.int(),
                    state: c.text(),
                    started_at: c.opt_int(),
                    finished_at: c.opt_int(),
                    output: c.opt_text().and_then(|s| serde_json::from_str(&s).ok()),
                    error: c.opt_text(),
                }
            })
            .collect())
    }

    /// Cancels a running instance: it becomes `cancelled` and its queued or running executions
    /// `failed`, so their tokens stop working at once. False if it was not running.
    pub async fn wf_cancel(&self, wf_inst_uid: &str, now: i64) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        let mut raw = tx.raw();
        // Executions first, as completions and callbacks lock them (then the instance): the
        // same order cannot deadlock.
        raw.execute(
            &self.wf_sql(
                "UPDATE {exec} SET STATE = 'failed', ERROR = 'cancelled', FINISHED_AT = ?, \
                 LEASE_UNTIL = NULL WHERE WF_INST_UID = ? AND STATE IN ('queued', 'running')",
            ),
            &[Value::Int(now), text(wf_inst_uid)],
        )
        .await?;
        let n = raw
            .execute(
                &self.wf_sql(
                    "UPDATE {inst} SET STATE = 'cancelled', LAST_UPDATE_DATE = ?, FINISHED_AT = ? \
                     WHERE WF_INST_UID = ? AND STATE = 'running'",
                ),
                &[Value::Int(now), Value::Int(now), text(wf_inst_uid)],
            )
            .await?;
        if n == 0 {
            // Not running: the executions' update rolls back with the transaction.
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Claims the oldest due execution, if any: it becomes `running` with a new token and a
    /// lease until `lease_until`.
    pub async fn wf_claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Claimed>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        if self.dialect() == Dialect::Mysql {
            return retrying(|| self.wf_claim_mysql(token.clone(), owner, now, lease_until)).await;
        }
        let lock = match self.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = self.wf_sql(&format!(
            "UPDATE {{exec}} SET STATE = 'running', TOKEN = ?, CLAIMED_BY = ?, STARTED_AT = ?, \
             LEASE_UNTIL = ? WHERE EXECUTION_ID = (SELECT EXECUTION_ID FROM {{exec}} \
             WHERE STATE = 'queued' AND RUN_AT <= ? ORDER BY RUN_AT LIMIT 1{lock}) \
             RETURNING EXECUTION_ID, WF_INST_UID, NODE_UID, ATTEMPT, TRIES, RERUNS"
        ));
        let params = [
            text(&token),
            text(owner),
            Value::Int(now),
            Value::Int(lease_until),
            Value::Int(now),
        ];
        let rows = match self.dialect() {
            // Without SKIP LOCKED the writer is the lock: a job of its batches.
            Dialect::Sqlite => match self.db.writer() {
                Some(writer) => {
                    writer
                        .run(move |w: &mut crate::WriteConn<'_>| {
                            w.fetch_all(&sql, &params, &CLAIM_TYPES)
                        })
                        .await?
                }
                None => {
                    let mut tx = self.db.begin_write().await?;
                    let rows = tx.raw().fetch_all(&sql, &params, &CLAIM_TYPES).await?;
                    tx.commit().await?;
                    rows
                }
            },
            _ => self.db.fetch_all(&sql, &params, &CLAIM_TYPES).await?,
        };
        Ok(rows.into_iter().next().map(|row| {
            let mut c = Cells::new(row);
            Claimed {
                execution_id: c.text(),
                token: token.clone(),
                wf_inst_uid: c.text(),
                node_uid: c.text(),
                attempt: c.int(),
                tries: c.int(),
                reruns: c.int(),
            }
        }))
    }

    /// MySQL has no `UPDATE ... RETURNING`: the row is picked and locked (`SKIP LOCKED`, so
    /// nodes claiming at once take different rows), then updated, in one transaction.
    async fn wf_claim_mysql(
        &self,
        token: String,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<Claimed>> {
        let mut tx = self.db.begin_write().await?;
        let rows = tx
            .raw()
            .fetch_all(
                &self.wf_sql(
                    "SELECT EXECUTION_ID, WF_INST_UID, NODE_UID, ATTEMPT, TRIES, RERUNS FROM {exec} \
                     WHERE STATE = 'queued' AND RUN_AT <= ? ORDER BY RUN_AT LIMIT 1 \
                     FOR UPDATE SKIP LOCKED",
                ),
                &[Value::Int(now)],
                &CLAIM_TYPES,
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut c = Cells::new(row);
        let claimed = Claimed {
            execution_id: c.text(),
            token: token.clone(),
            wf_inst_uid: c.text(),
            node_uid: c.text(),
            attempt: c.int(),
            tries: c.int(),
            reruns: c.int(),
        };
        tx.raw()
            .execute(
                &self.wf_sql(
                    "UPDATE {exec} SET STATE = 'running', TOKEN = ?, CLAIMED_BY = ?, \
                     STARTED_AT = ?, LEASE_UNTIL = ? WHERE EXECUTION_ID = ?",
                ),
                &[
                    text(&token),
                    text(owner),
                    Value::Int(now),
                    Value::Int(lease_until),
                    text(&claimed.execution_id),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// When the next queued execution is due (micros), if any is queued.
    pub async fn wf_next_due(&self) -> Result<Option<i64>> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql("SELECT MIN(RUN_AT) FROM {exec} WHERE STATE = 'queued'"),
                &[],
                &[AttrType::Integer],
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| Cells::new(r).opt_int()))
    }

    /// Extends a running execution's lease; false when it no longer runs (cancelled, timed
    /// out, or taken over after its lease ran out).
    pub async fn wf_renew(&self, execution_id: &str, lease_until: i64) -> Result<bool> {
        let sql = self.wf_sql(
            "UPDATE {exec} SET LEASE_UNTIL = ? WHERE EXECUTION_ID = ? AND STATE = 'running'",
        );
        retrying(|| async {
            let mut tx = self.db.begin_write().await?;
            let n = tx
                .raw()
                .execute(&sql, &[Value::Int(lease_until), text(execution_id)])
                .await?;
            tx.commit().await?;
            Ok(n == 1)
        })
        .await
    }

    /// The statements that record `c`, for a caller's own transaction (a script node's, whose
    /// `db` writes commit with it). Each must change exactly one row, or the execution was no
    /// longer running (or its instance was cancelled) and the transaction must roll back;
    /// `(sql, params, must_change_one_row)`.
    pub fn wf_completion_statements(&self, c: &Completion) -> Vec<(String, Vec<Value>, bool)> {
        let mut out = Vec::new();
        let (state, output, error) = match &c.result {
            Ok(o) => ("completed", json_text(o), Value::Null),
            Err(e) => ("failed", Value::Null, text(e)),
        };
        let mut params = vec![
            text(state),
            output,
            error,
            Value::Int(c.now),
            text(&c.execution_id),
        ];
        let expired = match c.expired_before {
            Some(t) => {
                params.push(Value::Int(t));
                " AND LEASE_UNTIL < ?"
            }
            None => "",
        };
        out.push((
            self.wf_sql(&format!(
                "UPDATE {{exec}} SET STATE = ?, OUTPUT = ?, ERROR = ?, FINISHED_AT = ?, \
                 LEASE_UNTIL = NULL WHERE EXECUTION_ID = ? AND STATE = 'running'{expired}"
            )),
            params,
            true,
        ));
        let vars_set = if c.vars.is_some() { "VARS = ?, " } else { "" };
        let mut params = Vec::new();
        if let Some(v) = &c.vars {
            params.push(json_text(v));
        }
        match &c.next {
            Next::Queue { .. } => {
                params.extend([Value::Int(c.now), text(&c.wf_inst_uid)]);
                out.push((
                    self.wf_sql(&format!(
                        "UPDATE {{inst}} SET {vars_set}STEPS = STEPS + 1, LAST_UPDATE_DATE = ? \
                         WHERE WF_INST_UID = ? AND STATE = 'running'"
                    )),
                    params,
                    true,
                ));
                if let Some((sql, params)) =
                    self.wf_queue_statement(&c.wf_inst_uid, &c.next, c.now, c.claim.as_ref())
                {
                    out.push((sql, params, true));
                }
            }
            Next::Finish { state, error } => {
                params.extend([
                    text(state),
                    opt_text(error.as_deref()),
                    Value::Int(c.now),
                    Value::Int(c.now),
                    text(&c.wf_inst_uid),
                ]);
                out.push((
                    self.wf_sql(&format!(
                        "UPDATE {{inst}} SET {vars_set}STATE = ?, ERROR = ?, LAST_UPDATE_DATE = ?, \
                         FINISHED_AT = ? WHERE WF_INST_UID = ? AND STATE = 'running'"
                    )),
                    params,
                    true,
                ));
            }
        }
        // A claimed next execution runs here: nobody else needs waking.
        if self.dialect() == Dialect::Postgres
            && matches!(c.next, Next::Queue { .. })
            && c.claim.is_none()
        {
            out.push((
                format!("SELECT pg_notify('{WF_CHANNEL}', '')"),
                vec![],
                false,
            ));
        }
        out
    }

    /// Records `c` in a transaction of its own; false (and nothing changed) when the execution
    /// was no longer running or its instance no longer running.
    pub async fn wf_complete(&self, c: &Completion) -> Result<bool> {
        if let Some(writer) = self.db.writer() {
            // SQLite: one job of the batching writer, sharing a commit with the others queued.
            let statements = self.wf_completion_statements(c);
            let done = writer
                .run(move |w: &mut crate::WriteConn<'_>| {
                    for (sql, params, one) in &statements {
                        if w.execute(sql, params)? != 1 && *one {
                            return Err(Undone::Answer(()));
                        }
                    }
                    Ok(())
                })
                .await;
            return match done {
                Ok(()) => Ok(true),
                Err(Undone::Answer(())) => Ok(false),
                Err(Undone::Store(e)) => Err(e),
            };
        }
        // MySQL may pick the completion as a deadlock's victim (gap locks on the queue's
        // indexes, taken by other nodes claiming and completing): it runs again, or the
        // execution would sit as running until its lease ran out and then run twice.
        retrying(|| async {
            let mut tx = self.db.begin_write().await?;
            if !self.wf_run_completion(&mut tx, c).await? {
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn wf_run_completion(&self, tx: &mut Tx, c: &Completion) -> Result<bool> {
        let mut raw = tx.raw();
        for (sql, params, one) in self.wf_completion_statements(c) {
            if one {
                if raw.execute(&sql, &params).await? != 1 {
                    return Ok(false);
                }
            } else {
                raw.execute(&sql, &params).await?;
            }
        }
        Ok(true)
    }

    /// Executions whose lease ran out (their server died or stalled), with what the engine
    /// needs to decide their next step: `(execution, instance, node, attempt, tries, reruns)`.
    pub async fn wf_expired(&self, now: i64) -> Result<Vec<Claimed>> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql(
                    "SELECT EXECUTION_ID, WF_INST_UID, NODE_UID, ATTEMPT, TRIES, RERUNS FROM {exec} \
                     WHERE STATE = 'running' AND LEASE_UNTIL < ? ORDER BY LEASE_UNTIL LIMIT 100",
                ),
                &[Value::Int(now)],
                &CLAIM_TYPES,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut c = Cells::new(row);
                Claimed {
                    execution_id: c.text(),
                    token: String::new(),
                    wf_inst_uid: c.text(),
                    node_uid: c.text(),
                    attempt: c.int(),
                    tries: c.int(),
                    reruns: c.int(),
                }
            })
            .collect())
    }

    /// Deletes instances finished before `before` (micros), their executions and their own
    /// values, and idempotency keys older than 24 hours; returns how many instances went.
    pub async fn wf_purge(&self, before: i64, now: i64) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let mut raw = tx.raw();
        raw.execute(
            &self.wf_sql("DELETE FROM {idem} WHERE CREATED_AT < ?"),
            &[Value::Int(now - IDEMPOTENCY_MICROS)],
        )
        .await?;
        raw.execute(
            &self.wf_sql(
                "DELETE FROM {vals} WHERE WF_INST_UID IN (SELECT WF_INST_UID FROM {inst} \
                 WHERE FINISHED_AT < ?)",
            ),
            &[Value::Int(before)],
        )
        .await?;
        raw.execute(
            &self.wf_sql(
                "DELETE FROM {exec} WHERE WF_INST_UID IN (SELECT WF_INST_UID FROM {inst} \
                 WHERE FINISHED_AT < ?)",
            ),
            &[Value::Int(before)],
        )
        .await?;
        let n = raw
            .execute(
                &self.wf_sql("DELETE FROM {inst} WHERE FINISHED_AT < ?"),
                &[Value::Int(before)],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// `(running executions, queued executions)`, for metrics.
    pub async fn wf_queue_depth(&self) -> Result<(i64, i64)> {
        let rows = self
            .db
            .fetch_all(
                &self.wf_sql(
                    "SELECT COALESCE(SUM(CASE WHEN STATE = 'running' THEN 1 ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN STATE = 'queued' THEN 1 ELSE 0 END), 0) FROM {exec} \
                     WHERE STATE IN ('running', 'queued')",
                ),
                &[],
                &[AttrType::Integer, AttrType::Integer],
            )
            .await?;
        let mut c = Cells::new(rows.into_iter().next().unwrap_or_default());
        Ok((c.int(), c.int()))
    }

    /// The execution a token was issued to, while it runs (and its lease holds). With `lock`
    /// on PostgreSQL the execution row is share-locked until the transaction ends, so it cannot
    /// complete, fail or be cancelled while a write made under its token commits.
    async fn wf_token_owner(
        &self,
        conn: &mut impl crate::Exec,
        token: &str,
        now: i64,
        lock: bool,
    ) -> Result<Option<TokenOwner>> {
        let lock = match self.dialect() {
            Dialect::Postgres if lock => " FOR SHARE OF e",
            Dialect::Mysql if lock => " LOCK IN SHARE MODE",
            _ => "",
        };
        let rows = conn
            .fetch_all(
                &self.wf_sql(&format!(
                    "SELECT e.EXECUTION_ID, e.NODE_UID, i.WF_INST_UID, i.WF_UID, i.VERSION, \
                     i.APP_UID FROM {{exec}} e JOIN {{inst}} i ON i.WF_INST_UID = e.WF_INST_UID \
                     WHERE e.TOKEN = ? AND e.STATE = 'running' AND i.STATE = 'running' \
                     AND e.LEASE_UNTIL >= ?{lock}"
                )),
                &[text(token), Value::Int(now)],
                &[AttrType::String; 6],
            )
            .await?;
        Ok(rows.into_iter().next().map(|row| {
            let mut c = Cells::new(row);
            TokenOwner {
                execution_id: c.text(),
                node_uid: c.text(),
                wf_inst_uid: c.text(),
                wf_uid: c.text(),
                version: c.text(),
                app_uid: c.text(),
            }
        }))
    }

    /// The key of a value: `(app, workflow, instance or '', key)`.
    fn value_key(owner: &TokenOwner, scope: Scope, key: &str) -> [Value; 4] {
        [
            text(&owner.app_uid),
            text(&owner.wf_uid),
            text(match scope {
                Scope::Workflow => "",
                Scope::Instance => &owner.wf_inst_uid,
            }),
            text(key),
        ]
    }

    /// `put` / `instancePut`. An instance value is also the instance's `vars`.
    pub async fn wf_put(
        &self,
        f: &CallbackFields<'_>,
        scope: Scope,
        key: &str,
        value: &Json,
        now: i64,
    ) -> Result<Callback> {
        self.wf_write(f, scope, key, Change::Put(value.clone()), now)
            .await
    }

    /// `incrementAndGet` / `instanceIncrementAndGet`: adds 1 atomically (a missing key becomes
    /// 1); a stored value that is not a 64-bit integer, or one at `i64::MAX`, is refused.
    pub async fn wf_increment(
        &self,
        f: &CallbackFields<'_>,
        scope: Scope,
        key: &str,
        now: i64,
    ) -> Result<Callback> {
        self.wf_write(f, scope, key, Change::Increment, now).await
    }

    /// A callback that writes, in a transaction of its own that commits only when it answers
    /// `Ok`: on SQLite a job of the batching writer (sharing a commit with the jobs queued
    /// beside it), elsewhere a write transaction of the pool, tried again on a lock conflict.
    async fn wf_write(
        &self,
        f: &CallbackFields<'_>,
        scope: Scope,
        key: &str,
        change: Change,
        now: i64,
    ) -> Result<Callback> {
        if let Some(writer) = self.db.writer() {
            let store = self.clone();
            let fields = OwnedFields::from(f);
            let key = key.to_string();
            let done = writer
                .run(move |w: &mut crate::WriteConn<'_>| {
                    let answer = crate::finish_now(store.wf_change(
                        w,
                        &fields.fields(),
                        scope,
                        &key,
                        &change,
                        now,
                    ))?;
                    match answer {
                        Callback::Ok(v) => Ok(Callback::Ok(v)),
                        refused => Err(Undone::Answer(refused)),
                    }
                })
                .await;
            return match done {
                Ok(answer) | Err(Undone::Answer(answer)) => Ok(answer),
                Err(Undone::Store(e)) => Err(e),
            };
        }
        retrying(|| async {
            let mut tx = self.db.begin_write().await?;
            let answer = self
                .wf_change(&mut tx.raw(), f, scope, key, &change, now)
                .await?;
            if matches!(answer, Callback::Ok(_)) {
                tx.commit().await?;
            }
            Ok(answer)
        })
        .await
    }

    /// The body of [`Store::wf_write`], inside its transaction.
    async fn wf_change(
        &self,
        conn: &mut impl crate::Exec,
        f: &CallbackFields<'_>,
        scope: Scope,
        key: &str,
        change: &Change,
        now: i64,
    ) -> Result<Callback> {
        let Some(owner) = self
            .wf_token_owner(conn, f.token, now, true)
            .await?
            .filter(|o| o.matches(f))
        else {
            return Ok(Callback::InvalidToken);
        };
        let next = |v: Option<&Json>| -> std::result::Result<i64, ()> {
            match v {
                None => Ok(1),
                Some(v) => v.as_i64().and_then(|n| n.checked_add(1)).ok_or(()),
            }
        };
        let key_params = Self::value_key(&owner, scope, key);
        let answer = match (scope, change) {
            (Scope::Workflow, Change::Put(value)) => {
                let mut params = key_params.to_vec();
                params.push(json_text(value));
                conn.execute(
                    &self.wf_sql(
                        "INSERT INTO {vals} (APP_UID, WF_UID, WF_INST_UID, VALUE_KEY, CONTENT) \
                         VALUES (?, ?, ?, ?, ?) ON CONFLICT (APP_UID, WF_UID, WF_INST_UID, \
                         VALUE_KEY) DO UPDATE SET CONTENT = excluded.CONTENT",
                    ),
                    &params,
                )
                .await?;
                Ok(Json::Null)
            }
            (Scope::Instance, Change::Put(value)) => {
                self.wf_update_vars(conn, &owner.wf_inst_uid, |vars| {
                    vars.insert(key.to_string(), value.clone());
                    Ok(Json::Null)
                })
                .await?
            }
            (Scope::Workflow, Change::Increment) => {
                // The row exists (holding 0 if new) and is locked before it is read, so
                // concurrent callers on any node queue on it.
                let mut params = key_params.to_vec();
                params.push(text("0"));
                let created = conn
                    .execute(
                        &self.wf_sql(
                            "INSERT INTO {vals} (APP_UID, WF_UID, WF_INST_UID, VALUE_KEY, CONTENT) \
                             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        ),
                        &params,
                    )
                    .await?;
                let lock = if self.dialect() == Dialect::Sqlite {
                    ""
                } else {
                    " FOR UPDATE"
                };
                let rows = conn
                    .fetch_all(
                        &self.wf_sql(&format!(
                            "SELECT CONTENT FROM {{vals}} WHERE APP_UID = ? AND WF_UID = ? AND \
                             WF_INST_UID = ? AND VALUE_KEY = ?{lock}"
                        )),
                        &key_params,
                        &[AttrType::String],
                    )
                    .await?;
                let current = rows.into_iter().next().map(|r| Cells::new(r).json());
                let current = if created == 1 { None } else { current };
                match next(current.as_ref()) {
                    Ok(n) => {
                        let mut params = vec![text(&n.to_string())];
                        params.extend(key_params);
                        conn.execute(
                            &self.wf_sql(
                                "UPDATE {vals} SET CONTENT = ? WHERE APP_UID = ? AND WF_UID = ? \
                                 AND WF_INST_UID = ? AND VALUE_KEY = ?",
                            ),
                            &params,
                        )
                        .await?;
                        Ok(Json::from(n))
                    }
                    Err(()) => Err(()),
                }
            }
            (Scope::Instance, Change::Increment) => {
                self.wf_update_vars(conn, &owner.wf_inst_uid, |vars| {
                    let n = next(vars.get(key))?;
                    vars.insert(key.to_string(), Json::from(n));
                    Ok(Json::from(n))
                })
                .await?
            }
        };
        Ok(match answer {
            Ok(v) => Callback::Ok(v),
            // A refused increment changed nothing: the row it may have made held a number.
            Err(()) => Callback::NotANumber,
        })
    }

    /// Reads, changes and writes an instance's `vars` (the row is locked by the write
    /// transaction: SQLite's writer, PostgreSQL's `FOR UPDATE`).
    async fn wf_update_vars<T>(
        &self,
        conn: &mut impl crate::Exec,
        wf_inst_uid: &str,
        change: impl FnOnce(&mut serde_json::Map<String, Json>) -> std::result::Result<T, ()>,
    ) -> Result<std::result::Result<T, ()>> {
        let lock = if self.dialect() == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let rows = conn
            .fetch_all(
                &self.wf_sql(&format!(
                    "SELECT VARS FROM {{inst}} WHERE WF_INST_UID = ?{lock}"
                )),
                &[text(wf_inst_uid)],
                &[AttrType::String],
            )
            .await?;
        let mut vars = match rows.into_iter().next().map(|r| Cells::new(r).json()) {
            Some(Json::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let out = match change(&mut vars) {
            Ok(v) => v,
            Err(()) => return Ok(Err(())),
        };
        conn.execute(
            &self.wf_sql("UPDATE {inst} SET VARS = ? WHERE WF_INST_UID = ?"),
            &[json_text(&Json::Object(vars)), text(wf_inst_uid)],
        )
        .await?;
        Ok(Ok(out))
    }

    /// `get` / `instanceGet`: the value, or `null` when there is none.
    pub async fn wf_get(
        &self,
        f: &CallbackFields<'_>,
        scope: Scope,
        key: &str,
        now: i64,
    ) -> Result<Callback> {
        let mut conn = self.db.acquire().await?;
        let mut raw = conn.raw();
        let Some(owner) = self
            .wf_token_owner(&mut raw, f.token, now, false)
            .await?
            .filter(|o| o.matches(f))
        else {
            return Ok(Callback::InvalidToken);
        };
        let value = match scope {
            Scope::Workflow => {
                let rows = raw
                    .fetch_all(
                        &self.wf_sql(
                            "SELECT CONTENT FROM {vals} WHERE APP_UID = ? AND WF_UID = ? AND \
                             WF_INST_UID = ? AND VALUE_KEY = ?",
                        ),
                        &Self::value_key(&owner, scope, key),
                        &[AttrType::String],
                    )
                    .await?;
                rows.into_iter()
                    .next()
                    .map_or(Json::Null, |r| Cells::new(r).json())
            }
            Scope::Instance => {
                let rows = raw
                    .fetch_all(
                        &self.wf_sql("SELECT VARS FROM {inst} WHERE WF_INST_UID = ?"),
                        &[text(&owner.wf_inst_uid)],
                        &[AttrType::String],
                    )
                    .await?;
                match rows.into_iter().next().map(|r| Cells::new(r).json()) {
                    Some(Json::Object(mut m)) => m.remove(key).unwrap_or(Json::Null),
                    _ => Json::Null,
                }
            }
        };
        Ok(Callback::Ok(value))
    }
}

impl Store {
    /// On PostgreSQL, calls `wake` whenever any node queues an execution (`LISTEN`); returns
    /// when the connection fails (the caller listens again). On SQLite there is nothing to
    /// listen to (one process writes; it wakes itself): returns at once.
    pub async fn wf_listen(&self, wake: impl Fn() + Send) -> Result<()> {
        let crate::db::Db::Postgres(pool) = &self.db else {
            return Ok(());
        };
        // A connection of its own, not one of the pool's: it is held for good.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        listener.listen(WF_CHANNEL).await?;
        loop {
            listener.recv().await?;
            wake();
        }
    }

    /// Every app's workflow definitions and roles.json, as loaded: `(app, path, text)`.
    pub async fn wf_app_files(&self) -> Result<Vec<(String, String, String)>> {
        let rows = self
            .db
            .fetch_all(
                &portable(
                    self.dialect(),
                    &format!(
                        "SELECT APP_UID, PATH, CONTENT FROM {} WHERE PATH LIKE 'workflows/%' \
                         OR PATH = 'roles.json' ORDER BY APP_UID, PATH",
                        self.t("io_app_files")
                    ),
                ),
                &[],
                &[AttrType::String; 3],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut c = Cells::new(r);
                (c.text(), c.text(), c.text())
            })
            .collect())
    }
}

/// Micros since the epoch as the wire's ISO-8601 UTC time (six fraction digits, `Z`).
pub fn iso_micros(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros).map(|t| query::value::format_datetime(&t))
}
