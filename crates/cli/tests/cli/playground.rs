//! The API playground in a real browser, and the server's documents read by real checkers: the
//! real binary with `--demo`, driven by `tests/browser/playground.mjs` (playwright-core and
//! Debian's chromium) and `tests/python/check_live.py` (openapi-spec-validator, the Prometheus
//! client's text parser, schemathesis). `scripts/test.sh` installs all of them; a missing one
//! fails these tests with the command to run rather than skipping them.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::*;
use crate::on_both;

const BROWSER_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/browser/playground.mjs"
);
const PYTHON_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/python/check_live.py"
);

/// How long a checker may take (the browser run takes a few seconds; schemathesis about a minute).
const CHECK_DEADLINE: Duration = Duration::from_secs(240);

async fn demo_server(db: &TestDb) -> Proc {
    Proc::serve(
        db,
        &["--listen", "127.0.0.1:0", "--demo"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await
}

/// Runs a checker to its end; panics with its output and the server's when it fails.
async fn run_checker(program: &str, args: &[String], server: &Proc, install: &str) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHECK_DEADLINE, out)
        .await
        .unwrap_or_else(|_| panic!("`{program}` did not finish in {CHECK_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("`{program}` is required for this test; {install}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n{}",
        out.status,
        server.output()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_in_chromium() {
    let db = TestDb::new(Kind::Sqlite).await;
    let server = demo_server(&db).await;
    let shots: PathBuf = [env!("CARGO_TARGET_TMPDIR"), "playground"].iter().collect();
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let out = run_checker(
        &node,
        &[
            BROWSER_SCRIPT.to_string(),
            server.base(),
            ADMIN_PASSWORD.to_string(),
            shots.display().to_string(),
        ],
        &server,
        "run scripts/test.sh (or: apt-get install chromium nodejs npm; npm ci --prefix tests/browser)",
    )
    .await;
    assert!(out.contains("playground: OK"), "{out}");
    // The artefacts, for a human to look at.
    println!("playground screenshots in {}", shots.display());
    server.stop().await;
}

fn python() -> String {
    std::env::var("CLOUDIO_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.cache/cloudio-venv/bin/python")
    })
}

on_both!(
    openapi_metrics_and_fuzzing_by_python_checkers,
    |kind| async move {
        let db = TestDb::new(kind).await;
        let server = demo_server(&db).await;
        let out = run_checker(
            &python(),
            &[
                PYTHON_SCRIPT.to_string(),
                server.base(),
                ADMIN_PASSWORD.to_string(),
            ],
            &server,
            "run scripts/test.sh (its ensure_pytools makes the virtual environment)",
        )
        .await;
        assert!(out.contains("live checks: OK"), "{out}");
        server.stop().await;
    }
);
