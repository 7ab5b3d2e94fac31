//! The datasource engine: everything between a caller and the store. `/v1/api`, the `db`
//! object of scripts and cloud functions all come here.
//!
//! ```text
//! plan    resolve each alias, check grants, parse, compile      (plan.rs, catalog.rs)
//! execute one executor over a pool transaction or SQLite's writer (exec.rs)
//! chain   preQuery -> SQL -> postQuery; before* -> writes -> after* (chain.rs, builtin.rs)
//! host    a script's db calls, run as the calling user          (host.rs)
//! ```
//!
//! Invariants (absences):
//! - no HTTP here: no status codes, no headers; errors are [`Error`], mapped once by `server`;
//! - no SQL text for the platform's tables (that is `store`'s), none built from client input;
//! - each path exists once: the executor hides whether a request runs on a pool connection,
//!   a transaction or SQLite's writer thread.

pub mod builtin;
pub mod catalog;
mod chain;
mod error;
mod exec;
mod host;
mod plan;
mod workflow;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use chrono::{DateTime, Utc};
use query::CompileOptions;
use serde_json::{Map, Value as Json};
use store::Store;

pub use catalog::{Action, Catalog, CatalogCell, Hook, Hooks, Resolve};
pub(crate) use chain::json_size;
pub use error::{Error, Result};
pub use exec::Statement;
pub use workflow::ScriptTx;

use crate::auth::password::Hasher;

/// Who is asking: the user, their roles and the request they came with.
#[derive(Debug, Clone)]
pub struct Principal {
    pub org_uid: String,
    pub user_name: String,
    /// `(appUid, roleUid)` pairs.
    pub roles: Arc<Vec<(String, String)>>,
    pub request_id: Option<String>,
}

impl Principal {
    /// The user's roles in one app.
    pub fn roles_in(&self, app: &str) -> Vec<String> {
        self.roles
            .iter()
            .filter(|(a, _)| a == app)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// Limits and switches of the engine, from configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_limit: u64,
    pub max_limit: u64,
    pub max_depth: usize,
    pub hook_limits: script::Limits,
    pub function_limits: script::Limits,
    /// Per-app overrides: app -> (hook limits, function limits).
    pub app_limits: std::collections::HashMap<String, (script::Limits, script::Limits)>,
    /// Hosts `db.fetch` may reach (exact host names, or `host:port`).
    pub fetch_allow: Vec<String>,
    pub fetch_timeout: std::time::Duration,
    pub fetch_max_bytes: usize,
    /// Rows a request may ask for across its query aliases (the sum of their limits).
    pub request_max_rows: u64,
    /// Bytes (about) a request's answer may hold across its aliases.
    pub request_max_bytes: usize,
    /// Requests of one user handled at once by the engine; more wait their turn.
    pub user_max_inflight: usize,
}

/// What a `/v1/api` request produced.
#[derive(Debug, Default)]
pub struct Answer {
    /// alias -> result, in the request's alias order.
    pub data: Map<String, Json>,
    /// Users whose sessions or roles the request changed (their cached tokens must go).
    pub touched: Vec<(String, String)>,
    /// Every statement the request ran, in order, when it was traced.
    pub statements: Option<Vec<Statement>>,
}

/// Counters of SQLite's writer thread as the engine uses it, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub queued: std::sync::atomic::AtomicU64,
    pub jobs: std::sync::atomic::AtomicU64,
    pub micros: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`WriterCounters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    /// Requests queued on or running in the writer now.
    pub queued: u64,
    /// Requests the writer answered.
    pub jobs: u64,
    /// Their time from queueing to answer, in microseconds.
    pub micros: u64,
}

/// The engine; clones share it.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub catalog: CatalogCell,
    pub hasher: Hasher,
    pub scripts: script::Pool,
    pub settings: Settings,
    http: reqwest::Client,
    users: std::sync::Mutex<HashMap<(String, String), Arc<Semaphore>>>,
    /// Wakes this process's workflow runner: shared with it, signalled after a request that
    /// started instances (`db.startWorkflow`) commits.
    pub workflow_wake: Arc<tokio::sync::Notify>,
    /// Signalled with `workflow_wake` when this process queued work other nodes may run: on
    /// MySQL with Redis, a task of `cluster` tells them (PostgreSQL has `NOTIFY` for that).
    pub workflow_queued: tokio::sync::Notify,
    pub writer: WriterCounters,
}

/// One of a user's in-flight slots; dropping it gives it back (and forgets the user when
/// nothing of theirs is running).
pub(crate) struct UserTurn<'e> {
    engine: &'e Engine,
    key: (String, String),
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Ok(mut users) = self.engine.users.lock()
            && let Some(sem) = users.get(&self.key)
            && Arc::strong_count(sem) == 1
            && sem.available_permits() == self.engine.settings.user_max_inflight
        {
            users.remove(&self.key);
        }
    }
}

impl std::ops::Deref for Engine {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Engine {
    pub fn new(store: Store, hasher: Hasher, settings: Settings, workers: usize) -> Engine {
        let http = reqwest::Client::builder()
            // A script must not be walked to an address the allow-list does not name.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.fetch_timeout)
            .build()
            .unwrap_or_default();
        Engine(Arc::new(Inner {
            store,
            catalog: CatalogCell::default(),
            hasher,
            scripts: script::Pool::new(workers),
            settings,
            http,
            users: Default::default(),
            workflow_wake: Arc::default(),
            workflow_queued: tokio::sync::Notify::new(),
            writer: WriterCounters::default(),
        }))
    }

    /// Work was queued here (instances started): wakes this process's runner and, through
    /// `workflow_queued`, the other nodes'.
    pub fn workflow_queued(&self) {
        self.workflow_wake.notify_one();
        self.workflow_queued.notify_one();
    }

    /// Waits for one of the user's `user_max_inflight` slots: one user's burst queues behind
    /// itself and leaves the pool's connections to everybody else.
    pub(crate) async fn user_turn(&self, who: &Principal) -> UserTurn<'_> {
        let key = (who.org_uid.clone(), who.user_name.clone());
        let sem = self.users.lock().ok().map(|mut users| {
            users
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.user_max_inflight)))
                .clone()
        });
        let permit = match sem {
            Some(sem) => sem.acquire_owned().await.ok(),
            None => None,
        };
        UserTurn {
            engine: self,
            key,
            permit,
        }
    }

    /// The writer's figures now.
    pub fn writer_stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            queued: self.writer.queued.load(Relaxed),
            jobs: self.writer.jobs.load(Relaxed),
            micros: self.writer.micros.load(Relaxed),
        }
    }

    /// The limits of `app`'s hooks and functions.
    pub fn limits(&self, app: &str) -> (script::Limits, script::Limits) {
        let s = &self.settings;
        s.app_limits
            .get(app)
            .copied()
            .unwrap_or((s.hook_limits, s.function_limits))
    }

    fn compile_options(&self, today: chrono::NaiveDate) -> CompileOptions {
        let mut opts = CompileOptions::new(self.store.dialect(), today);
        opts.default_limit = self.settings.default_limit;
        opts.max_limit = self.settings.max_limit;
        opts.max_depth = self.settings.max_depth;
        opts
    }

    /// A `/v1/api` body: every alias planned (so a bad alias fails before any SQL), then posts in
    /// order and queries after them, in one transaction, hooks included.
    pub async fn api(&self, who: &Principal, body: &Map<String, Json>) -> Result<Answer> {
        chain::run_request(self, who, body, false).await
    }

    /// [`Engine::api`], recording every statement it runs (the developer's SQL echo).
    pub async fn api_traced(&self, who: &Principal, body: &Map<String, Json>) -> Result<Answer> {
        chain::run_request(self, who, body, true).await
    }

    /// Calls an app's cloud function with one argument, in a transaction of its own.
    pub async fn call_function(
        &self,
        who: &Principal,
        app: &str,
        module: &str,
        function: &str,
        arg: Json,
    ) -> Result<Json> {
        chain::run_function(self, who, app, module, function, arg, false)
            .await
            .map(|(out, _)| out)
    }

    /// [`Engine::call_function`], also returning every statement its `db` calls ran.
    pub async fn call_function_traced(
        &self,
        who: &Principal,
        app: &str,
        module: &str,
        function: &str,
        arg: Json,
    ) -> Result<(Json, Vec<Statement>)> {
        chain::run_function(self, who, app, module, function, arg, true)
            .await
            .map(|(out, log)| (out, log.unwrap_or_default()))
    }

    /// Calls a cloud function on the platform's own behalf (SSO's `create-user`): no role
    /// grant is checked, since no client chose to call it. A missing module or function is
    /// [`Error::NotFound`].
    pub async fn call_platform_function(
        &self,
        who: &Principal,
        app: &str,
        module: &str,
        function: &str,
        arg: Json,
    ) -> Result<Json> {
        chain::run_function_ungranted(self, who, app, module, function, arg, false)
            .await
            .map(|(out, _)| out)
    }
}

/// The state of one request as it goes through the chain.
pub(crate) struct Ctx<'a> {
    pub engine: &'a Engine,
    pub who: &'a Principal,
    /// The catalog as the request found it: swapped by a patch meanwhile, a request still
    /// finishes on the metadata it started with.
    pub catalog: std::sync::Arc<Catalog>,
    pub opts: CompileOptions,
    pub now: DateTime<Utc>,
    pub touched: Vec<(String, String)>,
    /// `(hash, secret)` of API keys this request inserted: the secret goes in the answer only.
    pub api_secrets: Vec<(String, String)>,
    /// How many hooks are running, one inside another's `db` call.
    pub depth: usize,
    /// `(app, datasource)` whose hooks are running: their `db` calls skip those hooks.
    pub running: Vec<(String, String)>,
    /// Workflow instances `db.startWorkflow` queued in this request's transaction: the
    /// runner is woken once it commits.
    pub started_workflows: usize,
}

impl<'a> Ctx<'a> {
    /// After the request's transaction committed: wakes the workflow runner if this request
    /// started instances.
    pub fn committed(&self) {
        if self.started_workflows > 0 {
            self.engine.workflow_queued();
        }
    }

    pub fn new(engine: &'a Engine, who: &'a Principal) -> Ctx<'a> {
        let now = Utc::now();
        Ctx {
            engine,
            who,
            catalog: engine.catalog.get(),
            opts: engine.compile_options(now.date_naive()),
            now,
            touched: Vec::new(),
            api_secrets: Vec::new(),
            depth: 0,
            running: Vec::new(),
            started_workflows: 0,
        }
    }
}
