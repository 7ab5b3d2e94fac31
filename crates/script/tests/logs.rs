//! What scripts write to the log, where executions start on the caller's thread and may start
//! again on the pool's: a line is written once, by the run that counts. A test binary of its
//! own, since it captures the process's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use script::{Event, Execution, Kind, Limits, Pool, Program, SessionInfo, compile};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hook(body: &str) -> Execution {
    Execution {
        program: Program::Hook {
            body: compile("t.js", body, Kind::Hook).unwrap().into(),
        },
        name: "Employees.postQuery".into(),
        request_id: Some("req-7".into()),
        session: SessionInfo::default(),
        input: json!({"query": {}, "rows": [], "keys": []}),
        limits: Limits::HOOK,
    }
}

#[tokio::test]
async fn a_line_is_written_once_whether_the_execution_moved_or_not() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let pool = Pool::new(1);
    let mut calls = 0;
    // Inline whole: written when it ends.
    // Moved by its db call: the inline start's line is dropped, the pool's run writes it.
    for body in [
        "Logger.info('inline-only');",
        "Logger.info('before-the-call'); await db.find('X', {}); Logger.info('after-the-call');",
    ] {
        let mut running = pool.start(hook(body), false).await.unwrap();
        loop {
            match running.next().await {
                Event::Call(call) => {
                    calls += 1;
                    call.reply(Ok(json!([])));
                }
                Event::Done(out) => {
                    out.unwrap();
                    break;
                }
            }
        }
    }
    assert_eq!(calls, 1);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for line in ["inline-only", "before-the-call", "after-the-call"] {
        assert_eq!(text.matches(line).count(), 1, "{line} in:\n{text}");
    }
    assert!(text.contains("req-7"), "{text}");
    assert_eq!(pool.stats().inline, 1);
}
