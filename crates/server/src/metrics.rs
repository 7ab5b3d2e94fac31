//! Request counters and latencies in Prometheus text format, without a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::conn::ConnStats;
use crate::state::AppState;

const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Latency and status counts of one route and method.
#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

/// What `/v1/auth` answered, by status: the login outcomes.
const LOGIN_OUTCOMES: [(&str, u16); 4] = [
    ("ok", 200),
    ("denied", 403),
    ("throttled", 429),
    ("invalid", 400),
];

#[derive(Default)]
pub struct Metrics {
    /// route -> method -> figures. Nested so a request looks its entry up without allocating.
    routes: Mutex<BTreeMap<String, BTreeMap<String, RouteStats>>>,
    /// Requests inside the server now (handled, or waiting for an in-flight slot).
    in_flight: AtomicU64,
    /// The accept loop's counters (open, refused, timed out).
    pub conns: Arc<ConnStats>,
    /// Requests whose body did not arrive within `body_read_timeout_secs`.
    pub body_timeouts: AtomicU64,
}

/// Figures of the store and engine that `/metrics` reports beside the HTTP ones.
pub struct Figures {
    /// `(open, idle)` pool connections.
    pub pool: (u32, usize),
    pub pool_max: u32,
    pub writer: crate::engine::WriterStats,
    pub uptime: f64,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        if !routes.contains_key(route) {
            routes.insert(route.to_string(), BTreeMap::new());
        }
        let Some(methods) = routes.get_mut(route) else {
            return;
        };
        if !methods.contains_key(method) {
            methods.insert(method.to_string(), RouteStats::default());
        }
        let Some(r) = methods.get_mut(method) else {
            return;
        };
        *r.by_status.entry(status).or_default() += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                r.buckets[i] += 1;
            }
        }
        r.count += 1;
        r.sum_micros += (secs * 1e6) as u64;
    }

    pub fn render(&self, f: &Figures) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cloudio_http_requests_total HTTP requests by route template, method and status."
        );
        let _ = writeln!(out, "# TYPE cloudio_http_requests_total counter");
        let mut logins = [0u64; LOGIN_OUTCOMES.len()];
        if let Ok(routes) = self.routes.lock() {
            for (route, methods) in routes.iter() {
                for (method, r) in methods {
                    for (status, n) in &r.by_status {
                        let _ = writeln!(
                            out,
                            "cloudio_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                        );
                        if route == "/v1/auth" && method == "POST" {
                            for (i, (_, s)) in LOGIN_OUTCOMES.iter().enumerate() {
                                if s == status {
                                    logins[i] += n;
                                }
                            }
                        }
                    }
                }
            }
            let _ = writeln!(
                out,
                "# HELP cloudio_http_request_duration_seconds Request latency by route template and method, from the head read to the answer."
            );
            let _ = writeln!(
                out,
                "# TYPE cloudio_http_request_duration_seconds histogram"
            );
            for (route, methods) in routes.iter() {
                for (method, r) in methods {
                    let labels = format!("method=\"{method}\",route=\"{route}\"");
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "cloudio_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                            r.buckets[i]
                        );
                    }
                    let _ = writeln!(
                        out,
                        "cloudio_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                        r.count
                    );
                    let _ = writeln!(
                        out,
                        "cloudio_http_request_duration_seconds_sum{{{labels}}} {}",
                        r.sum_micros as f64 / 1e6
                    );
                    let _ = writeln!(
                        out,
                        "cloudio_http_request_duration_seconds_count{{{labels}}} {}",
                        r.count
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP cloudio_http_requests_in_flight Requests inside the server now, handled or waiting for a slot."
        );
        let _ = writeln!(out, "# TYPE cloudio_http_requests_in_flight gauge");
        let _ = writeln!(
            out,
            "cloudio_http_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cloudio_logins_total Logins (POST /v1/auth) by outcome: ok, denied (wrong or unknown credentials), throttled (brute-force limit), invalid (malformed header or body)."
        );
        let _ = writeln!(out, "# TYPE cloudio_logins_total counter");
        for (i, (outcome, _)) in LOGIN_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "cloudio_logins_total{{outcome=\"{outcome}\"}} {}",
                logins[i]
            );
        }
        let (pool, idle) = f.pool;
        let _ = writeln!(
            out,
            "# HELP cloudio_db_pool_connections Database pool connections open (in use and idle)."
        );
        let _ = writeln!(out, "# TYPE cloudio_db_pool_connections gauge");
        let _ = writeln!(out, "cloudio_db_pool_connections {pool}");
        let _ = writeln!(out, "# TYPE cloudio_db_pool_idle_connections gauge");
        let _ = writeln!(out, "cloudio_db_pool_idle_connections {idle}");
        let _ = writeln!(out, "# TYPE cloudio_db_pool_in_use_connections gauge");
        let _ = writeln!(
            out,
            "cloudio_db_pool_in_use_connections {}",
            (pool as usize).saturating_sub(idle)
        );
        let _ = writeln!(out, "# TYPE cloudio_db_pool_max_connections gauge");
        let _ = writeln!(out, "cloudio_db_pool_max_connections {}", f.pool_max);
        let w = &f.writer;
        let _ = writeln!(
            out,
            "# HELP cloudio_sqlite_writer_queue Requests queued on or running in SQLite's writer thread now (0 on PostgreSQL)."
        );
        let _ = writeln!(out, "# TYPE cloudio_sqlite_writer_queue gauge");
        let _ = writeln!(out, "cloudio_sqlite_writer_queue {}", w.queued);
        let _ = writeln!(
            out,
            "# HELP cloudio_sqlite_writer_jobs_total Requests answered by SQLite's writer thread."
        );
        let _ = writeln!(out, "# TYPE cloudio_sqlite_writer_jobs_total counter");
        let _ = writeln!(out, "cloudio_sqlite_writer_jobs_total {}", w.jobs);
        let _ = writeln!(
            out,
            "# HELP cloudio_sqlite_writer_seconds_total Time those requests spent from queueing to their commit."
        );
        let _ = writeln!(out, "# TYPE cloudio_sqlite_writer_seconds_total counter");
        let _ = writeln!(
            out,
            "cloudio_sqlite_writer_seconds_total {:.6}",
            w.micros as f64 / 1e6
        );
        let c = &self.conns;
        let _ = writeln!(
            out,
            "# HELP cloudio_connections_open Client connections open now."
        );
        let _ = writeln!(out, "# TYPE cloudio_connections_open gauge");
        let _ = writeln!(
            out,
            "cloudio_connections_open {}",
            c.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE cloudio_connections_accepted_total counter");
        let _ = writeln!(
            out,
            "cloudio_connections_accepted_total {}",
            c.accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cloudio_connections_refused_total Connections refused by a cap."
        );
        let _ = writeln!(out, "# TYPE cloudio_connections_refused_total counter");
        let _ = writeln!(
            out,
            "cloudio_connections_refused_total{{limit=\"max_client_connections\"}} {}",
            c.refused_global.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cloudio_connections_refused_total{{limit=\"max_connections_per_address\"}} {}",
            c.refused_per_address.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cloudio_timeouts_total Connections closed or requests refused for slowness."
        );
        let _ = writeln!(out, "# TYPE cloudio_timeouts_total counter");
        let _ = writeln!(
            out,
            "cloudio_timeouts_total{{phase=\"header\"}} {}",
            c.header_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cloudio_timeouts_total{{phase=\"idle\"}} {}",
            c.idle_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cloudio_timeouts_total{{phase=\"body\"}} {}",
            self.body_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "cloudio_timeouts_total{{phase=\"write\"}} {}",
            c.write_timeouts.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE cloudio_accept_errors_total counter");
        let _ = writeln!(
            out,
            "cloudio_accept_errors_total {}",
            c.accept_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE cloudio_uptime_seconds gauge");
        let _ = writeln!(out, "cloudio_uptime_seconds {:.3}", f.uptime);
        out
    }
}

/// The script pool's lines of `/metrics`.
pub fn render_scripts(s: &script::PoolStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cloudio_script_executions_total Script executions (hooks and functions) by outcome."
    );
    let _ = writeln!(out, "# TYPE cloudio_script_executions_total counter");
    for (outcome, n) in [
        ("ok", s.ok),
        ("user_error", s.user_errors),
        ("error", s.failed),
    ] {
        let _ = writeln!(
            out,
            "cloudio_script_executions_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# TYPE cloudio_script_limit_hits_total counter");
    let _ = writeln!(out, "cloudio_script_limit_hits_total {}", s.limits);
    let _ = writeln!(out, "# TYPE cloudio_script_busy_refusals_total counter");
    let _ = writeln!(out, "cloudio_script_busy_refusals_total {}", s.busy);
    let _ = writeln!(
        out,
        "# HELP cloudio_script_inline_total Executions run whole on the request's own thread."
    );
    let _ = writeln!(out, "# TYPE cloudio_script_inline_total counter");
    let _ = writeln!(out, "cloudio_script_inline_total {}", s.inline);
    let _ = writeln!(out, "# TYPE cloudio_script_seconds_total counter");
    let _ = writeln!(out, "cloudio_script_seconds_total {:.6}", s.seconds);
    let _ = writeln!(out, "# TYPE cloudio_script_workers gauge");
    let _ = writeln!(out, "cloudio_script_workers {}", s.workers);
    let _ = writeln!(out, "# TYPE cloudio_script_running gauge");
    let _ = writeln!(out, "cloudio_script_running {}", s.running);
    out
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    // Matched route templates only, so client paths cannot grow the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let in_flight = InFlight::enter(&state.metrics.in_flight);
    let resp = next.run(req).await;
    drop(in_flight);
    state.metrics.observe(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// One request counted in a gauge while it lasts, also when its future is dropped (the client
/// hung up).
pub struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
