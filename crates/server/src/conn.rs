//! The accept loop: connection caps (global and per client address); timeouts for a connection
//! that sits idle, a request head that trickles in, and a response the client does not read;
//! and the platform's envelope on the few error responses hyper writes itself (400, 414, 431
//! for a head it cannot parse).
//!
//! hyper has one timer for "waiting for a head", which starts when a connection opens or a
//! response ends: we give it the idle (keep-alive) timeout. The shorter header timeout starts
//! at the first byte of a head and is kept by [`Io`], which the service tells when a head has
//! been read.
//!
//! A refused connection gets a short 503 in the envelope and is closed; refusals are counted in
//! `/metrics` and logged at most once every ten seconds.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::config::Config;

/// The largest request head (request line and headers) read; a longer one is a 431, a URI
/// longer than 64 KiB a 414. Also hyper's read buffer, which bodies stream through.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// Counters of the connection layer, rendered by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    pub refused_global: AtomicU64,
    pub refused_per_address: AtomicU64,
    /// Connections closed because a request head, once begun, did not arrive whole in time.
    pub header_timeouts: AtomicU64,
    /// Connections closed after sitting idle (no request begun) for the keep-alive timeout.
    pub idle_timeouts: AtomicU64,
    /// Connections closed because a response made no progress (the client did not read).
    pub write_timeouts: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The client as the limits count it: an IPv4 address (also when mapped into IPv6), or an IPv6
/// address's /64 prefix, which one host or customer usually holds whole (counting single IPv6
/// addresses would let a client rotate through 2^64 of them).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// The caps in force, after the descriptor limit was taken into account.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` elsewhere.
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The largest global cap that leaves room below the descriptor limit for the database, the
/// log and the listener: an eighth of the limit, at least 256 descriptors.
pub fn cap_below(nofile: u64) -> usize {
    let reserve = (nofile / 8).max(256);
    usize::try_from(nofile.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(16)
}

impl Caps {
    pub fn from_config(config: &Config) -> Caps {
        let ceiling = cap_below(nofile_limit().unwrap_or(1024));
        let total = match config.max_client_connections {
            Some(n) if n > ceiling => {
                tracing::warn!(
                    configured = n,
                    used = ceiling,
                    "max_client_connections is above what the descriptor limit (ulimit -n) \
                     allows; lowered"
                );
                ceiling
            }
            Some(n) => n,
            None => ceiling,
        };
        Caps {
            total,
            per_address: config.max_connections_per_address,
        }
    }
}

/// Open connections, in total and per address.
struct Gate {
    caps: Caps,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    stats: Arc<ConnStats>,
}

enum Refusal {
    Global,
    PerAddress,
}

/// A connection's place under the caps; given back on drop.
struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let stats = &self.stats;
        if stats
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.caps.total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::Global);
        }
        let mut map = match self.per_address.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = map.entry(ip).or_default();
        if *n >= self.caps.per_address {
            drop(map);
            stats.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerAddress);
        }
        *n += 1;
        Ok(Slot {
            gate: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = match self.gate.per_address.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.gate.stats.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs at most once per interval, with the number of events since the last line.
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        RateLimitedLog {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line should be written now, `n` events having been left unlogged.
    fn tick(&self) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// The response a refused connection gets before it is closed.
fn refusal_bytes(message: &str) -> Vec<u8> {
    envelope_response(503, "Service Unavailable", message)
}

/// A complete HTTP/1.1 response in the platform's envelope, closing the connection.
fn envelope_response(code: u16, title: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "code": code, "status": "ERROR", "title": title, "message": message,
    })
    .to_string();
    format!(
        "HTTP/1.1 {code} {title}\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting and lets open
/// connections finish their requests for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &Config,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let caps = Caps::from_config(config);
    tracing::info!(
        max_client_connections = caps.total,
        max_connections_per_address = caps.per_address,
        "connection limits"
    );
    let gate = Arc::new(Gate {
        caps,
        per_address: Mutex::new(HashMap::new()),
        stats: stats.clone(),
    });
    let refusal_log = RateLimitedLog::new();
    let accept_log = RateLimitedLog::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.keep_alive_timeout_secs))
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        // One buffer per write, so a response hyper makes itself arrives whole at `Io`.
        .writev(false);
    let timeouts = Timeouts {
        header: Duration::from_secs(config.header_read_timeout_secs),
        write: Duration::from_secs(config.write_timeout_secs),
    };
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(n) = accept_log.tick() {
                        tracing::warn!(error = %e, unlogged = n, "accept failed");
                    }
                    // Out of descriptors or memory: wait for connections to close rather than
                    // spin on the error.
                    if !is_connection_error(&e) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let slot = match gate.admit(client_key(peer.ip())) {
            Ok(slot) => slot,
            Err(refusal) => {
                let (counter, reason, message) = match refusal {
                    Refusal::Global => (
                        &stats.refused_global,
                        "max_client_connections",
                        "The server has too many open connections; try again shortly.",
                    ),
                    Refusal::PerAddress => (
                        &stats.refused_per_address,
                        "max_connections_per_address",
                        "Too many open connections from your address; close some and retry.",
                    ),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = refusal_log.tick() {
                    tracing::warn!(peer = %peer.ip(), limit = reason, unlogged = n, "connection refused");
                }
                // Best effort and never waiting: the socket is closed right after.
                let _ = stream.try_write(&refusal_bytes(message));
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let heads = Arc::new(Heads::default());
        let io = Io::new(stream, timeouts, heads.clone(), stats.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            // The head is in: no header deadline while the request is handled.
            heads.read.fetch_add(1, Ordering::AcqRel);
            heads.handling.store(true, Ordering::Release);
            let heads = heads.clone();
            let answer = app.clone().oneshot(req.map(Body::new));
            async move {
                let resp = answer.await;
                heads.handling.store(false, Ordering::Release);
                resp
            }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await
                && e.is_timeout()
            {
                // hyper's own timer: nothing of a next request arrived in time.
                stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; stopping with requests still in flight");
        }
    }
    Ok(())
}

/// Errors of one connection that say nothing about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// From the first byte of a head to its end.
    header: Duration,
    /// The longest a write may make no progress.
    write: Duration,
}

/// The socket as hyper sees it. It keeps the header timeout (from a head's first byte) and the
/// write timeout (a response the client does not read), and, when hyper answers a head it could
/// not parse with its own bodiless 400, 414 or 431, sends the same status in the platform's
/// envelope instead.
struct Io {
    stream: TcpStream,
    timeouts: Timeouts,
    /// What the service has seen of this connection's heads.
    heads: Arc<Heads>,
    /// The header deadline, and the number of heads read when it was set (a later head ends it).
    head_deadline: Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ConnStats>,
    /// A replacement response still to be sent, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

/// Kept by the service, read by [`Io`].
#[derive(Debug, Default)]
struct Heads {
    /// Heads read so far.
    read: AtomicU64,
    /// A request is being handled (its bytes now are its body, not a head).
    handling: AtomicBool,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl Io {
    fn new(
        stream: TcpStream,
        timeouts: Timeouts,
        heads: Arc<Heads>,
        stats: Arc<ConnStats>,
    ) -> Self {
        Io {
            stream,
            timeouts,
            heads,
            head_deadline: None,
            write_deadline: None,
            stats,
            pending: None,
        }
    }

    /// A write made no progress: start the write clock, or stop the connection when it ran out.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let write = self.timeouts.write;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(timed_out("the client did not read the response")));
        }
        Poll::Pending
    }

    /// Writes to the socket, keeping the write clock.
    fn poll_write_stream(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Pending => match self.write_stalled(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            done => {
                self.write_deadline = None;
                done
            }
        }
    }

    /// Sends what is left of a replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = self.pending.take() {
            if sent >= bytes.len() {
                break;
            }
            let result = self.poll_write_stream(cx, &bytes[sent..]);
            match result {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending = Some((bytes, sent + n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.pending = Some((bytes, sent));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The envelope for a response hyper wrote itself: a status line of 400, 414 or 431 with an
/// empty body. Our own error responses always have a body, so they never match.
fn replace_framework_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let empty = lines.any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !empty || buf.len() != head_end + 4 {
        return None;
    }
    let (title, message) = match code {
        400 => (
            "Invalid Request",
            "The request could not be parsed as HTTP/1.1 (request line, a header or Content-Length).",
        ),
        414 => (
            "URI Too Long",
            "The request URI is longer than the server accepts.",
        ),
        431 => (
            "Request Header Fields Too Large",
            "The request's headers are larger than the server accepts.",
        ),
        _ => return None,
    };
    Some(envelope_response(code, title, message))
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let heads_read = this.heads.read.load(Ordering::Acquire);
        if this
            .head_deadline
            .as_ref()
            .is_some_and(|(_, at)| *at != heads_read)
        {
            // That head arrived.
            this.head_deadline = None;
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        let got_bytes = buf.filled().len() > before;
        if got_bytes && this.head_deadline.is_none() && !this.heads.handling.load(Ordering::Acquire)
        {
            // The first bytes of a head: from now on it has `header` to arrive whole.
            let sleep = Box::pin(tokio::time::sleep(this.timeouts.header));
            this.head_deadline = Some((sleep, heads_read));
        }
        if result.is_pending()
            && let Some((deadline, _)) = this.head_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(timed_out("the request head did not arrive in time")));
        }
        result
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_some() {
            // Whatever hyper writes after its own error response is dropped with it.
            return match this.poll_pending(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        if buf.starts_with(b"HTTP/1.1 4")
            && let Some(bytes) = replace_framework_error(buf)
        {
            this.pending = Some((bytes, 0));
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // Counted as written: the rest goes out on the next write, flush or shutdown.
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        this.poll_write_stream(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut this.stream).poll_flush(cx) {
                Poll::Pending => this.write_stalled(cx),
                done => done,
            },
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_get_the_envelope() {
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(replace_framework_error(hyper_431).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("\"code\":431"), "{out}");
        // Our own responses carry a body and are left alone.
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        assert!(replace_framework_error(ours).is_none());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn the_cap_leaves_room_below_the_descriptor_limit() {
        assert_eq!(cap_below(1024), 768);
        assert_eq!(cap_below(20_000), 17_500);
        assert!(cap_below(100) >= 16);
    }
}
