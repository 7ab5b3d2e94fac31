//! The connection layer: timeouts for heads, bodies and idle keep-alive connections, the
//! connection caps, and the envelope on errors hyper answers itself. None of it touches the
//! database, so these run on SQLite only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

async fn spawn(edit: impl FnOnce(&mut server::Config)) -> TestApp {
    let db = TestDb::new(Kind::Sqlite).await;
    let mut config = db.config();
    edit(&mut config);
    TestApp::spawn_on(db, config).await
}

fn addr(app: &TestApp) -> SocketAddr {
    app.base
        .trim_start_matches("http://")
        .parse()
        .expect("address")
}

async fn connect_from(app: &TestApp, local: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((local, 0)))
        .expect("bind a loopback address");
    socket.connect(addr(app)).await.expect("connect")
}

/// Reads one response (head and a `content-length` body): status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return (status, body);
                }
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a whole response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// Waits (at most `within`) for the server to close the connection; returns how long it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .expect("the server closes the connection");
    start.elapsed()
}

const STATUS: &[u8] = b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n";

async fn metric(app: &TestApp, line_start: &str) -> u64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_headed_silent_and_idle_connections_are_closed() {
    let app = spawn(|c| {
        c.header_read_timeout_secs = 1;
        c.keep_alive_timeout_secs = 3;
    })
    .await;
    let started = Instant::now();
    // Sends nothing.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    // Half a head: the header timeout, counted from its first byte.
    let mut half = TcpStream::connect(addr(&app)).await.unwrap();
    half.write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // One request, then idle on keep-alive.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(STATUS).await.unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);

    let took = closed_within(&mut half, Duration::from_secs(10)).await;
    assert!(took < Duration::from_millis(2500), "half a head: {took:?}");
    // Silent and idle connections get the (longer) keep-alive timeout.
    for s in [&mut silent, &mut idle] {
        closed_within(s, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(2500)..Duration::from_secs(8)).contains(&took),
            "{took:?}"
        );
    }
    assert_eq!(
        metric(&app, "cloudio_timeouts_total{phase=\"header\"}").await,
        1
    );
    assert!(metric(&app, "cloudio_timeouts_total{phase=\"idle\"}").await >= 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_byte_by_byte_within_the_timeout_is_answered() {
    let app = spawn(|c| c.header_read_timeout_secs = 2).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    for chunk in STATUS.chunks(8) {
        s.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_response(&mut s).await.0, 200);
    // The next request on the same connection has its own header clock.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    s.write_all(STATUS).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_responses_is_closed() {
    let app = spawn(|c| c.write_timeout_secs = 1).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(addr(&app)).await.unwrap();
    let (_read_half, mut write_half) = s.into_split();
    // Pipelined requests whose answers are never read: the server's writes stall.
    let writer = tokio::spawn(async move {
        // `/metrics`: a cheap handler with an answer of a few KiB.
        let many = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        for _ in 0..100 {
            if write_half.write_all(&many).await.is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&app, "cloudio_timeouts_total{phase=\"write\"}").await == 0 {
        assert!(Instant::now() < deadline, "no write timeout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_timeout_is_a_408_in_the_envelope() {
    let app = spawn(|c| c.body_read_timeout_secs = 1).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(
        b"POST /v1/auth HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"orgUid\"",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_envelope(status, &body, 408);
    assert_eq!(body["title"], "Request Timeout");
    closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        metric(&app, "cloudio_timeouts_total{phase=\"body\"}").await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_refused_with_a_503_and_counted() {
    let app = spawn(|c| {
        c.max_client_connections = Some(3);
        c.max_connections_per_address = 2;
    })
    .await;
    // Two from 127.0.0.1, each proven admitted by an answered request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(&app, [127, 0, 0, 1]).await;
        s.write_all(STATUS).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, 200);
        held.push(s);
    }
    // A third from the same address: refused, in the envelope, and closed.
    let mut s = connect_from(&app, [127, 0, 0, 1]).await;
    let (status, body) = read_response(&mut s).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_envelope(status, &body, 503);
    closed_within(&mut s, Duration::from_secs(5)).await;
    // Another address still gets in, up to the global cap of three.
    let mut other = connect_from(&app, [127, 0, 0, 2]).await;
    other.write_all(STATUS).await.unwrap();
    assert_eq!(read_response(&mut other).await.0, 200);
    let mut s = connect_from(&app, [127, 0, 0, 3]).await;
    assert_eq!(read_response(&mut s).await.0, 503);
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let answered = loop {
        let mut s = connect_from(&app, [127, 0, 0, 1]).await;
        let _ = s.write_all(STATUS).await;
        let (status, _) = read_response(&mut s).await;
        if status == 200 || Instant::now() > deadline {
            break (status, s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answered.0, 200);
    drop(answered);
    drop(other);
    drop(held);
    // The metrics are read over a connection of their own: wait for the others to close.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (global, per_address) = loop {
        let probe = app.client.get(app.url("/metrics")).send().await;
        if let Ok(r) = probe
            && r.status() == 200
        {
            let text = r.text().await.unwrap();
            let get = |k: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            break (
                get("cloudio_connections_refused_total{limit=\"max_client_connections\"}"),
                get("cloudio_connections_refused_total{limit=\"max_connections_per_address\"}"),
            );
        }
        assert!(Instant::now() < deadline, "metrics unreachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(global >= 1, "{global}");
    assert!(per_address >= 1, "{per_address}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_hyper_answers_itself_are_in_the_envelope() {
    let app = spawn(|_| {}).await;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Exactly the largest head, unfinished: read whole, so the answer is not lost to a reset.
        (
            format!(
                "GET /v1/status HTTP/1.1\r\nhost: x\r\nx-big: {}",
                "a".repeat(200 * 1024)
            )
            .into_bytes()[..server::conn::MAX_HEAD_BYTES]
                .to_vec(),
            431,
        ),
        (
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            414,
        ),
        (
            b"POST /v1/auth HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n".to_vec(),
            400,
        ),
        (b"NOT A REQUEST\r\n\r\n".to_vec(), 400),
    ];
    for (request, expected) in cases {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        // The server may answer and close before it has read everything.
        let _ = s.write_all(&request).await;
        let (status, body) = read_response(&mut s).await;
        let body: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{expected}: not JSON ({e}): {body:?}"));
        assert_envelope(status, &body, expected);
    }
    app.stop().await;
}
