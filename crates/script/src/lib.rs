//! The JavaScript sandbox: hooks and cloud functions run in QuickJS behind a narrow interface.
//!
//! ```text
//! compile(file, source, kind) -> JavaScript           (at app load: types stripped, syntax checked)
//! Pool::start(Execution) -> Running                   (runs it in a kept, frozen context)
//! Running::next() -> Event::Call(HostCall) | Event::Done(Result<Json, ScriptError>)
//! ```
//!
//! The caller serves every [`HostCall`] (the `db` API, `fetch`) itself and answers it; the
//! sandbox only forwards them. So this crate knows nothing of SQL, HTTP or grants.
//!
//! Invariants (absences):
//! - no file system, process, environment, network or timer is reachable from a script: the
//!   only way out of the sandbox is a [`HostCall`];
//! - nothing survives from one execution to the next: a kept context is frozen at creation
//!   and its per-execution globals are set and cleared around each run (a cloud-function call
//!   imports its modules afresh unless they can hold no state, see `modules`); a runtime that
//!   hit a limit or was left with queued work is discarded;
//! - a script never holds the caller's async thread for long: it starts there (no hand-off
//!   between threads) but moves to the pool's own threads at its first host call or after
//!   2 ms, and the wall clock bounds both its CPU time (an interrupt handler) and its waits on
//!   host calls.

mod compile;
mod convert;
mod modules;
mod sandbox;

use std::sync::Arc;
use std::time::Duration;

pub use compile::{Kind, TYPES_PACKAGE, compile};
pub use modules::Modules;
pub use sandbox::{Event, HostCall, Pool, PoolStats, Running};

use serde_json::Value as Json;

/// A script file that failed to load, with the line of the problem.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct CompileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Why an execution failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// `throw new UserError(msg)`: the message, exactly.
    #[error("{0}")]
    User(String),
    /// Anything else (an exception, a rejected promise, a limit): "<what>: <error>".
    #[error("{0}")]
    Script(String),
    /// A cloud function's module or export does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Every worker stayed busy for the whole wall-clock limit.
    #[error("all script workers are busy")]
    Busy,
}

/// Limits of one execution.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub wall: Duration,
    pub memory_bytes: usize,
    pub stack_bytes: usize,
    pub max_host_calls: u32,
}

impl Limits {
    pub const HOOK: Limits = Limits {
        wall: Duration::from_millis(1_000),
        memory_bytes: 64 << 20,
        stack_bytes: 512 << 10,
        max_host_calls: 100,
    };
    pub const FUNCTION: Limits = Limits {
        wall: Duration::from_millis(30_000),
        ..Limits::HOOK
    };
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A hook's compiled body; `input.globals` become the globals `query`, `rows`, `skipQuery`,
    /// `skipDML`, and the result is those globals as the hook left them.
    Hook { body: Arc<str> },
    /// `module`'s export `function`, called with `input.arg`; the result is its resolved value.
    Function {
        modules: Arc<Modules>,
        module: String,
        function: String,
    },
}

/// Who runs the script and what it sees; logged with every line the script writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub user_name: String,
    pub org_uid: String,
    pub app_uid: String,
    pub roles: Vec<String>,
}

/// One execution.
#[derive(Debug, Clone)]
pub struct Execution {
    pub program: Program,
    /// Names the script in errors and logs: `Employees.beforeInsert`, `payroll/calc.run`.
    pub name: String,
    pub request_id: Option<String>,
    pub session: SessionInfo,
    /// Hooks: `{"query": .., "rows": [..]}`; functions: `{"arg": ..}`. `keys`: the attributes
    /// `utils.toNewRow` removes besides WHO columns. A hook with `"rowsOnly": true` gives back
    /// only `rows` and `skipDML` (its caller has no use for the query it leaves).
    pub input: Json,
    pub limits: Limits,
}
