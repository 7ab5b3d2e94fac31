//! The workflow engine (spec section 7): starting instances, and the runner that claims queued
//! executions from the database and runs them (script nodes in the sandbox, task nodes over
//! HTTP, end nodes), each completion with its `vars` and the next node in one transaction.
//!
//! Invariants (absences):
//! - no state that matters lives only in memory: a queued or running execution is a row, so
//!   any server process can run it and a restarted one resumes it;
//! - nothing completes an execution except an update guarded by `STATE = 'running'`, so an
//!   execution completes at most once and a late answer (after a timeout, retry, cancel or a
//!   lost lease) changes nothing;
//! - no SQL here (that is `store::workflow`).

pub mod def;
mod runner;
pub mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use store::Store;
use store::workflow::{NewInstance, Started};
use tokio::sync::Notify;

use crate::engine::{Engine, Error, Principal, Result};
use def::WfDef;

/// Knobs of the engine (tests shorten them).
#[derive(Debug, Clone)]
pub struct WfSettings {
    /// How long a claimed execution is ours without a renewal (spec: 30 s).
    pub lease: Duration,
    /// How often the runner looks at the queue when nothing woke it.
    pub poll: Duration,
    /// Executions this process runs at once (0: none; it only starts and answers).
    pub concurrency: usize,
    /// How long finished instances are kept (spec: 7 days).
    pub keep_finished: Duration,
}

impl Default for WfSettings {
    fn default() -> Self {
        WfSettings {
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            concurrency: 64,
            keep_finished: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Re-runs of an execution whose lease ran out before the instance fails (spec: 3).
pub const MAX_RERUNS: i64 = 3;
/// Executions of one instance before it stops as failed (spec: 10,000).
pub const MAX_STEPS: i64 = 10_000;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WfMetrics {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub step_count: AtomicU64,
    pub step_micros: AtomicU64,
    pub started: AtomicU64,
}

/// The engine; clones share it.
#[derive(Clone)]
pub struct Workflows(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub engine: Engine,
    pub settings: WfSettings,
    pub metrics: WfMetrics,
    /// Wakes this process's runner (an execution was queued here, or a NOTIFY arrived).
    wake: Arc<Notify>,
    http: reqwest::Client,
    /// This process's name on the executions it claims.
    owner: String,
    /// The base URL tasks call back to.
    callback_url: Mutex<String>,
    /// Definitions by `(app, wfUid, version)` that are no longer current (instances keep the
    /// version they started on).
    old: Mutex<HashMap<(String, String, String), Arc<WfDef>>>,
}

impl std::ops::Deref for Workflows {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Workflows {
    pub fn new(store: Store, engine: Engine, settings: WfSettings) -> Workflows {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let wake = engine.workflow_wake.clone();
        Workflows(Arc::new(Inner {
            store,
            engine,
            settings,
            metrics: WfMetrics::default(),
            wake,
            http,
            owner: uuid::Uuid::new_v4().to_string(),
            callback_url: Mutex::new(String::new()),
            old: Mutex::default(),
        }))
    }

    /// Sets the base URL tasks are told to call back to (`callbackUrl`).
    pub fn set_callback_url(&self, url: String) {
        if let Ok(mut u) = self.callback_url.lock() {
            *u = url;
        }
    }

    fn callback_url(&self) -> String {
        self.callback_url
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }

    /// Wakes the runner: something was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The definition an instance runs: the current one if its version matches, else the one
    /// stored when an instance first started on that version.
    pub async fn definition(
        &self,
        app: &str,
        wf_uid: &str,
        version: &str,
    ) -> Result<Option<Arc<WfDef>>> {
        if let Some(def) = self.engine.catalog.get().workflow(app, wf_uid)
            && def.version == version
        {
            return Ok(Some(def));
        }
        let key = (app.to_string(), wf_uid.to_string(), version.to_string());
        if let Some(def) = self.old.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(def));
        }
        let Some(text) = self.store.wf_definition(app, wf_uid, version).await? else {
            return Ok(None);
        };
        let def = Arc::new(WfDef::parse(app, &text).map_err(Error::Internal)?);
        if let Ok(mut m) = self.old.lock() {
            m.insert(key, def.clone());
        }
        Ok(Some(def))
    }

    /// Starts an instance of `def` as `user_name`; with an idempotency key seen within 24 h
    /// (or a schedule firing already started), the earlier instance. Returns the instance and
    /// its version.
    pub async fn start(
        &self,
        org_uid: &str,
        user_name: &str,
        def: &WfDef,
        input: &Json,
        idempotency_key: Option<&str>,
        schedule_key: Option<&str>,
    ) -> Result<(String, String)> {
        let started = self
            .store
            .wf_start(&NewInstance {
                org_uid,
                app_uid: &def.app_uid,
                wf_uid: &def.wf_uid,
                version: &def.version,
                definition: &def.text,
                start_node: &def.start,
                input,
                user_name,
                idempotency_key,
                schedule_key,
                now: now_micros(),
            })
            .await?;
        Ok(match started {
            Started::New { wf_inst_uid } => {
                self.metrics.started.fetch_add(1, Ordering::Relaxed);
                self.engine.workflow_queued();
                (wf_inst_uid, def.version.clone())
            }
            Started::Existing {
                wf_inst_uid,
                version,
            } => (wf_inst_uid, version),
        })
    }

    /// Who a script of an instance runs as: its starter with their roles now, or `system`
    /// holding every role of the workflow's app (scheduled instances).
    async fn principal(&self, org_uid: &str, user_name: &str, app: &str) -> Result<Principal> {
        let roles = if user_name == SYSTEM_USER {
            self.engine
                .catalog
                .get()
                .app_roles(app)
                .into_iter()
                .map(|r| (app.to_string(), r))
                .collect()
        } else {
            self.store.user_roles(org_uid, user_name).await?
        };
        Ok(Principal {
            org_uid: org_uid.to_string(),
            user_name: user_name.to_string(),
            roles: Arc::new(roles),
            request_id: None,
        })
    }

    /// Starts the runner, the sweeper of lost leases, the schedules, the purge and (on
    /// PostgreSQL) the listener; they stop when the returned handles are aborted.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(runner::sweep(self.clone())),
            tokio::spawn(schedule::run(self.clone())),
        ];
        // Concurrency 0: this server starts and answers, others run the executions.
        if self.settings.concurrency > 0 {
            tasks.push(tokio::spawn(runner::run(self.clone())));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let w = me.clone();
                if let Err(e) = me.store.wf_listen(move || w.wake()).await {
                    tracing::warn!(error = %e, "workflow LISTEN failed; listening again");
                }
                if me.store.dialect() != query::Dialect::Postgres {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Anything queued while we were not listening.
                me.wake();
            }
        }));
        tasks
    }

    /// `(running, queued)` executions, completed and failed counts, and step latency, as
    /// Prometheus text.
    pub async fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (running, queued) = self.store.wf_queue_depth().await.unwrap_or((0, 0));
        let m = &self.metrics;
        let _ = writeln!(
            out,
            "# HELP cloudio_wf_queue_depth Workflow executions by state (all nodes).\n\
             # TYPE cloudio_wf_queue_depth gauge\n\
             cloudio_wf_queue_depth{{state=\"queued\"}} {queued}\n\
             cloudio_wf_queue_depth{{state=\"running\"}} {running}\n\
             # HELP cloudio_wf_executions_total Workflow executions finished here, by outcome.\n\
             # TYPE cloudio_wf_executions_total counter\n\
             cloudio_wf_executions_total{{outcome=\"completed\"}} {}\n\
             cloudio_wf_executions_total{{outcome=\"failed\"}} {}\n\
             # HELP cloudio_wf_instances_started_total Workflow instances started here.\n\
             # TYPE cloudio_wf_instances_started_total counter\n\
             cloudio_wf_instances_started_total {}\n\
             # HELP cloudio_wf_step_seconds Time from claim to completion of an execution.\n\
             # TYPE cloudio_wf_step_seconds summary\n\
             cloudio_wf_step_seconds_count {}\n\
             cloudio_wf_step_seconds_sum {}",
            m.completed.load(Ordering::Relaxed),
            m.failed.load(Ordering::Relaxed),
            m.started.load(Ordering::Relaxed),
            m.step_count.load(Ordering::Relaxed),
            m.step_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out
    }
}

/// The user scheduled instances run as.
pub const SYSTEM_USER: &str = "system";
