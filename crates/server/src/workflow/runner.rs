//! The runner: claims due executions while it has free slots, runs each in a task of its own
//! (renewing its lease meanwhile), and records how it ended together with what follows. The
//! sweeper re-queues executions whose lease ran out (their server died).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use store::workflow::{ChainClaim, Claimed, Completion, InstanceRow, Next};
use tokio::sync::Semaphore;

use super::def::{DEFAULT_TIMEOUT_MS, Node, NodeKind, WfDef};
use super::{MAX_RERUNS, MAX_STEPS, Workflows, now_micros};

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Claims and runs executions until the task is aborted.
pub(super) async fn run(wf: Workflows) {
    let slots = Arc::new(Semaphore::new(wf.settings.concurrency.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let now = now_micros();
        match wf
            .store
            .wf_claim(&wf.owner, now, now + micros(wf.settings.lease))
            .await
        {
            Ok(Some(claimed)) => {
                let wf = wf.clone();
                tokio::spawn(async move {
                    step(&wf, claimed).await;
                    drop(permit);
                    // A slot is free again, and the step may have queued the next node.
                    wf.wake();
                });
                continue;
            }
            Ok(None) => drop(permit),
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "claiming a workflow execution failed");
            }
        }
        // Nothing due: sleep until woken, the next due time, or the poll interval.
        let mut wait = wf.settings.poll;
        if let Ok(Some(due)) = wf.store.wf_next_due().await {
            let until = u64::try_from(due - now_micros()).unwrap_or(0);
            wait = wait.min(Duration::from_micros(until));
        }
        if wait.is_zero() {
            // Due but not claimable (another node holds it a moment): do not spin.
            wait = Duration::from_millis(5);
        }
        tokio::select! {
            _ = wf.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Re-queues executions whose lease ran out as new attempts (up to [`MAX_RERUNS`], then the
/// instance fails), and purges old finished instances now and then.
pub(super) async fn sweep(wf: Workflows) {
    let every = (wf.settings.lease / 3).max(Duration::from_millis(100));
    let mut last_purge: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = now_micros();
        match wf.store.wf_expired(now).await {
            Ok(lost) => {
                for c in lost {
                    let next = if c.reruns < MAX_RERUNS {
                        Next::Queue {
                            node_uid: c.node_uid.clone(),
                            attempt: c.attempt + 1,
                            tries: c.tries,
                            reruns: c.reruns + 1,
                            run_at: now,
                        }
                    } else {
                        Next::Finish {
                            state: "failed",
                            error: Some(format!(
                                "{}: its server stopped while it ran, {} times",
                                c.node_uid,
                                MAX_RERUNS + 1
                            )),
                        }
                    };
                    let done = Completion {
                        execution_id: c.execution_id.clone(),
                        wf_inst_uid: c.wf_inst_uid.clone(),
                        result: Err("the execution's lease ran out (its server stopped)".into()),
                        vars: None,
                        next,
                        now,
                        expired_before: Some(now),
                        claim: None,
                    };
                    match wf.store.wf_complete(&done).await {
                        Ok(true) => {
                            tracing::warn!(execution = %c.execution_id, node = %c.node_uid, "lease lost: running the node again");
                            wf.wake();
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "re-queueing a lost execution failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for lost workflow executions failed"),
        }
        // Every ten minutes, or as often as the retention asks when it is shorter.
        let purge_every = wf
            .settings
            .keep_finished
            .max(every)
            .min(Duration::from_secs(600));
        if last_purge.is_none_or(|t| t.elapsed() >= purge_every) {
            last_purge = Some(Instant::now());
            let before = now - micros(wf.settings.keep_finished);
            match wf.store.wf_purge(before, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(instances = n, "purged finished workflow instances"),
                Err(e) => tracing::warn!(error = %e, "purging workflow instances failed"),
            }
        }
    }
}

/// Runs one claimed execution to its end, renewing its lease meanwhile; then, while each step
/// claimed the next one of its instance on completing (a chain of nodes due at once), runs
/// that one too, in the same slot.
async fn step(wf: &Workflows, mut c: Claimed) {
    loop {
        let mut next = None;
        step_one(wf, &c, &mut next).await;
        match next {
            Some(n) => c = n,
            None => return,
        }
    }
}

async fn step_one(wf: &Workflows, c: &Claimed, next: &mut Option<Claimed>) {
    let started = Instant::now();
    // Renews the lease while the step runs; ends when the execution no longer runs here
    // (cancelled, or taken over after a lost lease): the step is then dropped, its HTTP call
    // or script abandoned and any open transaction rolled back.
    let lost = async {
        let every = wf.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let until = now_micros() + micros(wf.settings.lease);
            match wf.store.wf_renew(&c.execution_id, until).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "renewing a lease failed"),
            }
        }
    };
    let outcome = tokio::select! {
        outcome = run_step(wf, c, next) => outcome,
        () = lost => {
            tracing::info!(execution = %c.execution_id, "the execution no longer runs: abandoned");
            Ok(None)
        }
    };
    let m = &wf.metrics;
    match outcome {
        Ok(Some(true)) => m.completed.fetch_add(1, Ordering::Relaxed),
        Ok(Some(false)) => m.failed.fetch_add(1, Ordering::Relaxed),
        Ok(None) => 0,
        Err(e) => {
            tracing::error!(execution = %c.execution_id, error = %e, "a workflow step failed");
            0
        }
    };
    m.step_count.fetch_add(1, Ordering::Relaxed);
    m.step_micros.fetch_add(
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// What follows a node that completed with `edge` taken (`None`: none was).
fn after(inst: &InstanceRow, node: &Node, edge: Option<usize>, now: i64) -> Next {
    let Some(to) = edge.and_then(|i| node.edges.get(i)) else {
        return Next::Finish {
            state: "failed",
            error: Some(format!("no edge taken from node `{}`", node.uid)),
        };
    };
    if inst.steps >= MAX_STEPS {
        return Next::Finish {
            state: "failed",
            error: Some(format!("stopped after {MAX_STEPS} executions")),
        };
    }
    Next::Queue {
        node_uid: to.clone(),
        attempt: 1,
        tries: 1,
        reruns: 0,
        run_at: now,
    }
}

/// What follows a failed try: another after the backoff while tries remain, else the
/// instance fails with this error.
fn retry(c: &Claimed, node: &Node, error: &str, now: i64) -> Next {
    if c.tries < node.attempts {
        let factor = 1u64 << (c.tries - 1).clamp(0, 20);
        let backoff = node.backoff_ms.saturating_mul(factor).saturating_mul(1000);
        Next::Queue {
            node_uid: node.uid.clone(),
            attempt: c.attempt + 1,
            tries: c.tries + 1,
            reruns: c.reruns,
            run_at: now + i64::try_from(backoff).unwrap_or(i64::MAX / 2),
        }
    } else {
        Next::Finish {
            state: "failed",
            error: Some(format!("{}: {error}", node.uid)),
        }
    }
}

/// The edge a program chose (`{"edge": i}`, -1 for none).
fn chosen(out: &Json) -> Option<usize> {
    out.get("edge")
        .and_then(Json::as_i64)
        .and_then(|i| usize::try_from(i).ok())
}

/// Runs the step; `Some(true)` completed, `Some(false)` failed, `None` nothing recorded (the
/// execution no longer ran).
/// `next`: set to the instance's next execution when this step's completion claimed it.
async fn run_step(
    wf: &Workflows,
    c: &Claimed,
    next: &mut Option<Claimed>,
) -> crate::engine::Result<Option<bool>> {
    let Some(inst) = wf.store.wf_instance(&c.wf_inst_uid).await? else {
        return Ok(None);
    };
    if inst.state != "running" {
        return Ok(None);
    }
    let fail_instance = |error: String| Completion {
        execution_id: c.execution_id.clone(),
        wf_inst_uid: c.wf_inst_uid.clone(),
        result: Err(error.clone()),
        vars: None,
        next: Next::Finish {
            state: "failed",
            error: Some(error),
        },
        now: now_micros(),
        expired_before: None,
        claim: None,
    };
    let def = wf
        .definition(&inst.app_uid, &inst.wf_uid, &inst.version)
        .await?;
    let Some(node) = def.as_ref().and_then(|d| d.nodes.get(&c.node_uid)) else {
        let error = format!(
            "workflow `{}` version `{}` has no node `{}`",
            inst.wf_uid, inst.version, c.node_uid
        );
        wf.store.wf_complete(&fail_instance(error)).await?;
        return Ok(Some(false));
    };
    match &node.kind {
        NodeKind::End { failed } => {
            let done = Completion {
                execution_id: c.execution_id.clone(),
                wf_inst_uid: c.wf_inst_uid.clone(),
                result: Ok(Json::Null),
                vars: None,
                next: Next::Finish {
                    state: if *failed { "failed" } else { "completed" },
                    error: failed.then(|| format!("ended at node `{}`", node.uid)),
                },
                now: now_micros(),
                expired_before: None,
                claim: None,
            };
            Ok(wf.store.wf_complete(&done).await?.then_some(true))
        }
        NodeKind::Script { program } => run_script_node(wf, c, &inst, node, program, next).await,
        NodeKind::Task { url } => {
            // `def` is Some here: `node` came from it.
            let Some(def) = def.as_deref() else {
                return Ok(None);
            };
            run_task_node(wf, c, &inst, def, node, url, next).await
        }
    }
}

async fn run_script_node(
    wf: &Workflows,
    c: &Claimed,
    inst: &InstanceRow,
    node: &Node,
    program: &Arc<str>,
    next: &mut Option<Claimed>,
) -> crate::engine::Result<Option<bool>> {
    let who = wf
        .principal(&inst.org_uid, &inst.created_by, &inst.app_uid)
        .await?;
    let (out, mut tx) = wf
        .engine
        .run_workflow_script(
            &who,
            &inst.app_uid,
            format!("{}.{}", inst.wf_uid, node.uid),
            program.clone(),
            json!({"input": inst.input, "vars": inst.vars}),
            node.timeout_ms.map(Duration::from_millis),
        )
        .await;
    let now = now_micros();
    let done = match out {
        Ok(mut out) => Completion {
            execution_id: c.execution_id.clone(),
            wf_inst_uid: c.wf_inst_uid.clone(),
            result: Ok(out.get_mut("output").map(Json::take).unwrap_or(Json::Null)),
            vars: Some(match out.get_mut("vars").map(Json::take) {
                Some(v @ Json::Object(_)) => v,
                _ => json!({}),
            }),
            next: after(inst, node, chosen(&out), now),
            now,
            expired_before: None,
            claim: None,
        },
        Err(e) => {
            // The script's writes roll back; the failure is recorded on its own.
            drop(tx);
            let error = e.to_string();
            let done = Completion {
                execution_id: c.execution_id.clone(),
                wf_inst_uid: c.wf_inst_uid.clone(),
                result: Err(error.clone()),
                vars: None,
                next: retry(c, node, &error, now),
                now,
                expired_before: None,
                claim: None,
            };
            wf.store.wf_complete(&done).await?;
            if matches!(done.next, Next::Queue { .. }) {
                wf.wake();
            }
            return Ok(Some(false));
        }
    };
    let mut done = done;
    let chained = chain_claim(wf, c, &mut done);
    if !tx.began() {
        // Nothing of the script's own: the completion alone (on SQLite, batched with others).
        drop(tx);
        if !wf.store.wf_complete(&done).await? {
            return Ok(None);
        }
        *next = chained;
        return Ok(Some(true));
    }
    // The node's own writes, its vars and the next node: one commit (or none at all).
    for (sql, params, exactly_one) in wf.store.wf_completion_statements(&done) {
        let n = tx.execute(&sql, &params).await?;
        if exactly_one && n != 1 {
            return Ok(None);
        }
    }
    tx.commit().await?;
    *next = chained;
    Ok(Some(true))
}

async fn run_task_node(
    wf: &Workflows,
    c: &Claimed,
    inst: &InstanceRow,
    def: &WfDef,
    node: &Node,
    url: &str,
    next: &mut Option<Claimed>,
) -> crate::engine::Result<Option<bool>> {
    let body = json!({
        "wfUid": inst.wf_uid,
        "wfInstUid": inst.wf_inst_uid,
        "version": inst.version,
        "nodeUid": node.uid,
        "executionId": c.execution_id,
        "token": c.token,
        "input": inst.input,
        "vars": inst.vars,
        "callbackUrl": wf.callback_url(),
    });
    let timeout = Duration::from_millis(node.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let call = async {
        let resp = wf
            .http
            .post(url)
            .header("Idempotency-Key", &c.execution_id)
            .json(&body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {} ms", timeout.as_millis())
                } else {
                    format!("the task could not be reached: {e}")
                }
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else {
                format!("the task's answer could not be read: {e}")
            }
        })?;
        if !status.is_success() {
            let mut snippet: String = text.chars().take(200).collect();
            if snippet.len() < text.len() {
                snippet.push_str("...");
            }
            return Err(format!("the task answered {}: {snippet}", status.as_u16()));
        }
        Ok::<Json, String>(serde_json::from_str::<Json>(&text).unwrap_or(Json::Null))
    };
    let result: Result<Json, String> = call.await;
    let now = now_micros();
    let done = match result {
        Ok(output) => {
            let edge = match &node.choose {
                None => (!node.edges.is_empty()).then_some(0),
                Some(program) => {
                    // The task may have changed `vars` through instancePut meanwhile.
                    let vars = wf
                        .store
                        .wf_instance(&inst.wf_inst_uid)
                        .await?
                        .map_or(Json::Null, |i| i.vars);
                    let who = wf
                        .principal(&inst.org_uid, &inst.created_by, &inst.app_uid)
                        .await?;
                    let (out, tx) = wf
                        .engine
                        .run_workflow_script(
                            &who,
                            &def.app_uid,
                            format!("{}.{}.when", inst.wf_uid, node.uid),
                            program.clone(),
                            json!({"input": inst.input, "vars": vars, "output": output}),
                            None,
                        )
                        .await;
                    drop(tx);
                    match out {
                        Ok(out) => chosen(&out),
                        Err(e) => {
                            let error = format!("edge condition: {e}");
                            let done = Completion {
                                execution_id: c.execution_id.clone(),
                                wf_inst_uid: c.wf_inst_uid.clone(),
                                result: Err(error.clone()),
                                vars: None,
                                next: Next::Finish {
                                    state: "failed",
                                    error: Some(format!("{}: {error}", node.uid)),
                                },
                                now,
                                expired_before: None,
                                claim: None,
                            };
                            wf.store.wf_complete(&done).await?;
                            return Ok(Some(false));
                        }
                    }
                }
            };
            Completion {
                execution_id: c.execution_id.clone(),
                wf_inst_uid: c.wf_inst_uid.clone(),
                result: Ok(output),
                vars: None,
                next: after(inst, node, edge, now),
                now,
                expired_before: None,
                claim: None,
            }
        }
        Err(error) => Completion {
            execution_id: c.execution_id.clone(),
            wf_inst_uid: c.wf_inst_uid.clone(),
            next: retry(c, node, &error, now),
            result: Err(error),
            vars: None,
            now,
            expired_before: None,
            claim: None,
        },
    };
    let mut done = done;
    let chained = chain_claim(wf, c, &mut done);
    let ok = done.result.is_ok();
    if !wf.store.wf_complete(&done).await? {
        return Ok(None);
    }
    *next = chained;
    Ok(Some(ok))
}

/// Claims `done`'s next execution for this server when it is due at once: the step that
/// follows then runs here without a claim transaction or a wake-up.
fn chain_claim(wf: &Workflows, c: &Claimed, done: &mut Completion) -> Option<Claimed> {
    let Next::Queue {
        node_uid,
        attempt,
        tries,
        reruns,
        run_at,
    } = &done.next
    else {
        return None;
    };
    if *run_at > done.now {
        return None;
    }
    let claim = ChainClaim {
        execution_id: uuid::Uuid::new_v4().to_string(),
        token: uuid::Uuid::new_v4().simple().to_string(),
        owner: wf.owner.clone(),
        lease_until: done.now + micros(wf.settings.lease),
    };
    let claimed = Claimed {
        execution_id: claim.execution_id.clone(),
        token: claim.token.clone(),
        wf_inst_uid: c.wf_inst_uid.clone(),
        node_uid: node_uid.clone(),
        attempt: *attempt,
        tries: *tries,
        reruns: *reruns,
    };
    done.claim = Some(claim);
    Some(claimed)
}
