//! Workflow script nodes and edge conditions in the sandbox, as the instance's user. The
//! script's `db` calls run in a transaction begun at the first of them; the caller adds the
//! execution's completion to that same transaction and commits it, so a node's writes, its
//! `vars` and the next node are one commit.

use std::sync::Arc;

use query::Value;
use serde_json::{Value as Json, json};

use super::chain::{run_script, session_info};
use super::exec::Lazy;
use super::{Ctx, Engine, Principal, Result};

/// The transaction of a workflow script (begun at its first statement, if any).
pub struct ScriptTx<'d> {
    tx: Lazy<'d>,
    engine: &'d Engine,
    /// Instances the script started (`db.startWorkflow`): the runner is woken at commit.
    started: bool,
}

impl ScriptTx<'_> {
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> store::Result<u64> {
        store::Exec::execute(&mut self.tx, sql, params).await
    }

    /// Whether the script ran any statement: if not, there is nothing of its own to commit.
    pub fn began(&self) -> bool {
        self.tx.began()
    }

    pub async fn commit(self) -> store::Result<()> {
        self.tx.commit().await?;
        if self.started {
            self.engine.workflow_queued();
        }
        Ok(())
    }
}

impl Engine {
    /// Runs a workflow program (a script node, or a task node's edge choice) of `app` as
    /// `who`: `input` becomes the program's `query` global, and what it leaves there is the
    /// result. `wall`: the node's own time limit, if it has one.
    pub async fn run_workflow_script(
        &self,
        who: &Principal,
        app: &str,
        name: String,
        body: Arc<str>,
        input: Json,
        wall: Option<std::time::Duration>,
    ) -> (Result<Json>, ScriptTx<'_>) {
        let mut limits = self.limits(app).1;
        if let Some(wall) = wall {
            limits.wall = wall;
        }
        let execution = script::Execution {
            program: script::Program::Hook { body },
            name,
            request_id: None,
            session: session_info(who, app),
            input: json!({"query": input, "rows": [], "keys": []}),
            limits,
        };
        let mut ctx = Ctx::new(self, who);
        let mut tx = Lazy::new(&self.store.db);
        let out = run_script(&mut tx, &mut ctx, execution, None)
            .await
            .map(|mut out| out.get_mut("query").map(Json::take).unwrap_or(Json::Null));
        let started = ctx.started_workflows > 0;
        (
            out,
            ScriptTx {
                tx,
                engine: self,
                started,
            },
        )
    }
}
