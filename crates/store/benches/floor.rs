//! The floor under `POST /v1/api` queries: the SQL the server would run for a query, compiled by
//! the real compiler and run in-process through the same pool and driver code
//! (`store::Db::connect` + `Conn::raw().fetch_all`), without HTTP, authentication or JSON.
//! Driven by `bench/api.py`; runnable on its own:
//!
//! ```sh
//! cargo bench -p store --bench floor -- --sqlite-dir DATA_DIR --app-dir APP_DIR
//! cargo bench -p store --bench floor -- --postgres postgres://.../db --app-dir APP_DIR
//! ```
//!
//! Options: `--workloads w1,w2` (default both), `--tasks 64`, `--pool 16` (the server's default
//! `max_connections`), `--warmup 2`, `--duration 10` (seconds), `--w1-query JSON`,
//! `--w2-query JSON` (`empId` of its first `eq` is replaced by a random id in `1..=--ids`),
//! `--ids 100000`, `--app bench`, `--schema bench`, and `--inline-limit` (an experiment: LIMIT
//! and OFFSET as literals instead of binds, which the server does not do). Prints one
//! `RESULT {json}` line per workload.
//!
//! Each of `--tasks` tokio tasks loops: acquire a pooled connection, `fetch_all` the compiled
//! statement, release; exactly what the server's handler does per query request. W2 compiles
//! its statement once and swaps the bound id per query (the server compiles per request; that
//! costs microseconds and is part of the API's overhead, not of the floor).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use query::{AttrType, CompileOptions, DatasourceDef, Dialect, Value, compile_select, parse_query};
use store::{Db, DbTarget};

const W1_QUERY: &str =
    r#"{"filter":[{"name":{"like":"ab"}},{"salary":{"gte":50000}}],"sort":{"name":1},"limit":10}"#;
const W2_QUERY: &str = r#"{"filter":[{"empId":{"eq":1}}]}"#;

struct Opts {
    target: DbTarget,
    app_dir: PathBuf,
    app: String,
    schema: String,
    workloads: Vec<String>,
    tasks: usize,
    pool: u32,
    warmup: f64,
    duration: f64,
    w1_query: String,
    w2_query: String,
    ids: i64,
    inline_limit: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("floor: {msg}");
    eprintln!(
        "usage: floor (--sqlite-dir DIR | --postgres URL) --app-dir DIR [--workloads w1,w2] \
         [--tasks 64] [--pool 16] [--warmup 2] [--duration 10] [--ids 100000] \
         [--w1-query JSON] [--w2-query JSON] [--app bench] [--schema bench] [--inline-limit]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut target = None;
    let mut app_dir = None;
    let mut o = Opts {
        target: DbTarget::SqliteDir(PathBuf::new()),
        app_dir: PathBuf::new(),
        app: "bench".into(),
        schema: "bench".into(),
        workloads: vec!["w1".into(), "w2".into()],
        tasks: 64,
        pool: 16,
        warmup: 2.0,
        duration: 10.0,
        w1_query: W1_QUERY.into(),
        w2_query: W2_QUERY.into(),
        ids: 100_000,
        inline_limit: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if a == "--bench" {
            continue;
        }
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let num = |s: String| -> f64 {
            s.parse()
                .unwrap_or_else(|_| usage(&format!("bad number {s}")))
        };
        match a.as_str() {
            "--sqlite-dir" => target = Some(DbTarget::SqliteDir(PathBuf::from(val()))),
            "--postgres" => target = Some(DbTarget::Postgres(val())),
            "--app-dir" => app_dir = Some(PathBuf::from(val())),
            "--app" => o.app = val(),
            "--schema" => o.schema = val(),
            "--workloads" => o.workloads = val().split(',').map(str::to_string).collect(),
            "--tasks" => o.tasks = num(val()) as usize,
            "--pool" => o.pool = num(val()) as u32,
            "--warmup" => o.warmup = num(val()),
            "--duration" => o.duration = num(val()),
            "--ids" => o.ids = num(val()) as i64,
            "--inline-limit" => o.inline_limit = true,
            "--w1-query" => o.w1_query = val(),
            "--w2-query" => o.w2_query = val(),
            "-h" | "--help" => usage("help"),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    o.target = target.unwrap_or_else(|| usage("give --sqlite-dir or --postgres"));
    o.app_dir = app_dir.unwrap_or_else(|| usage("give --app-dir"));
    o
}

/// A statement ready to run: SQL, binds, decode types, and which bind (if any) takes the id.
#[derive(Clone)]
struct Prepared {
    sql: Arc<str>,
    params: Vec<Value>,
    types: Arc<[AttrType]>,
    id_slot: Option<usize>,
}

fn prepare(
    ds: &query::Datasource,
    dialect: Dialect,
    json: &str,
    id_param: bool,
    inline_limit: bool,
) -> Prepared {
    let v: serde_json::Value = serde_json::from_str(json).expect("query JSON");
    let q = parse_query(&v).expect("parse_query");
    let today = chrono::Utc::now().date_naive();
    let c = compile_select(ds, &q, &CompileOptions::new(dialect, today)).expect("compile_select");
    // The id of `{"empId": {"eq": N}}` is the first bind (WHERE comes before LIMIT/OFFSET).
    let id_slot = if id_param {
        let slot = c
            .select
            .params
            .iter()
            .position(|p| matches!(p, Value::Int(_)));
        assert_eq!(
            slot,
            Some(0),
            "W2: expected the id as the first bind: {:?}",
            c.select
        );
        slot
    } else {
        None
    };
    let (mut sql, mut params) = (c.select.sql, c.select.params);
    if inline_limit {
        // An experiment, not what the server does: LIMIT and OFFSET (the last two binds) as
        // literals. On SQLite a bound LIMIT marks the statement to be re-prepared whenever it is
        // re-bound, which defeats the statement cache.
        let at = sql.rfind(" LIMIT ").expect("a LIMIT clause");
        let n = params.len();
        let (Value::Int(limit), Value::Int(offset)) = (&params[n - 2], &params[n - 1]) else {
            panic!("LIMIT/OFFSET binds expected last: {params:?}");
        };
        sql = format!("{} LIMIT {limit} OFFSET {offset}", &sql[..at]);
        params.truncate(n - 2);
    }
    Prepared {
        sql: sql.into(),
        params,
        types: c.columns.iter().map(|c| c.ty).collect::<Vec<_>>().into(),
        id_slot,
    }
}

/// xorshift64*: enough randomness for picking ids, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct TaskOut {
    lat_us: Vec<u32>,
    rows: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn run_workload(db: &Db, p: &Prepared, o: &Opts, name: &str) -> serde_json::Value {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(o.duration);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(o.tasks);
    for t in 0..o.tasks {
        let db = db.clone();
        let p = p.clone();
        let stop = stop.clone();
        let ids = o.ids.max(1) as u64;
        handles.push(tokio::spawn(async move {
            let mut out = TaskOut {
                lat_us: Vec::with_capacity(1 << 16),
                rows: 0,
                errors: 0,
                first_error: None,
            };
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1000_0000_01B3));
            let mut params = p.params.clone();
            while !stop.load(Ordering::Relaxed) {
                if let Some(slot) = p.id_slot {
                    params[slot] = Value::Int((rng.next() % ids) as i64 + 1);
                }
                let t0 = Instant::now();
                let r = async {
                    let mut conn = db.acquire().await?;
                    conn.raw().fetch_all(&p.sql, &params, &p.types).await
                }
                .await;
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= measure_to {
                    match r {
                        Ok(rows) => {
                            out.rows += rows.len() as u64;
                            out.lat_us
                                .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                } else if let Err(e) = r {
                    out.errors += 1;
                    out.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            out
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_seconds();
    tokio::time::sleep_until(measure_to.into()).await;
    let cpu = cpu_seconds() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut rows, mut errors, mut first_error) = (0u64, 0u64, None);
    for h in handles {
        let out = h.await.expect("task");
        lat.extend(out.lat_us);
        rows += out.rows;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    lat.sort_unstable();
    let pct = |q: f64| -> u32 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]
        }
    };
    let n = lat.len() as f64;
    let qps = n / o.duration;
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| x as f64).sum::<f64>() / n
    };
    let cpu_us_per_query = if n > 0.0 { cpu * 1e6 / n } else { 0.0 };
    eprintln!(
        "floor {name}: {qps:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms, {:.2} rows/query, \
         {cpu_us_per_query:.0} us CPU/query, {errors} errors",
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        if n > 0.0 { rows as f64 / n } else { 0.0 }
    );
    serde_json::json!({
        "workload": name, "queries": lat.len(), "seconds": o.duration, "qps": qps,
        "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
        "max_us": lat.last().copied().unwrap_or(0), "mean_us": mean,
        "rows_per_query": if n > 0.0 { rows as f64 / n } else { 0.0 },
        "errors": errors, "first_error": first_error,
        "tasks": o.tasks, "pool": pool_max(db), "sql": &*p.sql,
        "cpu_s": cpu, "cpu_us_per_query": cpu_us_per_query,
    })
}

/// The pool's size limit as `Db::connect` set it (on SQLite it caps the requested size).
fn pool_max(db: &Db) -> u32 {
    match db {
        Db::Sqlite { pools, .. } => pools.current().options().get_max_connections(),
        Db::Postgres(pool) => pool.options().get_max_connections(),
        Db::Mysql { pool, .. } => pool.options().get_max_connections(),
    }
}

/// User + system CPU seconds of this process so far (all threads), from /proc/self/stat
/// (clock ticks of 1/100 s, the Linux user-space ABI); 0 where that is unreadable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let o = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let db = Db::connect(&o.target, o.pool).await.expect("connect");
        let dialect = db.dialect();
        let file = o.app_dir.join("datasources").join("Employees.json");
        let text = std::fs::read_to_string(&file).expect("read Employees.json");
        let fname = "Employees.json";
        let def = DatasourceDef::parse(fname, &text).expect("parse Employees.json");
        let ds = def
            .resolve(fname, &o.app, Some(&o.schema))
            .expect("resolve Employees.json");
        eprintln!(
            "floor: {dialect:?}, {} tasks, pool {} (asked {}), warm-up {} s, {} s measured",
            o.tasks,
            pool_max(&db),
            o.pool,
            o.warmup,
            o.duration
        );
        for w in &o.workloads {
            let p = match w.as_str() {
                "w1" => prepare(&ds, dialect, &o.w1_query, false, o.inline_limit),
                "w2" => prepare(&ds, dialect, &o.w2_query, true, o.inline_limit),
                other => usage(&format!("unknown workload {other}")),
            };
            eprintln!("floor {w}: {}", p.sql);
            let r = run_workload(&db, &p, &o, w).await;
            println!("RESULT {r}");
        }
        db.close().await;
    });
}
