//! One trivial `postQuery` hook (`for (const r of rows) r.x = 1;`) over W1's 10 rows (and
//! over none, and under 4 KiB of comments), run again and again on one worker: the sandbox's
//! own cost per execution (rows in and out, the run in the kept context), without HTTP or SQL.
//! As the server runs a `postQuery` hook: `rowsOnly`, its query not read back.
//! Prints figures; run with `cargo bench -p script --bench hook`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use script::{Event, Execution, Kind, Limits, Pool, Program, SessionInfo, compile};
use serde_json::{Value as Json, json};

/// As in the `cloudio` binary.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rows(n: usize) -> Json {
    let rows: Vec<Json> = (0..n)
        .map(|i| {
            json!({
                "empId": 1001 + i * 1000, "name": format!("Abigail Abbott {:06}", 1001 + i * 1000),
                "salary": 51234.5, "active": "Y", "gender": "F", "joinDate": "2019-04-01",
                "email": format!("abigail.abbott.{i}@example.com"), "badge": format!("e{i:014}"),
                "createdBy": "admin", "creationDate": "2026-11-29T09:00:00.000Z",
                "lastUpdatedBy": "admin", "lastUpdateDate": "2026-11-29T09:00:00.000Z", "_rs": "Q"
            })
        })
        .collect();
    Json::Array(rows)
}

fn execution(body: &std::sync::Arc<str>, rows: &Json) -> Execution {
    Execution {
        program: Program::Hook { body: body.clone() },
        name: "EmployeesHooked.postQuery".into(),
        request_id: None,
        session: SessionInfo {
            user_name: "admin".into(),
            org_uid: "cloudio".into(),
            app_uid: "bench".into(),
            roles: vec!["bench_user".into()],
        },
        input: json!({
            "query": {"filter": [{"name": {"like": "ab"}}, {"salary": {"gte": 50000}}],
                      "sort": {"name": 1}, "limit": 10},
            "rows": rows, "keys": ["empId"], "rowsOnly": true}),
        limits: Limits::HOOK,
    }
}

fn main() {
    let hook = "for (const r of rows) r.x = 1;";
    let body: std::sync::Arc<str> = compile("b.js", hook, Kind::Hook).unwrap().into();
    // The same hook under 4 KiB of comments: what a hook's length costs per execution.
    let long = format!(
        "{}{hook}",
        "// an explanation of the hook, as real ones have\n".repeat(80)
    );
    let long: std::sync::Arc<str> = compile("long.js", &long, Kind::Hook).unwrap().into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let pool = Pool::new(1);
    // `HOOK_BENCH_RUNS`: executions per measured round (10,000 unless set), fewer to run the
    // bench under a profiler or valgrind.
    let runs: u32 = std::env::var("HOOK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    rt.block_on(async {
        let mut seconds_before = 0.0;
        // W1's 10 rows, then none: what a row costs, and what an execution costs without any;
        // then 10 rows through the long hook.
        for (n_rows, body, what) in [(10, &body, ""), (0, &body, ""), (10, &long, ", 4 KiB hook")] {
            let rows = rows(n_rows);
            for (label, n) in [("warm-up", 2_000u32), ("measured", runs), ("measured", runs), ("measured", runs)] {
                let started = Instant::now();
                for _ in 0..n {
                    let mut running = pool.start(execution(body, &rows), false).await.unwrap();
                    match running.next().await {
                        Event::Done(Ok(out)) => {
                            assert_eq!(out["rows"].as_array().map(Vec::len), Some(n_rows));
                        }
                        other => panic!("{other:?}"),
                    }
                }
                let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);
                let stats = pool.stats();
                let cpu = (stats.seconds - seconds_before) * 1e6 / f64::from(n);
                seconds_before = stats.seconds;
                println!("{n_rows} rows{what}, {label}: {n} executions, {per:.1} us each (wall, one at a time), {cpu:.1} us in the sandbox");
            }
        }
    });
}
