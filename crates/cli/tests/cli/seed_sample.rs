//! The product documentation's own sample request (REST APIs > Authentication), run by Node
//! against the live binary as a real client would. Node is required: `scripts/test.sh` makes
//! sure it is there, and a missing `node` fails this test rather than skipping it.

use crate::helpers::*;
use crate::on_both;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli/seed_sample.mjs");

on_both!(documented_fetch_sample_works, |kind| async move {
    let db = TestDb::new(kind).await;
    let server = Proc::serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("CLOUDIO_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    )
    .await;
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let out = tokio::process::Command::new(&node)
        .arg(SCRIPT)
        .arg(server.base())
        .arg("admin")
        .arg(ADMIN_PASSWORD)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(START_DEADLINE, out)
        .await
        .expect("node finishes")
        .unwrap_or_else(|e| {
            panic!("`{node}` (Node.js 20+) is required for this test; run scripts/test.sh: {e}")
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{}\n--- node stdout ---\n{stdout}\n--- node stderr ---\n{stderr}\n{}",
        out.status,
        server.output()
    );
    assert!(stdout.contains("seed sample: OK"), "{stdout}");
    server.stop().await;
});
