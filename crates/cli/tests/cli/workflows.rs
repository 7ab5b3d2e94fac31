//! Workflow durability with the real binary: the server SIGKILLed while a task runs; after a
//! restart the execution's lease runs out, it runs again as a new attempt (new id and token),
//! and the instance completes, the first attempt never completing.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::helpers::*;
use crate::on_both;

/// One HTTP request's body (the head is skipped; the body is `Content-Length` bytes).
async fn read_body(sock: &mut TcpStream) -> Value {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the request ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&buf[head_end..head_end + len]).unwrap()
}

/// A task endpoint on loopback: the first call is never answered (its server is killed
/// meanwhile); later calls answer `{"ok": true}`. Every call's body is sent on the channel.
async fn task_server() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut calls = 0;
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            calls += 1;
            let first = calls == 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = read_body(&mut sock).await;
                let _ = tx.send(body);
                if first {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    return;
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}";
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/task"), rx)
}

async fn post(base: &str, l: &Login, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}{path}?csrf={}", l.csrf))
        .header("Authorization", format!("Bearer {}", l.jwt))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn next_call(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a task call within 30 s")
        .unwrap()
}

on_both!(
    sigkill_while_a_task_runs_reruns_it_as_a_new_attempt,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let (url, mut calls) = task_server().await;
        let app = tempfile::tempdir().unwrap();
        let write = |path: &str, v: Value| {
            let p = app.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v.to_string()).unwrap();
        };
        write("app.json", json!({"appUid": "flows", "name": "Flows"}));
        write(
            "roles.json",
            json!({"roles": [{"roleUid": "runner", "workflows": {"crash": ["start", "view"]}}]}),
        );
        write(
            "workflows/crash.json",
            json!({"wfUid": "crash", "version": "1", "start": "t",
                   "nodes": [{"nodeUid": "t", "type": "task", "url": url},
                             {"nodeUid": "z", "type": "end"}],
                   "edges": [{"from": "t", "to": "z"}]}),
        );
        let config = app.path().join("cloudio.toml");
        std::fs::write(&config, "[workflows]\nlease_ms = 1500\npoll_ms = 200\n").unwrap();
        let dir = app.path().display().to_string();
        let config = config.display().to_string();
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--app-dir",
            &dir,
            "--config",
            &config,
        ];
        let env = [("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)];
        let server = Proc::serve(&db, &args, &env).await;
        db.run(
            &["role", "grant"],
            &["--user", "admin", "--app", "flows", "--role", "runner"],
            None,
        )
        .await
        .ok();
        let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let (status, b) = post(
            &server.base(),
            &admin,
            "/v1/wf/start",
            &json!({"appUid": "flows", "wfUid": "crash", "input": {"n": 1}}),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        let inst = b["wfInstUid"].as_str().unwrap().to_string();
        let first = next_call(&mut calls).await;
        assert_eq!(first["wfInstUid"], inst.as_str());

        // Killed while the task runs.
        let mut server = server;
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(10)).await;

        let server = Proc::serve(&db, &args, &env).await;
        let (status, body) = login(&server.base(), "admin", ADMIN_PASSWORD).await;
        let admin = logged_in(status, body);
        let second = next_call(&mut calls).await;
        assert_eq!(second["wfInstUid"], inst.as_str());
        assert_ne!(second["executionId"], first["executionId"]);
        assert_ne!(second["token"], first["token"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let i = loop {
            let (status, b) = post(
                &server.base(),
                &admin,
                "/v1/wf/instance",
                &json!({"wfInstUid": inst}),
            )
            .await;
            assert_eq!(status, 200, "{b}");
            if b["instance"]["state"] != "running" {
                break b["instance"].clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "still running: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(i["state"], "completed", "{i}");
        let ex = i["executions"].as_array().unwrap();
        let summary: Vec<(String, i64, String)> = ex
            .iter()
            .map(|e| {
                (
                    e["nodeUid"].as_str().unwrap().to_string(),
                    e["attempt"].as_i64().unwrap(),
                    e["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("t".to_string(), 1, "failed".to_string()),
                ("t".to_string(), 2, "completed".to_string()),
                ("z".to_string(), 1, "completed".to_string()),
            ],
            "{i}"
        );
        assert_eq!(ex[0]["executionId"], first["executionId"]);
        assert!(ex[0]["error"].as_str().unwrap().contains("lease"), "{i}");
        assert_eq!(ex[1]["executionId"], second["executionId"]);
        // The first attempt's token is dead.
        let mut cb = json!({"key": "k"});
        for f in [
            "wfUid",
            "wfInstUid",
            "version",
            "token",
            "nodeUid",
            "executionId",
        ] {
            cb[f] = first[f].clone();
        }
        let r = client()
            .post(server.url("/v1/wf/get"))
            .json(&cb)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(calls.try_recv().is_err(), "no third call");
        server.stop().await;
    }
);

/// A task endpoint on loopback that takes a number from the workflow's counter through the
/// `incrementAndGet` callback (at the calling server's `callbackUrl`) and answers `{"n": n}`.
/// Each call's body is sent on the channel.
async fn counting_task_server() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = read_body(&mut sock).await;
                let mut cb = json!({"key": "total"});
                for f in [
                    "wfUid",
                    "wfInstUid",
                    "version",
                    "token",
                    "nodeUid",
                    "executionId",
                ] {
                    cb[f] = body[f].clone();
                }
                let url = format!(
                    "{}/v1/wf/incrementAndGet",
                    body["callbackUrl"].as_str().unwrap()
                );
                let r = client().post(url).json(&cb).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                let _ = tx.send(body);
                let answer = json!({"n": v["value"]}).to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n",
                    answer.len()
                );
                let _ = sock.write_all(format!("{head}{answer}").as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/task"), rx)
}

/// Two server processes on one PostgreSQL (the shared-database deployment; SQLite is one
/// process) run 200 instances: each completes once, no execution runs twice, both processes
/// take part, and the counter hands out 1..=200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_run_two_hundred_instances_once() {
    let db = TestDb::new(Kind::Postgres).await;
    let (url, mut calls) = counting_task_server().await;
    let app = tempfile::tempdir().unwrap();
    let write = |path: &str, v: Value| {
        let p = app.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v.to_string()).unwrap();
    };
    write("app.json", json!({"appUid": "flows", "name": "Flows"}));
    write(
        "roles.json",
        json!({"roles": [{"roleUid": "runner", "workflows": {"count": ["start", "view"]}}]}),
    );
    write(
        "workflows/count.json",
        json!({"wfUid": "count", "version": "1", "start": "t",
               "nodes": [{"nodeUid": "t", "type": "task", "url": url},
                         {"nodeUid": "z", "type": "end"}],
               "edges": [{"from": "t", "to": "z"}]}),
    );
    let config = app.path().join("cloudio.toml");
    std::fs::write(&config, "[workflows]\nconcurrency = 4\n").unwrap();
    let dir = app.path().display().to_string();
    let config = config.display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--app-dir",
        &dir,
        "--config",
        &config,
    ];
    let env = [("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let one = Proc::serve(&db, &args, &env).await;
    let two = Proc::serve(&db, &args, &env).await;
    db.run(
        &["role", "grant"],
        &["--user", "admin", "--app", "flows", "--role", "runner"],
        None,
    )
    .await
    .ok();
    let (status, body) = login(&one.base(), "admin", ADMIN_PASSWORD).await;
    let admin = logged_in(status, body);
    let base = one.base();
    let starts = (0..200).map(|_| {
        let (base, jwt, csrf) = (base.clone(), admin.jwt.clone(), admin.csrf.clone());
        async move {
            let r = client()
                .post(format!("{base}/v1/wf/start?csrf={csrf}"))
                .header("Authorization", format!("Bearer {jwt}"))
                .json(&json!({"appUid": "flows", "wfUid": "count", "input": {}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    let mut insts: Vec<String> = futures_join(starts)
        .await
        .into_iter()
        .map(|(status, b)| {
            assert_eq!(status, 200, "{b}");
            b["wfInstUid"].as_str().unwrap().to_string()
        })
        .collect();
    let mut pg = <sqlx::PgConnection as sqlx::Connection>::connect(db.url.as_ref().unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cloudio.io_wf_instances WHERE STATE = 'running'",
        )
        .fetch_one(&mut pg)
        .await
        .unwrap();
        if running == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut completed: Vec<String> = sqlx::query_scalar(
        "SELECT WF_INST_UID FROM cloudio.io_wf_instances WHERE STATE = 'completed'",
    )
    .fetch_all(&mut pg)
    .await
    .unwrap();
    completed.sort();
    insts.sort();
    assert_eq!(completed, insts);
    let mut seen = Vec::new();
    while let Ok(body) = calls.try_recv() {
        seen.push(body["executionId"].as_str().unwrap().to_string());
    }
    seen.sort();
    let n = seen.len();
    seen.dedup();
    assert_eq!(
        (n, seen.len()),
        (200, 200),
        "each task call a different execution"
    );
    let outputs: Vec<String> = sqlx::query_scalar(
        "SELECT OUTPUT FROM cloudio.io_wf_executions WHERE NODE_UID = 't' AND STATE = 'completed'",
    )
    .fetch_all(&mut pg)
    .await
    .unwrap();
    let mut ns: Vec<i64> = outputs
        .iter()
        .map(|o| {
            serde_json::from_str::<Value>(o).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (1..=200).collect::<Vec<_>>(), "the counter is exact");
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CLAIMED_BY FROM cloudio.io_wf_executions WHERE NODE_UID = 't'",
    )
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert_eq!(owners.len(), 2, "both servers ran executions");
    one.stop().await;
    two.stop().await;
}

/// Runs futures concurrently (no `futures` crate in these tests).
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// MySQL has no `NOTIFY`: with Redis configured, a node that starts an instance tells the
/// others through Redis. Here the starting node runs nothing (`concurrency = 0`) and both poll
/// the queue only once a minute, so the instance completes within seconds only if the message
/// woke the other node's runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mysql_a_start_wakes_another_node_through_redis() {
    let db = TestDb::new(Kind::Mysql).await;
    let app = tempfile::tempdir().unwrap();
    let write = |path: &str, text: String| {
        let p = app.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "app.json",
        json!({"appUid": "flows", "name": "Flows"}).to_string(),
    );
    write(
        "roles.json",
        json!({"roles": [{"roleUid": "runner", "workflows": {"one": ["start", "view"]}}]})
            .to_string(),
    );
    write(
        "workflows/one.json",
        json!({"wfUid": "one", "version": "1", "start": "a",
               "nodes": [{"nodeUid": "a", "type": "script", "code": "vars.done = true;"},
                         {"nodeUid": "z", "type": "end"}],
               "edges": [{"from": "a", "to": "z"}]})
        .to_string(),
    );
    write(
        "starter.toml",
        "[workflows]\nconcurrency = 0\npoll_ms = 60000\n".into(),
    );
    write(
        "runner.toml",
        "[workflows]\nconcurrency = 4\npoll_ms = 60000\n".into(),
    );
    let dir = app.path().display().to_string();
    let config = |name: &str| app.path().join(name).display().to_string();
    let (starter_cfg, runner_cfg) = (config("starter.toml"), config("runner.toml"));
    let redis =
        std::env::var("CLOUDIO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("cloudio-test-{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("CLOUDIO_REDIS_URL", redis.as_str()),
        ("CLOUDIO_REDIS_PREFIX", prefix.as_str()),
    ];
    let args = |cfg| {
        vec![
            "--listen",
            "127.0.0.1:0",
            "--app-dir",
            &dir,
            "--config",
            cfg,
        ]
    };
    let starter = Proc::serve(&db, &args(&starter_cfg), &env).await;
    let runner = Proc::serve(&db, &args(&runner_cfg), &env).await;
    db.run(
        &["role", "grant"],
        &["--user", "admin", "--app", "flows", "--role", "runner"],
        None,
    )
    .await
    .ok();
    // Both runners have looked at the (empty) queue once at start; give the second's
    // subscription a moment, then start on the node that runs nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = login(&starter.base(), "admin", ADMIN_PASSWORD).await;
    let admin = logged_in(status, body);
    let (status, b) = post(
        &starter.base(),
        &admin,
        "/v1/wf/start",
        &json!({"appUid": "flows", "wfUid": "one", "input": {}}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let inst = b["wfInstUid"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let i = loop {
        let (status, b) = post(
            &starter.base(),
            &admin,
            "/v1/wf/instance",
            &json!({"wfInstUid": inst}),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        if b["instance"]["state"] != "running" {
            break b["instance"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not run within 15 s (the poll is 60 s): {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(i["state"], "completed", "{i}");
    assert_eq!(i["vars"]["done"], true, "{i}");
    starter.stop().await;
    runner.stop().await;
}
