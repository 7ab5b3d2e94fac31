//! Workflows through the real server, on both databases, against task servers run on loopback:
//! node types and edge rules, the task protocol, retries, timeouts, cancel, idempotent start,
//! grants, the six callbacks with every scope and token rule, schedules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::helpers::{Kind, Login, TestApp, TestDb, assert_envelope};
use crate::on_all;

/// What the task server saw: each request's `Idempotency-Key` and body.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<(String, Value)>>,
    /// Calls per (route, instance).
    counts: Mutex<HashMap<(String, String), u32>>,
}

#[derive(Clone)]
struct Tasks {
    seen: Arc<Seen>,
    /// `/hold` announces each call here and answers when released.
    held: mpsc::UnboundedSender<Value>,
    release: Arc<Notify>,
}

/// A task server on loopback. Routes: `/ok` answers `{"done": true, "n": input.n}`; `/fail2`
/// fails the first two calls of an instance; `/fail` always answers 500; `/slow` answers after
/// two seconds; `/hold` waits for [`TaskServer::release`]; `/text` answers non-JSON text.
struct TaskServer {
    base: String,
    seen: Arc<Seen>,
    held: mpsc::UnboundedReceiver<Value>,
    release: Arc<Notify>,
}

impl TaskServer {
    async fn start() -> TaskServer {
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = Tasks {
            seen: Arc::default(),
            held: tx,
            release: Arc::new(Notify::new()),
        };
        async fn record(t: &Tasks, route: &str, headers: &HeaderMap, body: &Value) -> u32 {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            t.seen.calls.lock().unwrap().push((key, body.clone()));
            let inst = body["wfInstUid"].as_str().unwrap_or("").to_string();
            let mut counts = t.seen.counts.lock().unwrap();
            let n = counts.entry((route.to_string(), inst)).or_default();
            *n += 1;
            *n
        }
        let app = Router::new()
            .route(
                "/ok",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "ok", &h, &b).await;
                        axum::Json(json!({"done": true, "n": b["input"]["n"]}))
                    },
                ),
            )
            .route(
                "/fail2",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        let n = record(&t, "fail2", &h, &b).await;
                        if n <= 2 {
                            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"try": n})))
                        } else {
                            (StatusCode::OK, axum::Json(json!({"try": n})))
                        }
                    },
                ),
            )
            .route(
                "/fail",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "fail", &h, &b).await;
                        (StatusCode::SERVICE_UNAVAILABLE, "down for good")
                    },
                ),
            )
            .route(
                "/slow",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "slow", &h, &b).await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        axum::Json(json!({"late": true}))
                    },
                ),
            )
            .route(
                "/text",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "text", &h, &b).await;
                        "plain words"
                    },
                ),
            )
            .route(
                "/count",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "count", &h, &b).await;
                        let url = format!("{}/v1/wf/incrementAndGet", b["callbackUrl"].as_str().unwrap());
                        let r = reqwest::Client::new()
                            .post(url)
                            .json(&cb(&b, "total", None))
                            .send()
                            .await
                            .unwrap();
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap();
                        // The callback's whole answer too, for a failure to show it.
                        axum::Json(json!({"n": v["value"], "status": status, "answer": v}))
                    },
                ),
            )
            .route(
                "/hold",
                post(
                    |State(t): State<Tasks>, h: HeaderMap, axum::Json(b): axum::Json<Value>| async move {
                        record(&t, "hold", &h, &b).await;
                        let released = t.release.notified();
                        tokio::pin!(released);
                        // Registered before the call is announced, so a release cannot be missed.
                        released.as_mut().enable();
                        let _ = t.held.send(b.clone());
                        released.await;
                        axum::Json(json!({"held": true}))
                    },
                ),
            )
            .with_state(tasks.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TaskServer {
            base: format!("http://{addr}"),
            seen: tasks.seen,
            held: rx,
            release: tasks.release,
        }
    }

    /// The next call `/hold` received (its body: token and all).
    async fn next_held(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(20), self.held.recv())
            .await
            .expect("a task call within 20 s")
            .expect("task server running")
    }

    fn release_all(&self) {
        // `notify_waiters` wakes every call waiting now.
        self.release.notify_waiters();
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.seen.calls.lock().unwrap().clone()
    }
}

/// The `flows` app: its workflows, with task URLs on `tasks`.
fn write_app(dir: &Path, tasks: &str, extra: &[(&str, Value)]) {
    let write = |path: &str, v: &Value| {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    };
    write(
        "app.json",
        &json!({"appUid": "flows", "name": "Workflow tests"}),
    );
    let mut workflows = vec![
        (
            "branch",
            json!({"wfUid": "branch", "version": "1", "start": "check",
              "nodes": [
                {"nodeUid": "check", "type": "script",
                 "code": "vars.ok = input.salary > 0; vars.user = session.userName(); return {ok: vars.ok, twice: input.salary * 2};"},
                {"nodeUid": "good", "type": "end"},
                {"nodeUid": "bad", "type": "end", "outcome": "failed"}],
              "edges": [
                {"from": "check", "to": "good", "when": "output.ok && vars.ok"},
                {"from": "check", "to": "bad"}]}),
        ),
        (
            "stuck",
            json!({"wfUid": "stuck", "version": "1", "start": "a",
              "nodes": [{"nodeUid": "a", "type": "script", "code": "return 1;"},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "a", "to": "z", "when": "output > 1"}]}),
        ),
        (
            "loop",
            json!({"wfUid": "loop", "version": "1", "start": "inc",
              "nodes": [{"nodeUid": "inc", "type": "script", "code": "vars.i = (vars.i || 0) + 1;"},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "inc", "to": "inc", "when": "vars.i < 5"},
                        {"from": "inc", "to": "z"}]}),
        ),
        (
            "throws",
            json!({"wfUid": "throws", "version": "1", "start": "a",
              "nodes": [{"nodeUid": "a", "type": "script", "code": "throw new Error('boom');",
                         "retry": {"attempts": 2}},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "a", "to": "z"}]}),
        ),
        (
            "task",
            json!({"wfUid": "task", "version": "7", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/ok")},
                        {"nodeUid": "yes", "type": "end"},
                        {"nodeUid": "no", "type": "end", "outcome": "failed"}],
              "edges": [{"from": "t", "to": "yes", "when": "output.done && output.n === input.n"},
                        {"from": "t", "to": "no"}]}),
        ),
        (
            "text",
            json!({"wfUid": "text", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/text")},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "z", "when": "output === null"}]}),
        ),
        (
            "retry",
            json!({"wfUid": "retry", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/fail2"),
                         "retry": {"attempts": 3, "backoffMs": 50}},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "z"}]}),
        ),
        (
            "down",
            json!({"wfUid": "down", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/fail"),
                         "retry": {"attempts": 2, "backoffMs": 10}},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "z"}]}),
        ),
        (
            "slow",
            json!({"wfUid": "slow", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/slow"),
                         "timeoutMs": 300},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "z"}]}),
        ),
        (
            "hold",
            json!({"wfUid": "hold", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/hold")},
                        {"nodeUid": "after", "type": "script", "code": "return vars;"},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "after"}, {"from": "after", "to": "z"}]}),
        ),
        (
            "count",
            json!({"wfUid": "count", "version": "1", "start": "t",
              "nodes": [{"nodeUid": "t", "type": "task", "url": format!("{tasks}/count")},
                        {"nodeUid": "z", "type": "end"}],
              "edges": [{"from": "t", "to": "z"}]}),
        ),
        (
            "nostart",
            json!({"wfUid": "nostart", "version": "1", "start": "z",
              "nodes": [{"nodeUid": "z", "type": "end"}]}),
        ),
    ];
    workflows.extend(extra.iter().map(|(n, v)| (*n, v.clone())));
    // Cloud functions that start workflows from inside their transaction.
    std::fs::create_dir_all(dir.join("functions")).unwrap();
    std::fs::write(
        dir.join("functions/starts.js"),
        r#"
export async function go(arg) {
  const started = await db.startWorkflow(arg.wf, arg.input, arg.opts);
  if (arg.fail) throw new UserError("changed my mind");
  return started;
}
export async function twice() {
  const a = await db.startWorkflow("loop", {});
  const b = await db.startWorkflow("loop");
  return [a.wfInstUid, b.wfInstUid];
}
export async function tryDenied(arg) {
  try { await db.startWorkflow(arg.wf, {}); return "started"; } catch (e) { return e.message; }
}
export async function badInput() {
  try { await db.startWorkflow("loop", [1]); return "started"; } catch (e) { return e.message; }
}
"#,
    )
    .unwrap();
    for (name, def) in &workflows {
        write(&format!("workflows/{name}.json"), def);
    }
    let all: serde_json::Map<String, Value> = workflows
        .iter()
        .filter(|(n, _)| *n != "nostart")
        .map(|(n, _)| (n.to_string(), json!(["start", "view"])))
        .collect();
    write(
        "roles.json",
        &json!({"roles": [
            {"roleUid": "runner", "workflows": all, "functions": {"starts": ["*"]}},
            {"roleUid": "starter", "workflows": {"branch": ["start"]}},
        ]}),
    );
}

struct Fx {
    app: TestApp,
    tasks: TaskServer,
    admin: Login,
    dir: tempfile::TempDir,
}

async fn spawn_with(
    kind: Kind,
    extra: &[(&str, Value)],
    f: impl FnOnce(&mut server::Config),
) -> Fx {
    let tasks = TaskServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_app(dir.path(), &tasks.base, extra);
    let db = TestDb::new(kind).await;
    let mut config = server::Config {
        app_dirs: vec![dir.path().to_path_buf()],
        body_limit_bytes: 4 << 20,
        ..db.config()
    };
    config.workflows.poll_ms = 200;
    f(&mut config);
    let app = TestApp::spawn_on(db, config).await;
    app.state
        .store
        .grant_role("cloudio", "admin", "flows", "runner", "test")
        .await
        .unwrap();
    let admin = app.admin().await;
    Fx {
        app,
        tasks,
        admin,
        dir,
    }
}

async fn spawn(kind: Kind) -> Fx {
    spawn_with(kind, &[], |_| {}).await
}

impl Fx {
    async fn post(&self, login: &Login, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .app
            .client
            .post(self.app.url(&format!("{path}?csrf={}", login.csrf)))
            .header("Authorization", format!("Bearer {}", login.jwt))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn start(&self, wf: &str, input: Value) -> String {
        let (status, b) = self
            .post(
                &self.admin,
                "/v1/wf/start",
                &json!({"appUid": "flows", "wfUid": wf, "input": input}),
            )
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["status"], "OK");
        b["wfInstUid"].as_str().unwrap().to_string()
    }

    async fn instance(&self, inst: &str) -> Value {
        let (status, b) = self
            .post(&self.admin, "/v1/wf/instance", &json!({"wfInstUid": inst}))
            .await;
        assert_eq!(status, 200, "{b}");
        b["instance"].clone()
    }

    /// Waits until the instance is no longer running; returns it.
    async fn finished(&self, inst: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let i = self.instance(inst).await;
            if i["state"] != "running" {
                return i;
            }
            assert!(Instant::now() < deadline, "still running: {i}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A callback: status and the body's raw text.
    async fn callback_text(&self, path: &str, body: &Value) -> (u16, String) {
        let r = self
            .app
            .client
            .post(self.app.url(&format!("/v1/wf/{path}")))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn callback(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.callback_text(path, body).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    async fn stop(self) {
        self.tasks.release_all();
        self.app.stop().await;
    }
}

/// A callback body for the task call `held`, with `key` (and `value`).
fn cb(held: &Value, key: &str, value: Option<Value>) -> Value {
    let mut b = json!({
        "wfUid": held["wfUid"], "wfInstUid": held["wfInstUid"], "version": held["version"],
        "token": held["token"], "nodeUid": held["nodeUid"], "executionId": held["executionId"],
        "key": key,
    });
    if let Some(v) = value {
        b["value"] = v;
    }
    b
}

fn invalid_token_body(token: &str) -> String {
    format!(
        "{{\"status\": \"ERROR\", \"code\": 403, \"title\": \"Invalid Request\", \"message\": \"Invalid token: `{token}`!\"}}"
    )
}

fn nodes(inst: &Value) -> Vec<String> {
    inst["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["nodeUid"].as_str().unwrap().to_string())
        .collect()
}

on_all!(script_nodes_edges_and_end_nodes, |kind| async move {
    let fx = spawn(kind).await;
    let inst = fx.start("branch", json!({"salary": 10})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "completed", "{i}");
    assert_eq!(i["wfUid"], "branch");
    assert_eq!(i["wfInstUid"], inst.as_str());
    assert_eq!(i["version"], "1");
    assert_eq!(i["input"], json!({"salary": 10}));
    // Script changes to vars are saved; the script ran as the user who started it.
    assert_eq!(i["vars"], json!({"ok": true, "user": "admin"}));
    assert_eq!(i["createdBy"], "admin");
    assert!(i["creationDate"].as_str().unwrap().ends_with('Z'), "{i}");
    assert!(i.get("error").is_none(), "{i}");
    assert_eq!(nodes(&i), ["check", "good"]);
    let check = &i["executions"][0];
    assert_eq!(check["state"], "completed");
    assert_eq!(check["attempt"], 1);
    assert_eq!(check["output"], json!({"ok": true, "twice": 20}));
    assert!(check["startedAt"].is_string() && check["finishedAt"].is_string());
    // The second edge (no `when`) is taken when the first is false; an end node may fail.
    let inst = fx.start("branch", json!({"salary": -1})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "failed", "{i}");
    assert_eq!(nodes(&i), ["check", "bad"]);
    assert_eq!(i["vars"]["ok"], false);
    fx.stop().await;
});

on_all!(no_edge_taken_fails_and_cycles_run, |kind| async move {
    let fx = spawn(kind).await;
    let inst = fx.start("stuck", json!({})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "failed");
    assert!(
        i["error"]
            .as_str()
            .unwrap()
            .contains("no edge taken from node `a`"),
        "{i}"
    );
    assert_eq!(i["executions"][0]["output"], 1);
    // A cycle: `inc` runs until its condition lets the instance go on.
    let inst = fx.start("loop", json!({})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "completed", "{i}");
    assert_eq!(i["vars"], json!({"i": 5}));
    assert_eq!(nodes(&i), ["inc", "inc", "inc", "inc", "inc", "z"]);
    // The server that completed a step claimed the next one in the same commit (a chain runs
    // without a claim or wake-up per step): every execution after the first was queued and
    // started at the same instant, by the same server.
    let chained = column(
        &fx.app,
        &format!(
            "SELECT CLAIMED_BY FROM {{exec}} WHERE WF_INST_UID = '{inst}' AND STARTED_AT = QUEUED_AT"
        ),
    )
    .await;
    assert_eq!(chained.len(), 5, "{chained:?}");
    assert!(chained.iter().all(|o| o == &chained[0]), "{chained:?}");
    fx.stop().await;
});

on_all!(a_throwing_script_is_retried_then_fails, |kind| async move {
    let fx = spawn(kind).await;
    let inst = fx.start("throws", json!({})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "failed");
    let error = i["error"].as_str().unwrap();
    assert!(
        error.starts_with("a: ") && error.contains("boom"),
        "{error}"
    );
    let ex = i["executions"].as_array().unwrap();
    assert_eq!(ex.len(), 2, "{i}");
    assert_eq!(ex[0]["attempt"], 1);
    assert_eq!(ex[1]["attempt"], 2);
    assert!(ex.iter().all(|e| e["state"] == "failed"));
    assert_ne!(ex[0]["executionId"], ex[1]["executionId"]);
    fx.stop().await;
});

on_all!(task_protocol, |kind| async move {
    let fx = spawn(kind).await;
    let inst = fx.start("task", json!({"n": 42})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "completed", "{i}");
    assert_eq!(nodes(&i), ["t", "yes"]);
    let t = &i["executions"][0];
    assert_eq!(t["output"], json!({"done": true, "n": 42}));
    let calls = fx.tasks.calls();
    assert_eq!(calls.len(), 1);
    let (key, body) = &calls[0];
    assert_eq!(key, t["executionId"].as_str().unwrap(), "Idempotency-Key");
    assert_eq!(body["wfUid"], "task");
    assert_eq!(body["wfInstUid"], inst.as_str());
    assert_eq!(body["version"], "7");
    assert_eq!(body["nodeUid"], "t");
    assert_eq!(body["executionId"], t["executionId"]);
    assert!(body["token"].as_str().unwrap().len() >= 32, "{body}");
    assert_eq!(body["input"], json!({"n": 42}));
    assert_eq!(body["vars"], json!({}));
    assert_eq!(body["callbackUrl"], fx.app.base.as_str());
    // The token of a completed execution no longer works.
    let (status, text) = fx.callback_text("get", &cb(body, "k", None)).await;
    assert_eq!(status, 403);
    assert_eq!(text, invalid_token_body(body["token"].as_str().unwrap()));
    // A 2xx answer that is not JSON completes with a null output.
    let inst = fx.start("text", json!({})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "completed", "{i}");
    assert_eq!(i["executions"][0]["output"], Value::Null);
    fx.stop().await;
});

on_all!(
    retries_get_new_execution_ids_and_tokens,
    |kind| async move {
        let fx = spawn(kind).await;
        let inst = fx.start("retry", json!({})).await;
        let i = fx.finished(&inst).await;
        assert_eq!(i["state"], "completed", "{i}");
        let ex = i["executions"].as_array().unwrap();
        assert_eq!(nodes(&i), ["t", "t", "t", "z"]);
        for (n, e) in ex[..3].iter().enumerate() {
            assert_eq!(e["attempt"], n as i64 + 1);
        }
        assert_eq!(ex[0]["state"], "failed");
        assert!(
            ex[0]["error"].as_str().unwrap().contains("answered 500"),
            "{}",
            ex[0]
        );
        assert_eq!(ex[1]["state"], "failed");
        assert_eq!(ex[2]["state"], "completed");
        assert_eq!(ex[2]["output"], json!({"try": 3}));
        // Backoff: 50 ms, then 100 ms.
        let at = |e: &Value, f: &str| {
            chrono::DateTime::parse_from_rfc3339(e[f].as_str().unwrap()).unwrap()
        };
        assert!(
            at(&ex[1], "startedAt") - at(&ex[0], "finishedAt")
                >= chrono::Duration::milliseconds(50)
        );
        assert!(
            at(&ex[2], "startedAt") - at(&ex[1], "finishedAt")
                >= chrono::Duration::milliseconds(100)
        );
        let calls = fx.tasks.calls();
        let ids: std::collections::HashSet<&str> = calls.iter().map(|(k, _)| k.as_str()).collect();
        let tokens: std::collections::HashSet<&str> = calls
            .iter()
            .map(|(_, b)| b["token"].as_str().unwrap())
            .collect();
        assert_eq!(
            (ids.len(), tokens.len()),
            (3, 3),
            "new ids and tokens per attempt"
        );
        // The first attempt's token is dead.
        let (status, text) = fx.callback_text("get", &cb(&calls[0].1, "k", None)).await;
        assert_eq!(status, 403);
        assert_eq!(
            text,
            invalid_token_body(calls[0].1["token"].as_str().unwrap())
        );
        // Attempts run out: the instance fails with the last error.
        let inst = fx.start("down", json!({})).await;
        let i = fx.finished(&inst).await;
        assert_eq!(i["state"], "failed");
        assert_eq!(nodes(&i), ["t", "t"]);
        let error = i["error"].as_str().unwrap();
        assert!(
            error.contains("answered 503") && error.contains("down for good"),
            "{error}"
        );
        fx.stop().await;
    }
);

on_all!(
    a_task_that_times_out_fails_and_its_token_dies,
    |kind| async move {
        let fx = spawn(kind).await;
        let started = Instant::now();
        let inst = fx.start("slow", json!({})).await;
        let i = fx.finished(&inst).await;
        assert!(
            started.elapsed() < Duration::from_millis(1900),
            "did not wait for the answer"
        );
        assert_eq!(i["state"], "failed");
        assert!(
            i["error"]
                .as_str()
                .unwrap()
                .contains("no answer within 300 ms"),
            "{i}"
        );
        let calls = fx.tasks.calls();
        let (status, _) = fx
            .callback("put", &cb(&calls[0].1, "k", Some(json!(1))))
            .await;
        assert_eq!(status, 403);
        fx.stop().await;
    }
);

on_all!(
    cancel_stops_the_token_and_ignores_the_late_answer,
    |kind| async move {
        let mut fx = spawn(kind).await;
        let inst = fx.start("hold", json!({})).await;
        let held = fx.tasks.next_held().await;
        let (status, b) = fx.callback("put", &cb(&held, "k", Some(json!("v")))).await;
        assert_eq!((status, &b), (200, &json!({"status": "OK"})));
        let (status, b) = fx
            .post(&fx.admin, "/v1/wf/cancel", &json!({"wfInstUid": inst}))
            .await;
        assert_eq!((status, &b), (200, &json!({"status": "OK"})));
        let (status, text) = fx.callback_text("get", &cb(&held, "k", None)).await;
        assert_eq!(status, 403);
        assert_eq!(text, invalid_token_body(held["token"].as_str().unwrap()));
        fx.tasks.release_all();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let i = fx.instance(&inst).await;
        assert_eq!(i["state"], "cancelled", "{i}");
        assert_eq!(nodes(&i), ["t"], "the late answer queued nothing");
        assert_eq!(i["executions"][0]["state"], "failed");
        assert_eq!(i["executions"][0]["error"], "cancelled");
        // Cancelling again changes nothing.
        let (status, _) = fx
            .post(&fx.admin, "/v1/wf/cancel", &json!({"wfInstUid": inst}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(fx.instance(&inst).await["state"], "cancelled");
        fx.stop().await;
    }
);

on_all!(idempotent_start, |kind| async move {
    let fx = spawn(kind).await;
    let start = |key: &'static str| {
        let fx = &fx;
        async move {
            let (status, b) = fx
                .post(
                    &fx.admin,
                    "/v1/wf/start",
                    &json!({"appUid": "flows", "wfUid": "branch", "input": {"salary": 1},
                            "idempotencyKey": key}),
                )
                .await;
            assert_eq!(status, 200, "{b}");
            assert_eq!(b["version"], "1");
            b["wfInstUid"].as_str().unwrap().to_string()
        }
    };
    let a = start("order-1").await;
    let b = start("order-1").await;
    let c = start("order-2").await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Concurrent starts with one key: one instance.
    let all = futures_util::future::join_all((0..8).map(|_| start("order-3"))).await;
    assert!(all.iter().all(|x| x == &all[0]), "{all:?}");
    fx.finished(&a).await;
    fx.finished(&c).await;
    fx.finished(&all[0]).await;
    fx.stop().await;
});

on_all!(
    grants_decide_who_starts_views_and_cancels,
    |kind| async move {
        let fx = spawn(kind).await;
        fx.app.create_user("sam", "sam-password-1").await;
        let sam = fx.app.login("sam", "sam-password-1").await;
        let start = json!({"appUid": "flows", "wfUid": "branch", "input": {"salary": 1}});
        let (status, b) = fx.post(&sam, "/v1/wf/start", &start).await;
        assert_envelope(status, &b, 403);
        // An unknown workflow is answered the same.
        let (status, b) = fx
            .post(
                &fx.admin,
                "/v1/wf/start",
                &json!({"appUid": "flows", "wfUid": "nope", "input": {}}),
            )
            .await;
        assert_envelope(status, &b, 403);
        // A workflow without a grant to any of the user's roles.
        let (status, b) = fx
            .post(
                &fx.admin,
                "/v1/wf/start",
                &json!({"appUid": "flows", "wfUid": "nostart", "input": {}}),
            )
            .await;
        assert_envelope(status, &b, 403);
        // `start` without `view`.
        fx.app
            .state
            .store
            .grant_role("cloudio", "sam", "flows", "starter", "test")
            .await
            .unwrap();
        let sam = fx.app.login("sam", "sam-password-1").await;
        let (status, b) = fx.post(&sam, "/v1/wf/start", &start).await;
        assert_eq!(status, 200, "{b}");
        let inst = b["wfInstUid"].as_str().unwrap();
        let (status, b) = fx
            .post(&sam, "/v1/wf/instance", &json!({"wfInstUid": inst}))
            .await;
        assert_envelope(status, &b, 403);
        let i = fx.finished(inst).await;
        assert_eq!(i["createdBy"], "sam");
        assert_eq!(i["vars"]["user"], "sam", "the script ran as its starter");
        let (status, b) = fx
            .post(&sam, "/v1/wf/cancel", &json!({"wfInstUid": inst}))
            .await;
        assert_eq!(status, 200, "{b}");
        // An unknown instance is a 404; a malformed body a 400; no session a 401.
        let (status, b) = fx
            .post(&fx.admin, "/v1/wf/instance", &json!({"wfInstUid": "nope"}))
            .await;
        assert_envelope(status, &b, 404);
        let (status, b) = fx
            .post(&fx.admin, "/v1/wf/start", &json!({"appUid": "flows"}))
            .await;
        assert_envelope(status, &b, 400);
        let r = fx
            .app
            .client
            .post(fx.app.url("/v1/wf/start"))
            .json(&start)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        fx.stop().await;
    }
);

on_all!(
    callbacks_with_every_scope_and_json_type,
    |kind| async move {
        let mut fx = spawn(kind).await;
        let one = fx.start("hold", json!({})).await;
        let a = fx.tasks.next_held().await;
        let two = fx.start("hold", json!({})).await;
        let b = fx.tasks.next_held().await;
        let (a, b) = if a["wfInstUid"] == one.as_str() {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(b["wfInstUid"], two.as_str());
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-3),
            json!(1.5),
            json!(9007199254740993i64),
            json!("text with \"quotes\" and ünïcödé"),
            json!([]),
            json!([1, "two", {"three": [3]}]),
            json!({}),
            json!({"nested": {"x": [true, null]}}),
        ];
        for (n, v) in values.iter().enumerate() {
            let key = format!("k{n}");
            for (put, get) in [("put", "get"), ("instancePut", "instanceGet")] {
                let (status, body) = fx.callback(put, &cb(&a, &key, Some(v.clone()))).await;
                assert_eq!(
                    (status, &body),
                    (200, &json!({"status": "OK"})),
                    "{put} {v}"
                );
                let (status, body) = fx.callback(get, &cb(&a, &key, None)).await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body, json!({"status": "OK", "value": v}), "{get} {v}");
            }
        }
        // Missing keys read as null.
        for get in ["get", "instanceGet"] {
            let (status, body) = fx.callback(get, &cb(&a, "missing", None)).await;
            assert_eq!(
                (status, body),
                (200, json!({"status": "OK", "value": null}))
            );
        }
        // Workflow values are shared by instances; instance values are not.
        let (_, body) = fx.callback("get", &cb(&b, "k7", None)).await;
        assert_eq!(body["value"], values[7]);
        let (_, body) = fx.callback("instanceGet", &cb(&b, "k7", None)).await;
        assert_eq!(body["value"], Value::Null);
        // Instance values are the instance's vars.
        let i = fx.instance(&one).await;
        assert_eq!(i["vars"]["k11"], values[11]);
        // Counters: a missing key becomes 1; per workflow and per instance.
        for (path, other) in [("incrementAndGet", 3), ("instanceIncrementAndGet", 1)] {
            for n in 1..=2 {
                let (status, body) = fx.callback(path, &cb(&a, "count", None)).await;
                assert_eq!((status, body), (200, json!({"status": "OK", "value": n})));
            }
            let (_, body) = fx.callback(path, &cb(&b, "count", None)).await;
            assert_eq!(body["value"], other, "{path}");
            // A non-numeric value is a 400, and so is a float.
            for bad in [json!("x"), json!(1.5), json!(i64::MAX)] {
                let put = if path == "incrementAndGet" {
                    "put"
                } else {
                    "instancePut"
                };
                fx.callback(put, &cb(&a, "bad", Some(bad.clone()))).await;
                let (status, body) = fx.callback(path, &cb(&a, "bad", None)).await;
                assert_envelope(status, &body, 400);
            }
        }
        // The script node after the task sees what the task stored in vars.
        fx.tasks.release_all();
        let i = fx.finished(&one).await;
        assert_eq!(i["state"], "completed", "{i}");
        let after = &i["executions"][1];
        assert_eq!(after["nodeUid"], "after");
        assert_eq!(after["output"]["count"], 2);
        assert_eq!(after["output"]["k11"], values[11]);
        fx.finished(&two).await;
        fx.stop().await;
    }
);

on_all!(token_rules_and_body_checks, |kind| async move {
    let mut fx = spawn(kind).await;
    let inst = fx.start("hold", json!({})).await;
    let held = fx.tasks.next_held().await;
    let token = held["token"].as_str().unwrap().to_string();
    // Each of the six fields must match the token's execution.
    for field in ["wfUid", "wfInstUid", "version", "nodeUid", "executionId"] {
        for path in [
            "put",
            "get",
            "instancePut",
            "instanceGet",
            "incrementAndGet",
            "instanceIncrementAndGet",
        ] {
            let mut body = cb(&held, "k", Some(json!(1)));
            body[field] = json!("other");
            let (status, text) = fx.callback_text(path, &body).await;
            assert_eq!(status, 403, "{path} {field}");
            assert_eq!(text, invalid_token_body(&token), "{path} {field}");
        }
    }
    // An unknown token, quoted back (JSON-escaped).
    let mut body = cb(&held, "k", None);
    body["token"] = json!("no\"such");
    let (status, text) = fx.callback_text("get", &body).await;
    assert_eq!(status, 403);
    assert_eq!(
        text,
        "{\"status\": \"ERROR\", \"code\": 403, \"title\": \"Invalid Request\", \"message\": \"Invalid token: `no\\\"such`!\"}"
    );
    // Nothing was written by the refused calls.
    let (_, b) = fx.callback("get", &cb(&held, "k", None)).await;
    assert_eq!(b["value"], Value::Null);
    // Malformed bodies: 400.
    let mut missing = cb(&held, "k", None);
    missing.as_object_mut().unwrap().remove("executionId");
    let (status, b) = fx.callback("get", &missing).await;
    assert_envelope(status, &b, 400);
    let (status, b) = fx.callback("put", &cb(&held, "k", None)).await;
    assert_envelope(status, &b, 400);
    let (status, text) = fx.callback_text("get", &json!("not an object")).await;
    assert_eq!(status, 400, "{text}");
    // 1 MiB: a value of exactly the limit is stored, one byte more is a 413.
    let limit = 1 << 20;
    let fits = json!("x".repeat(limit - 2));
    let (status, b) = fx
        .callback("put", &cb(&held, "big", Some(fits.clone())))
        .await;
    assert_eq!(status, 200, "{b}");
    let (_, b) = fx.callback("get", &cb(&held, "big", None)).await;
    assert_eq!(b["value"], fits);
    let over = json!("x".repeat(limit - 1));
    for path in ["put", "instancePut"] {
        let (status, b) = fx
            .callback(path, &cb(&held, "big", Some(over.clone())))
            .await;
        assert_envelope(status, &b, 413);
    }
    fx.tasks.release_all();
    fx.finished(&inst).await;
    fx.stop().await;
});

on_all!(
    fifty_concurrent_increments_get_fifty_numbers,
    |kind| async move {
        let mut fx = spawn(kind).await;
        let inst = fx.start("hold", json!({})).await;
        let held = fx.tasks.next_held().await;
        for path in ["incrementAndGet", "instanceIncrementAndGet"] {
            let calls = (0..50).map(|_| {
                let client = fx.app.client.clone();
                let url = fx.app.url(&format!("/v1/wf/{path}"));
                let body = cb(&held, "n", None);
                tokio::spawn(async move {
                    let r = client.post(url).json(&body).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let b: Value = r.json().await.unwrap();
                    b["value"].as_i64().unwrap()
                })
            });
            let mut got: Vec<i64> = futures_util::future::join_all(calls)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            got.sort_unstable();
            assert_eq!(got, (1..=50).collect::<Vec<_>>(), "{path}");
        }
        fx.tasks.release_all();
        assert_eq!(fx.finished(&inst).await["vars"]["n"], 50);
        fx.stop().await;
    }
);

on_all!(schedules_fire_once_per_tick, |kind| async move {
    let every = json!({"wfUid": "tick", "version": "1", "start": "a",
        "nodes": [{"nodeUid": "a", "type": "script", "code": "return session.userName();"},
                  {"nodeUid": "z", "type": "end"}],
        "edges": [{"from": "a", "to": "z"}],
        "schedules": [{"cron": "* * * * * *", "input": {"from": "schedule"}}]});
    let fx = spawn_with(kind, &[("tick", every)], |_| {}).await;
    // On PostgreSQL a second server on the same database fires the same schedule.
    let second = match kind {
        Kind::Postgres | Kind::Mysql => {
            let mut config = fx.app.db.as_ref().unwrap().config();
            config.app_dirs = vec![fx.dir.path().to_path_buf()];
            Some(TestApp::spawn_with(config).await)
        }
        Kind::Sqlite => None,
    };
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let store = &fx.app.state.store;
    let sql = format!(
        "SELECT SCHEDULE_KEY, CREATED_BY, INPUT FROM {} WHERE WF_UID = 'tick'",
        store.t("io_wf_instances")
    );
    let rows = store
        .db
        .fetch_all(
            &sql,
            &[],
            &[
                query::AttrType::String,
                query::AttrType::String,
                query::AttrType::String,
            ],
        )
        .await
        .unwrap();
    let keys: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| match &r[0] {
            query::Value::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!((2..=5).contains(&rows.len()), "{rows:?}");
    assert_eq!(keys.len(), rows.len(), "one instance per firing: {rows:?}");
    assert!(
        rows.iter()
            .all(|r| r[1] == query::Value::Text("system".into())),
        "{rows:?}"
    );
    if let Some(second) = second {
        second.stop().await;
    }
    fx.stop().await;
});

on_all!(
    a_changed_definition_needs_a_new_version,
    |kind| async move {
        let fx = spawn(kind).await;
        let inst = fx.start("branch", json!({"salary": 1})).await;
        fx.finished(&inst).await;
        let dir = fx.dir.path();
        let path = dir.join("workflows/branch.json");
        let mut def: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        def["nodes"][0]["code"] = json!("return {ok: false};");
        std::fs::write(&path, def.to_string()).unwrap();
        let store = &fx.app.state.store;
        let src = server::apps::AppSource::read_dir(dir, store.dialect()).unwrap();
        let problems = server::apps::load_app(store, "cloudio", &src)
            .await
            .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("workflows/branch.json") && p.contains("version `1`")),
            "{problems:?}"
        );
        def["version"] = json!("2");
        std::fs::write(&path, def.to_string()).unwrap();
        let src = server::apps::AppSource::read_dir(dir, store.dialect()).unwrap();
        server::apps::load_app(store, "cloudio", &src)
            .await
            .unwrap();
        fx.stop().await;
    }
);

on_all!(metrics_show_workflow_figures, |kind| async move {
    let fx = spawn(kind).await;
    let inst = fx.start("branch", json!({"salary": 1})).await;
    fx.finished(&inst).await;
    let text = fx.app.metrics_text().await;
    assert!(
        text.contains("cloudio_wf_queue_depth{state=\"queued\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("cloudio_wf_executions_total{outcome=\"completed\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("cloudio_wf_instances_started_total 1"),
        "{text}"
    );
    fx.stop().await;
});

on_all!(
    an_execution_whose_server_died_runs_again_after_restart,
    |kind| async move {
        let lease = |c: &mut server::Config| {
            c.workflows.lease_ms = 300;
            c.workflows.poll_ms = 100;
        };
        // A server that runs nothing: the execution is claimed by a "server" that then dies.
        let mut fx = spawn_with(kind, &[], |c| {
            lease(c);
            c.workflows.concurrency = 0;
        })
        .await;
        let inst = fx.start("task", json!({"n": 1})).await;
        let store = fx.app.state.store.clone();
        let now = server::workflow::now_micros();
        let dead = store
            .wf_claim("dead-server", now, now + 200_000)
            .await
            .unwrap()
            .expect("the queued execution");
        assert_eq!((dead.attempt, dead.node_uid.as_str()), (1, "t"));
        // While its lease holds, the dead execution's token works.
        let held = json!({"wfUid": "task", "wfInstUid": inst, "version": "7", "nodeUid": "t",
                      "executionId": dead.execution_id, "token": dead.token});
        let (status, _) = fx.callback("put", &cb(&held, "k", Some(json!(1)))).await;
        assert_eq!(status, 200);
        // The lease runs out: the sweeper queues a new attempt and the old token dies.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let i = fx.instance(&inst).await;
            if i["executions"][0]["state"] == "failed" {
                assert!(
                    i["executions"][0]["error"]
                        .as_str()
                        .unwrap()
                        .contains("lease"),
                    "{i}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "not re-queued: {i}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, text) = fx.callback_text("get", &cb(&held, "k", None)).await;
        assert_eq!(status, 403);
        assert_eq!(text, invalid_token_body(&dead.token));
        // Restart with a runner: the new attempt runs and the instance completes.
        let db = fx.app.db.take().unwrap();
        fx.app.begin_shutdown();
        let _ = (&mut fx.app.handle).await;
        let mut config = server::Config {
            app_dirs: vec![fx.dir.path().to_path_buf()],
            body_limit_bytes: 4 << 20,
            ..db.config()
        };
        lease(&mut config);
        fx.app = TestApp::spawn_on(db, config).await;
        fx.admin = fx.app.admin().await;
        let i = fx.finished(&inst).await;
        assert_eq!(i["state"], "completed", "{i}");
        assert_eq!(nodes(&i), ["t", "t", "yes"]);
        let ex = i["executions"].as_array().unwrap();
        assert_eq!(
            (ex[0]["attempt"].clone(), ex[1]["attempt"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(ex[1]["state"], "completed");
        assert_ne!(ex[0]["executionId"], ex[1]["executionId"]);
        let calls = fx.tasks.calls();
        assert_eq!(calls.len(), 1, "only the new attempt called the task");
        assert_eq!(calls[0].0, ex[1]["executionId"].as_str().unwrap());
        assert_ne!(calls[0].1["token"].as_str().unwrap(), dead.token);
        fx.stop().await;
    }
);

on_all!(
    finished_instances_are_purged_after_their_retention,
    |kind| async move {
        let mut fx = spawn_with(kind, &[], |c| {
            c.workflows.keep_finished_days = 0;
            c.workflows.lease_ms = 300;
        })
        .await;
        // Only finished instances are purged, so its 404 below means it finished, then went.
        let done = fx.start("branch", json!({"salary": 1})).await;
        let running = fx.start("hold", json!({})).await;
        fx.tasks.next_held().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = fx
                .post(&fx.admin, "/v1/wf/instance", &json!({"wfInstUid": done}))
                .await;
            if status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "not purged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A running instance is kept.
        assert_eq!(fx.instance(&running).await["state"], "running");
        fx.stop().await;
    }
);

/// Which of the demo app's employees are named `Ann` or `ghost` (it is seeded with others).
async fn employees(fx: &Fx) -> Vec<String> {
    let (status, b) = fx
        .app
        .api(
            &fx.admin,
            &json!({"q": {"ds": "Employees", "query": {"limit": 10000}}}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    b["data"]["q"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .filter(|n| n == "Ann" || n == "ghost")
        .collect()
}

on_all!(
    script_node_writes_commit_with_their_step_or_not_at_all,
    |kind| async move {
        let rollback = json!({"wfUid": "rollback", "version": "1", "start": "w",
        "nodes": [{"nodeUid": "w", "type": "script",
                   "code": "await db.insertOne('Employees', {name: 'ghost', salary: 1}, {appUid: 'demo'}); throw new Error('after the write');"},
                  {"nodeUid": "z", "type": "end"}],
        "edges": [{"from": "w", "to": "z"}]});
        let fx = spawn_with(kind, &[("rollback", rollback)], |c| c.demo = true).await;
        // The demo app's own workflow: a check, then an insert through `db`, then the end.
        let (status, b) = fx
        .post(
            &fx.admin,
            "/v1/wf/start",
            &json!({"appUid": "demo", "wfUid": "hire", "input": {"name": " Ann ", "salary": 100}}),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        let i = fx.finished(b["wfInstUid"].as_str().unwrap()).await;
        assert_eq!(i["state"], "completed", "{i}");
        assert_eq!(nodes(&i), ["check", "insert", "done"]);
        assert!(i["vars"]["empId"].is_i64(), "{i}");
        assert_eq!(i["executions"][1]["output"]["name"], "Ann");
        assert_eq!(employees(&fx).await, ["Ann"]);
        let (_, b) = fx
            .post(
                &fx.admin,
                "/v1/wf/start",
                &json!({"appUid": "demo", "wfUid": "hire", "input": {"name": "", "salary": 100}}),
            )
            .await;
        let i = fx.finished(b["wfInstUid"].as_str().unwrap()).await;
        assert_eq!(i["state"], "failed");
        assert_eq!(nodes(&i), ["check", "rejected"]);
        // A node that writes and then throws leaves no row behind.
        let inst = fx.start("rollback", json!({})).await;
        let i = fx.finished(&inst).await;
        assert_eq!(i["state"], "failed");
        assert!(
            i["error"].as_str().unwrap().contains("after the write"),
            "{i}"
        );
        assert_eq!(employees(&fx).await, ["Ann"]);
        fx.stop().await;
    }
);

on_all!(
    scripts_start_workflows_only_when_they_commit,
    |kind| async move {
        let fx = spawn(kind).await;
        let call = |f: &'static str, arg: Value| {
            let fx = &fx;
            async move {
                fx.post(&fx.admin, &format!("/v1/fn/flows/starts/{f}"), &arg)
                    .await
            }
        };
        // Started from a function: the instance runs as the function's caller.
        let (status, b) = call("go", json!({"wf": "branch", "input": {"salary": 10}})).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["data"]["version"], "1", "{b}");
        let inst = b["data"]["wfInstUid"].as_str().unwrap().to_string();
        let i = fx.finished(&inst).await;
        assert_eq!(i["state"], "completed", "{i}");
        assert_eq!(i["input"], json!({"salary": 10}));
        assert_eq!(i["createdBy"], "admin");
        assert_eq!(i["vars"]["user"], "admin", "{i}");
        // `appUid` names the app explicitly.
        let (status, b) = call(
            "go",
            json!({"wf": "loop", "input": {}, "opts": {"appUid": "flows"}}),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        let looped = b["data"]["wfInstUid"].as_str().unwrap().to_string();
        assert_eq!(fx.finished(&looped).await["state"], "completed");
        // Two in one transaction: two instances.
        let (status, b) = call("twice", json!({})).await;
        assert_eq!(status, 200, "{b}");
        let two: Vec<String> = serde_json::from_value(b["data"].clone()).unwrap();
        assert_ne!(two[0], two[1]);
        for inst in &two {
            assert_eq!(fx.finished(inst).await["state"], "completed");
        }
        let before = column(
            &fx.app,
            "SELECT WF_INST_UID FROM {inst} ORDER BY WF_INST_UID",
        )
        .await;
        assert_eq!(before.len(), 4, "{before:?}");
        // A function that throws after starting one: rolled back, no instance, no execution.
        let (status, b) = call(
            "go",
            json!({"wf": "branch", "input": {"salary": 1}, "fail": true}),
        )
        .await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(b["message"], "changed my mind", "{b}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            column(
                &fx.app,
                "SELECT WF_INST_UID FROM {inst} ORDER BY WF_INST_UID"
            )
            .await,
            before
        );
        let execs = column(&fx.app, "SELECT WF_INST_UID FROM {exec}").await;
        assert!(execs.iter().all(|e| before.contains(e)), "{execs:?}");
        // Grants: a workflow without `start`, and an unknown one, are refused alike.
        for wf in ["nostart", "nope"] {
            let (status, b) = call("tryDenied", json!({"wf": wf})).await;
            assert_eq!(status, 200, "{b}");
            let msg = b["data"].as_str().unwrap();
            assert!(msg.contains("is not available to you"), "{msg}");
            assert!(msg.contains(wf), "{msg}");
        }
        let (status, b) = call("badInput", json!({})).await;
        assert_eq!(status, 200, "{b}");
        assert!(b["data"].as_str().unwrap().contains("input"), "{b}");
        fx.stop().await;
    }
);

/// A statement's first column as text, on the test's own database (through the server's store).
async fn column(app: &TestApp, sql: &str) -> Vec<String> {
    let store = &app.state.store;
    let sql = sql
        .replace("{inst}", &store.t("io_wf_instances"))
        .replace("{exec}", &store.t("io_wf_executions"));
    store
        .db
        .fetch_all(&sql, &[], &[query::AttrType::String])
        .await
        .unwrap()
        .into_iter()
        .map(|r| match &r[0] {
            query::Value::Text(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

on_all!(
    two_hundred_instances_complete_once_with_exact_counters,
    |kind| async move {
        let fx = spawn_with(kind, &[], |c| c.workflows.concurrency = 2).await;
        // On PostgreSQL a second server on the same database runs executions too.
        let second = match kind {
            Kind::Postgres | Kind::Mysql => {
                let mut config = fx.app.db.as_ref().unwrap().config();
                config.app_dirs = vec![fx.dir.path().to_path_buf()];
                Some(TestApp::spawn_with(config).await)
            }
            Kind::Sqlite => None,
        };
        let starts = (0..200).map(|_| fx.start("count", json!({})));
        let insts = futures_util::future::join_all(starts).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let running = column(
                &fx.app,
                "SELECT WF_INST_UID FROM {inst} WHERE STATE = 'running'",
            )
            .await;
            if running.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{} still running", running.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let completed = column(
            &fx.app,
            "SELECT WF_INST_UID FROM {inst} WHERE STATE = 'completed'",
        )
        .await;
        assert_eq!(completed.len(), 200);
        let mut want = insts.clone();
        want.sort();
        let mut got = completed;
        got.sort();
        assert_eq!(got, want);
        // Each instance: one execution of `t`, one of `z`, both completed; every task call was a
        // different execution.
        let ex = column(
            &fx.app,
            "SELECT EXECUTION_ID FROM {exec} WHERE STATE = 'completed' AND NODE_UID = 't'",
        )
        .await;
        assert_eq!(ex.len(), 200);
        let calls = fx.tasks.calls();
        let ids: std::collections::HashSet<&str> = calls.iter().map(|(k, _)| k.as_str()).collect();
        if calls.len() != 200 || ids.len() != 200 {
            // Say what happened: an execution called twice, or a failed attempt run again.
            let mut others = Vec::new();
            for col in ["EXECUTION_ID", "STATE", "ERROR"] {
                let sql = format!(
                    "SELECT {col} FROM {{exec}} WHERE NODE_UID = 't' AND STATE <> 'completed' \
                     ORDER BY EXECUTION_ID"
                );
                others.push(column(&fx.app, &sql).await);
            }
            panic!(
                "{} task calls for {} executions; executions of `t` not completed: {others:?}",
                calls.len(),
                ids.len()
            );
        }
        // The counter handed out 1..=200, each number once.
        let mut ns: Vec<i64> = column(&fx.app, "SELECT OUTPUT FROM {exec} WHERE NODE_UID = 't'")
            .await
            .iter()
            .map(|o| {
                serde_json::from_str::<Value>(o).unwrap()["n"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("a task got no number: {o}"))
            })
            .collect();
        ns.sort_unstable();
        assert_eq!(ns, (1..=200).collect::<Vec<_>>());
        if let Some(second) = second {
            let owners = column(&fx.app, "SELECT DISTINCT CLAIMED_BY FROM {exec}").await;
            assert_eq!(owners.len(), 2, "both servers ran executions: {owners:?}");
            second.stop().await;
        }
        fx.stop().await;
    }
);

/// PostgreSQL: a server that queues an execution wakes the others at once (`LISTEN/NOTIFY`),
/// not at their next poll. (On SQLite one process runs everything and wakes itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_other_servers_at_once() {
    // This server runs nothing; the second one polls only once a minute.
    let fx = spawn_with(Kind::Postgres, &[], |c| c.workflows.concurrency = 0).await;
    let mut config = fx.app.db.as_ref().unwrap().config();
    config.app_dirs = vec![fx.dir.path().to_path_buf()];
    config.workflows.poll_ms = 60_000;
    let runner = TestApp::spawn_with(config).await;
    // Let the runner reach its long sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let inst = fx.start("branch", json!({"salary": 1})).await;
    let i = fx.finished(&inst).await;
    assert_eq!(i["state"], "completed", "{i}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    runner.stop().await;
    fx.stop().await;
}

on_all!(
    instances_keep_the_version_they_started_on,
    |kind| async move {
        let mut fx = spawn(kind).await;
        let old = fx.start("hold", json!({})).await;
        let held = fx.tasks.next_held().await;
        assert_eq!(held["version"], "1");
        // Version 2 of `hold`: its `after` node answers differently.
        let dir = fx.dir.path();
        let path = dir.join("workflows/hold.json");
        let mut def: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        def["version"] = json!("2");
        def["nodes"][1]["code"] = json!("return 'version 2';");
        std::fs::write(&path, def.to_string()).unwrap();
        let store = &fx.app.state.store;
        let src = server::apps::AppSource::read_dir(dir, store.dialect()).unwrap();
        server::apps::load_app(store, "cloudio", &src)
            .await
            .unwrap();
        fx.app.state.engine.catalog.reload(store).await.unwrap();
        let (status, b) = fx
            .post(
                &fx.admin,
                "/v1/wf/start",
                &json!({"appUid": "flows", "wfUid": "hold", "input": {}}),
            )
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["version"], "2");
        let new = b["wfInstUid"].as_str().unwrap().to_string();
        fx.tasks.next_held().await;
        fx.tasks.release_all();
        let i = fx.finished(&old).await;
        assert_eq!(i["version"], "1");
        assert_eq!(
            i["executions"][1]["output"],
            json!({}),
            "version 1's `after`: {i}"
        );
        let i = fx.finished(&new).await;
        assert_eq!(i["version"], "2");
        assert_eq!(i["executions"][1]["output"], "version 2");
        fx.stop().await;
    }
);
