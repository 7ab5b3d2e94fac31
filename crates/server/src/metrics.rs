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

#[derive(Default)]
pub struct Metrics {
    /// (method, route, status) -> count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// The accept loop's counters (open, refused, timed out).
    pub conns: Arc<ConnStats>,
    /// Requests whose body did not arrive within `body_read_timeout_secs`.
    pub body_timeouts: AtomicU64,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn render(&self, pool: (u32, usize), uptime: f64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cloudio_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE cloudio_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "cloudio_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cloudio_http_request_duration_seconds Request latency."
        );
        let _ = writeln!(
            out,
            "# TYPE cloudio_http_request_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "cloudio_http_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "cloudio_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "cloudio_http_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "cloudio_http_request_duration_seconds_count {count}");
        let _ = writeln!(out, "# TYPE cloudio_db_pool_connections gauge");
        let _ = writeln!(out, "cloudio_db_pool_connections {}", pool.0);
        let _ = writeln!(out, "# TYPE cloudio_db_pool_idle_connections gauge");
        let _ = writeln!(out, "cloudio_db_pool_idle_connections {}", pool.1);
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
        let _ = writeln!(out, "cloudio_uptime_seconds {uptime:.3}");
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
    let resp = next.run(req).await;
    state.metrics.observe(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}
